"""The schemas' validators, and one line for the first thing a JSON document gets wrong against its schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson

_SCHEMA_DIR = Path(__file__).parent


@cache
def schema_validator(filename: str) -> jsonschema.Draft202012Validator:
    """The validator of ``schemas/<filename>`` (built once per process).

    >>> schema_validator("deployment.schema.json").is_valid({"schema_version": 1})
    False
    """
    schema = json.loads((_SCHEMA_DIR / filename).read_text())
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def first_error(validator: jsonschema.protocols.Validator, doc: Any, *, limit: int = 200) -> str | None:
    """``"<message> (at <path>)"`` for the schema error with the smallest path, or None when ``doc`` is valid.

    >>> v = jsonschema.Draft202012Validator({"type": "object", "required": ["a"],
    ...                                      "properties": {"b": {"type": "integer"}}})
    >>> first_error(v, {"a": 1, "b": "x"})
    "'x' is not of type 'integer' (at b)"
    >>> first_error(v, {}), first_error(v, {"a": 1})
    ("'a' is a required property (at the top level)", None)
    """
    error = next(iter(sorted(validator.iter_errors(doc), key=lambda e: list(e.path))), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.path) or "the top level"
    message = error.message if len(error.message) <= limit else error.message[:limit - 3] + "..."
    return f"{message} (at {where})"


class InvalidDocument(ValueError):
    """A message that is not its schema's document; ``str()`` is one line starting with what kind of fault:
    ``not_json:``, ``schema:`` or ``timestamp:``."""


def load_document(value: bytes | None, schema_file: str) -> dict[str, Any]:
    """The JSON document in a message value, valid against ``schemas/<schema_file>``, or :class:`InvalidDocument`.

    >>> load_document(b'{"schema_version": 1}', "deployment.schema.json")
    Traceback (most recent call last):
    ...
    schemas.validation.InvalidDocument: schema: 'model_name' is a required property (at the top level)
    >>> load_document(None, "deployment.schema.json")
    Traceback (most recent call last):
    ...
    schemas.validation.InvalidDocument: not_json: the message has no value
    """
    if value is None:
        msg = "not_json: the message has no value"
        raise InvalidDocument(msg)
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"not_json: {exc}"
        raise InvalidDocument(msg) from None
    error = first_error(schema_validator(schema_file), doc)
    if error is not None:
        msg = f"schema: {error}"
        raise InvalidDocument(msg)
    return doc


def utc_time(doc: dict[str, Any], key: str) -> datetime | None:
    """``doc[key]`` (RFC 3339 with an offset, or null) as an aware UTC datetime, or :class:`InvalidDocument`.

    >>> utc_time({"at": "2026-03-01T12:00:00+02:00"}, "at")
    datetime.datetime(2026, 3, 1, 10, 0, tzinfo=datetime.timezone.utc)
    >>> utc_time({"at": "2026-03-01T12:00:00"}, "at")
    Traceback (most recent call last):
    ...
    schemas.validation.InvalidDocument: timestamp: at '2026-03-01T12:00:00' has no offset
    """
    text = doc[key]
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        msg = f"timestamp: {key} {text!r} is not RFC 3339"
        raise InvalidDocument(msg) from None
    if at.tzinfo is None:
        msg = f"timestamp: {key} {text!r} has no offset"
        raise InvalidDocument(msg)
    return at.astimezone(UTC)
