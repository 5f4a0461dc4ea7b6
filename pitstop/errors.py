"""Errors the operator sees, each with a message that says what to do.

    PitstopError
    ├── ConfigError      a setting is missing or malformed (names the key, the value, what was expected)
    ├── ConfigFileError  the model configuration file (pitstop.toml) is malformed (names the key too)
    ├── StackError       the local stack could not start, stop or be found
    └── PublishError     the broker did not confirm delivery of published events
"""


class PitstopError(Exception):
    """Base of every error Pitstop raises on purpose."""


class ConfigError(PitstopError):
    """A setting is missing or malformed."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"{key}={value!r}: expected {expected}")


class ConfigFileError(PitstopError):
    """The model configuration file is unreadable or malformed; the message is one line naming the key."""


class StackError(PitstopError):
    """The local stack could not start, stop or be found."""


class PublishError(PitstopError):
    """The broker did not confirm delivery of published events."""
