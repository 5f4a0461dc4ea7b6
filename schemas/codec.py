"""Encode events to message values and decode message values into checked events.

The checks here are the JSON Schemas in this folder, written out by hand because they sit on
the hot ingest path (a generic validator costs more than the rest of the ingest together);
``tests/unit/test_codec_schema.py`` holds the two to the same verdicts. Beyond the schemas the
codec rejects what JSON Schema cannot say: NaN and infinities (Python's json accepts ``NaN``;
the contract does not), and instants further ahead of the ingest clock than ``max_future_skew_s``.

A message orjson refuses is read again by Python's json, which also admits what the store cannot
write: integers outside 64 bits (orjson writes none; a bare one orjson reads itself becomes the
nearest float, as in most JSON parsers) and lone surrogates (``"\\ud800"``, no UTF-8 text); those
are rejected with ``out_of_range:`` and ``unicode:``. Nesting of any depth is walked without
recursion.
"""

from __future__ import annotations

import functools
import json
import math
import re
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas.events import (
    SCHEMA_VERSION,
    DecodedMessage,
    EventKind,
    OutcomeEvent,
    PredictionEvent,
    RejectedInput,
)

_TIMESTAMP = re.compile(
    r"2[01][0-9]{2}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_MAX_ID = 200
_MAX_TEXT = 10_000
_MAX_FEATURES = 1000
_MAX_SEGMENTS = 50
#: the integers orjson writes, hence the store: signed and unsigned 64 bits
_MIN_INT, _MAX_INT = -(2**63), 2**64 - 1

_PREDICTION_REQUIRED = (
    "schema_version", "prediction_id", "model_name", "model_version",
    "predicted_at", "features", "prediction",
)
_PREDICTION_FIELDS = frozenset(
    (*_PREDICTION_REQUIRED, "probabilities", "score", "routing_key", "segment", "latency_ms", "error")
)
_OUTCOME_REQUIRED = ("schema_version", "prediction_id", "label", "observed_at")
_OUTCOME_FIELDS = frozenset((*_OUTCOME_REQUIRED, "source"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one input may be.

    >>> Limits().max_event_bytes
    65536
    """

    max_event_bytes: int = 64 * 1024
    max_message_bytes: int = 8 * 1024 * 1024
    max_future_skew_s: float = 86_400.0


class _Invalid(Exception):  # noqa: N818 - internal signal, never escapes this module
    """One element broke the contract; ``args[0]`` is the one-line reason."""


# ---------------------------------------------------------------------------------------------
# decoding


def decode_message(
    kind: EventKind, value: bytes | None, *, now: datetime, limits: Limits = Limits()
) -> DecodedMessage:
    """Decode one message value (an event or a JSON array of events) into checked events.

    Never raises for bad input: what fails the contract comes back in ``rejected`` with its
    reason, and in a batch only the bad elements are rejected.

    >>> now = datetime(2026, 1, 2, tzinfo=UTC)
    >>> good = b'{"schema_version":1,"prediction_id":"p","label":1,"observed_at":"2026-01-01T00:00:00Z"}'
    >>> decoded = decode_message(EventKind.OUTCOME, b"[" + good + b',{"label":NaN}]', now=now)
    >>> [e.prediction_id for e in decoded.events], [r.reason for r in decoded.rejected]
    (['p'], ['non_finite: label is NaN or infinite'])
    """
    if value is None:
        return DecodedMessage([], [RejectedInput(index=-1, raw=b"", reason="not_json: empty message value")])
    size = len(value)
    if size > limits.max_message_bytes:
        reason = f"too_large: message of {size} bytes exceeds max_message_bytes={limits.max_message_bytes}"
        return DecodedMessage([], [RejectedInput(index=-1, raw=value, reason=reason)])
    try:
        doc = orjson.loads(value)
        finite_checked = True  # orjson refuses NaN and Infinity
    except orjson.JSONDecodeError as exc:
        doc, finite_checked = _loads_lenient(value)
        if doc is _NOT_JSON:
            return DecodedMessage([], [RejectedInput(index=-1, raw=value, reason=f"not_json: {exc}")])
    check = _check_prediction if kind is EventKind.PREDICTION else _check_outcome
    horizon = now + timedelta(seconds=limits.max_future_skew_s)
    if isinstance(doc, list):
        return _decode_batch(doc, check, horizon, finite_checked, size, limits)
    if size > limits.max_event_bytes:
        reason = f"too_large: event of {size} bytes exceeds max_event_bytes={limits.max_event_bytes}"
        return DecodedMessage([], [RejectedInput(index=-1, raw=value, reason=reason)])
    try:
        if not finite_checked:
            _check_lenient(doc)
        return DecodedMessage([check(doc, horizon)], [])
    except _Invalid as exc:
        return DecodedMessage([], [RejectedInput(index=-1, raw=value, reason=exc.args[0])])


def _decode_batch(
    doc: list[Any], check: Any, horizon: datetime, finite_checked: bool, size: int, limits: Limits
) -> DecodedMessage:
    events: list[Any] = []
    rejected: list[RejectedInput] = []
    measure = size > limits.max_event_bytes  # otherwise no element can be over the limit
    for index, element in enumerate(doc):
        try:
            if not finite_checked:
                _check_lenient(element)
            if measure and (n := len(_dumps(element))) > limits.max_event_bytes:
                msg = f"too_large: event of {n} bytes exceeds max_event_bytes={limits.max_event_bytes}"
                raise _Invalid(msg)
            events.append(check(element, horizon))
        except _Invalid as exc:
            rejected.append(RejectedInput(index=index, raw=_dumps(element, finite_checked), reason=exc.args[0]))
    if not doc:
        rejected.append(RejectedInput(index=-1, raw=b"[]", reason="schema: empty batch"))
    return DecodedMessage(events, rejected)


_NOT_JSON = object()


def _loads_lenient(value: bytes) -> tuple[Any, bool]:
    """Parse what orjson refused but Python's json takes (NaN, Infinity, huge integers).

    Non-finite constants come back as floats, so the finiteness check can name them.
    """
    try:
        return json.loads(value), False
    except (ValueError, RecursionError):
        return _NOT_JSON, False


def _check_lenient(doc: Any) -> None:
    """What Python's json admits and the contract or the store does not: NaN and infinities, integers
    outside 64 bits, lone surrogates in a string or a key. Walked with a stack, so no depth raises."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, path = stack.pop()
        kind = type(node)
        if kind is float:
            if not math.isfinite(node):
                msg = f"non_finite: {path or 'value'} is NaN or infinite"
                raise _Invalid(msg)
        elif kind is int:
            if not _MIN_INT <= node <= _MAX_INT:
                msg = f"out_of_range: {path or 'value'} is an integer outside the 64-bit range"
                raise _Invalid(msg)
        elif kind is str:
            if not _utf8(node):
                msg = f"unicode: {path or 'value'} holds a lone surrogate"
                raise _Invalid(msg)
        elif kind is dict:
            for key, child in reversed(node.items()):
                child_path = _child_path(path, key)
                if not _utf8(key):
                    msg = f"unicode: {child_path} holds a lone surrogate"
                    raise _Invalid(msg)
                stack.append((child, child_path))
        elif kind is list:
            stack.extend((node[i], f"{path}[{i}]") for i in reversed(range(len(node))))


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _child_path(path: str, key: str) -> str:
    """``features.age``; a key that would not read as one (a dot, a control character, a lone surrogate) as
    ``features['a.b']``, escaped."""
    if key.isprintable() and key and "." not in key and "[" not in key:
        return f"{path}.{key}" if path else key
    return f"{path}[{ascii(key)}]"


def _dumps(node: Any, finite_checked: bool = True) -> bytes:
    # orjson writes NaN as null: a document that may hold NaN is re-serialised by json, which
    # keeps it, so the dead letter shows what was sent. Neither writes nesting past a few hundred
    # levels (orjson's limit, Python's recursion): then a writer with its own stack does.
    if finite_checked:
        try:
            return orjson.dumps(node)
        except (TypeError, orjson.JSONEncodeError):
            pass
    try:
        return json.dumps(node, allow_nan=True, separators=(",", ":")).encode()
    except RecursionError:
        return _dumps_deep(node)


def _dumps_deep(node: Any) -> bytes:
    """JSON text of ``node`` however deep, written with a stack instead of recursion.

    >>> _dumps_deep([{"a": [1, 2.5, None]}, [], {}, "\\ud800"])
    b'[{"a":[1,2.5,null]},[],{},"\\\\ud800"]'
    """
    out: list[bytes] = []
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if type(item) is bytes:
            out.append(item)
        elif type(item) is list:
            stack.append(b"]")
            for i in reversed(range(len(item))):
                stack.append(item[i])
                if i:
                    stack.append(b",")
            stack.append(b"[")
        elif type(item) is dict:
            stack.append(b"}")
            pairs = list(item.items())
            for i in reversed(range(len(pairs))):
                key, child = pairs[i]
                stack.append(child)
                stack.append(json.dumps(str(key)).encode() + b":")
                if i:
                    stack.append(b",")
            stack.append(b"{")
        else:
            out.append(json.dumps(item, allow_nan=True).encode())
    return b"".join(out)


def _check_prediction(doc: Any, horizon: datetime) -> PredictionEvent:
    if type(doc) is not dict:
        msg = f"schema: a prediction must be a JSON object, got {_type_name(doc)}"
        raise _Invalid(msg)
    _check_fields(doc, _PREDICTION_REQUIRED, _PREDICTION_FIELDS, "prediction")
    features = doc["features"]
    if type(features) is not dict:
        msg = f"schema: features must be an object, got {_type_name(features)}"
        raise _Invalid(msg)
    if len(features) > _MAX_FEATURES:
        msg = f"schema: features has {len(features)} entries, more than {_MAX_FEATURES}"
        raise _Invalid(msg)
    for name, value in features.items():  # the hottest loop of the ingest: the checks inline, a reason made on failure
        kind = type(value)
        if kind is str:
            if len(value) > _MAX_TEXT or "\x00" in value:
                _check_text(value, f"features.{name}", 0, _MAX_TEXT)
        elif kind not in _FEATURE_TYPES and value is not None:
            msg = f"schema: features.{name} must be a number, string, bool or null, got {_type_name(value)}"
            raise _Invalid(msg)
        if not 1 <= len(name) <= _MAX_ID or "\x00" in name:  # a JSON object's keys are strings
            _check_text(name, "a feature name", 1, _MAX_ID)
    get = doc.get
    probabilities = get("probabilities")
    if probabilities is not None:
        _check_probabilities(probabilities)
    segment = get("segment")
    if segment is not None:
        _check_segment(segment)
    score = get("score")
    if score is not None:
        _check_number(score, "score")
    latency_ms = get("latency_ms")
    if latency_ms is not None:
        _check_number(latency_ms, "latency_ms")
        if latency_ms < 0:
            msg = f"schema: latency_ms must be >= 0, got {latency_ms}"
            raise _Invalid(msg)
    routing_key = get("routing_key")
    if routing_key is not None:
        _check_text(routing_key, "routing_key", 1, _MAX_ID)
    error = get("error")
    if error is not None:
        _check_text(error, "error", 0, _MAX_TEXT)
    return PredictionEvent(
        prediction_id=_check_text(doc["prediction_id"], "prediction_id", 1, _MAX_ID),
        model_name=_check_text(doc["model_name"], "model_name", 1, _MAX_ID),
        model_version=_check_text(doc["model_version"], "model_version", 1, _MAX_ID),
        predicted_at=_check_timestamp(doc["predicted_at"], "predicted_at", horizon),
        features=features,
        prediction=_check_value(doc["prediction"], "prediction"),
        probabilities=probabilities,
        score=score,
        routing_key=routing_key,
        segment=segment,
        latency_ms=latency_ms,
        error=error,
    )


def _check_outcome(doc: Any, horizon: datetime) -> OutcomeEvent:
    if type(doc) is not dict:
        msg = f"schema: an outcome must be a JSON object, got {_type_name(doc)}"
        raise _Invalid(msg)
    _check_fields(doc, _OUTCOME_REQUIRED, _OUTCOME_FIELDS, "outcome")
    source = doc.get("source")
    if source is not None:
        _check_text(source, "source", 1, _MAX_ID)
    return OutcomeEvent(
        prediction_id=_check_text(doc["prediction_id"], "prediction_id", 1, _MAX_ID),
        label=_check_value(doc["label"], "label"),
        observed_at=_check_timestamp(doc["observed_at"], "observed_at", horizon),
        source=source,
    )


_FEATURE_TYPES = frozenset((int, float, str, bool))


#: a value shown in a reason: a few levels and characters of it, whatever it holds (a hostile document nests a
#: thousand levels deep, past what repr can walk)
_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict = 3, 40, 40, 4, 4

def _check_fields(doc: dict[str, Any], required: Sequence[str], allowed: frozenset[str], what: str) -> None:
    if len(doc) < len(required) or not doc.keys() >= _as_set(required):
        missing = ", ".join(k for k in required if k not in doc)
        msg = f"schema: {what} is missing {missing}"
        raise _Invalid(msg)
    if not doc.keys() <= allowed:
        extra = ", ".join(sorted(k for k in doc if k not in allowed))
        msg = f"schema: {what} has unknown field(s) {extra}"
        raise _Invalid(msg)
    version = doc["schema_version"]
    if version != SCHEMA_VERSION or type(version) is bool:
        msg = f"schema: schema_version must be {SCHEMA_VERSION}, got {_SHOWN.repr(version)}"
        raise _Invalid(msg)
    for key in _optional(allowed, required):
        if doc.get(key, _ABSENT) is None:
            msg = f"schema: {key} must be omitted rather than null"
            raise _Invalid(msg)


_ABSENT = object()


@functools.cache
def _as_set(fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(fields)


@functools.cache
def _optional(allowed: frozenset[str], required: tuple[str, ...]) -> tuple[str, ...]:
    """The optional fields that must be omitted rather than null (``error`` may be null)."""
    return tuple(sorted(allowed.difference(required, ("error",))))


def _check_text(value: Any, what: str, min_len: int, max_len: int) -> str:
    if type(value) is not str:
        msg = f"schema: {what} must be a string, got {_type_name(value)}"
        raise _Invalid(msg)
    if not min_len <= len(value) <= max_len:
        msg = f"schema: {what} must be {min_len}-{max_len} characters, got {len(value)}"
        raise _Invalid(msg)
    if "\x00" in value:
        msg = f"schema: {what} contains a NUL character"
        raise _Invalid(msg)
    return value


def _check_number(value: Any, what: str) -> None:
    if type(value) not in (int, float):
        msg = f"schema: {what} must be a number, got {_type_name(value)}"
        raise _Invalid(msg)


def _check_value(value: Any, what: str) -> Any:
    kind = type(value)
    if kind is str:
        return _check_text(value, what, 1, _MAX_ID)
    if kind in (int, float, bool):
        return value
    msg = f"schema: {what} must be a number, bool or class label string, got {_type_name(value)}"
    raise _Invalid(msg)


def _check_probabilities(value: Any) -> None:
    if type(value) is not dict or not value:
        msg = "schema: probabilities must be a non-empty object of class label -> probability"
        raise _Invalid(msg)
    if len(value) > _MAX_FEATURES:
        msg = f"schema: probabilities has {len(value)} entries, more than {_MAX_FEATURES}"
        raise _Invalid(msg)
    for label, p in value.items():
        _check_text(label, "a probabilities class label", 1, _MAX_ID)
        _check_number(p, f"probabilities.{label}")
        if not 0 <= p <= 1:
            msg = f"schema: probabilities.{label} must be in [0, 1], got {p}"
            raise _Invalid(msg)


def _check_segment(value: Any) -> None:
    if type(value) is not dict:
        msg = f"schema: segment must be an object of name -> string, got {_type_name(value)}"
        raise _Invalid(msg)
    if len(value) > _MAX_SEGMENTS:
        msg = f"schema: segment has {len(value)} entries, more than {_MAX_SEGMENTS}"
        raise _Invalid(msg)
    for name, v in value.items():
        _check_text(name, "a segment name", 1, _MAX_ID)
        _check_text(v, f"segment.{name}", 0, _MAX_TEXT)


def _check_timestamp(value: Any, what: str, horizon: datetime) -> datetime:
    if type(value) is not str:
        msg = f"schema: {what} must be an RFC 3339 string, got {_type_name(value)}"
        raise _Invalid(msg)
    if _TIMESTAMP.fullmatch(value) is None:
        msg = f"timestamp: {what} {value[:40]!r} is not RFC 3339 with an offset between years 2000 and 2199"
        raise _Invalid(
            msg
        )
    try:
        instant = datetime.fromisoformat(value).astimezone(UTC)
    except ValueError as exc:
        msg = f"timestamp: {what} {value!r} is not a valid instant ({exc})"
        raise _Invalid(msg) from None
    if instant > horizon:
        msg = f"timestamp: {what} {value} is later than the ingest clock allows ({horizon.isoformat()})"
        raise _Invalid(msg)
    return instant


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "bool", int: "number", float: "number"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------------------------------------
# encoding


def event_to_dict(event: PredictionEvent | OutcomeEvent) -> dict[str, Any]:
    """The JSON object of one event, without the optional fields it does not set.

    >>> from datetime import UTC, datetime
    >>> event_to_dict(OutcomeEvent(prediction_id="p", label=1, observed_at=datetime(2026, 1, 1, tzinfo=UTC)))
    {'schema_version': 1, 'prediction_id': 'p', 'label': 1, 'observed_at': '2026-01-01T00:00:00+00:00'}
    """
    if isinstance(event, PredictionEvent):
        doc: dict[str, Any] = {
            "schema_version": event.schema_version,
            "prediction_id": event.prediction_id,
            "model_name": event.model_name,
            "model_version": event.model_version,
            "predicted_at": _format_instant(event.predicted_at),
            "features": event.features,
            "prediction": event.prediction,
        }
        for key in ("probabilities", "score", "routing_key", "segment", "latency_ms", "error"):
            value = getattr(event, key)
            if value is not None:
                doc[key] = value
        return doc
    doc = {
        "schema_version": event.schema_version,
        "prediction_id": event.prediction_id,
        "label": event.label,
        "observed_at": _format_instant(event.observed_at),
    }
    if event.source is not None:
        doc["source"] = event.source
    return doc


def encode_event(event: PredictionEvent | OutcomeEvent) -> bytes:
    """One event as a message value."""
    return _dumps(event_to_dict(event))


def encode_batch(events: Iterable[PredictionEvent | OutcomeEvent]) -> bytes:
    """Events of one kind as a single message value (a JSON array)."""
    return _dumps([event_to_dict(e) for e in events])


def _format_instant(instant: datetime) -> str:
    if instant.tzinfo is None:
        msg = f"naive datetime {instant.isoformat()} in an event: events carry timezone-aware UTC instants"
        raise ValueError(msg)
    return instant.astimezone(UTC).isoformat()
