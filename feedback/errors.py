"""Errors of the feedback store and the ingest.

    FeedbackError
    ├── IngestStopped      the ingest was told to stop while it waited out a database outage
    └── ModelConfigError   pitstop.toml is unreadable or invalid (names the file, key, value, what was expected)
"""


class FeedbackError(Exception):
    """Base of the errors this package raises on purpose."""


class IngestStopped(FeedbackError):
    """The ingest gave up waiting for the database because the process is stopping.

    Nothing of the batch in hand was acked, so it is redelivered after restart.
    """


class ModelConfigError(FeedbackError):
    """The monitoring configuration file is unreadable or invalid.

    ``str()`` is one line naming the file, the dotted key, the value and what was expected.
    ``key`` is empty when the file as a whole is at fault; ``value`` is None when the key is
    missing or there is no single value to show (TOML has no null, so None is never a value).
    ``problem`` says what is wrong when "expected ..." alone would not ("missing", "unknown key").

    >>> str(ModelConfigError("pitstop.toml", "models.churn.span", 0, "an integer between 1 and 10000"))
    'pitstop.toml: models.churn.span = 0: expected an integer between 1 and 10000'
    """

    def __init__(self, path: str, key: str, value: object, expected: str, *, problem: str = "") -> None:
        self.path, self.key, self.value, self.expected, self.problem = path, key, value, expected, problem
        head = f"{path}: {key}" if key else path
        if value is not None:
            shown = repr(value)
            # repr keeps a value on one line; a whole table pasted into the message would not be read
            head += f" = {shown if len(shown) <= 80 else shown[:77] + '...'}"
        reasons = [problem] if problem else []
        if expected:
            reasons.append(f"expected {expected}")
        super().__init__(f"{head}: {'; '.join(reasons)}")
