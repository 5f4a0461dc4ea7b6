"""Pitstop's event contracts: JSON Schemas, the dataclasses that mirror them, and the codec."""

from pathlib import Path

from schemas.codec import Limits, decode_message, encode_batch, encode_event, event_to_dict
from schemas.events import (
    SCHEMA_VERSION,
    DecodedMessage,
    EventKind,
    OutcomeEvent,
    PredictionEvent,
    RejectedInput,
)

SCHEMA_DIR = Path(__file__).parent

__all__ = [
    "SCHEMA_DIR",
    "SCHEMA_VERSION",
    "DecodedMessage",
    "EventKind",
    "Limits",
    "OutcomeEvent",
    "PredictionEvent",
    "RejectedInput",
    "decode_message",
    "encode_batch",
    "encode_event",
    "event_to_dict",
]
