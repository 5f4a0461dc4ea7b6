"""The schemas' validators, and one line for the first thing a JSON document gets wrong against its schema."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

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
