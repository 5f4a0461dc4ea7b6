"""Errors of the feedback store and the ingest.

    FeedbackError
    └── IngestStopped    the ingest was told to stop while it waited out a database outage
"""


class FeedbackError(Exception):
    """Base of the errors this package raises on purpose."""


class IngestStopped(FeedbackError):
    """The ingest gave up waiting for the database because the process is stopping.

    Nothing of the batch in hand was acked, so it is redelivered after restart.
    """
