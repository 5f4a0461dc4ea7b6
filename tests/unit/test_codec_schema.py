"""The hand-written codec and the JSON Schemas in schemas/ give the same verdict on any document."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import jsonschema
from hypothesis import given, settings
from hypothesis import strategies as st
from referencing import Registry, Resource

from schemas import SCHEMA_DIR, EventKind, decode_message
from tests.factories import outcome_dict, prediction_dict

_SCHEMAS = {p.name: json.loads(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.json")}
_REGISTRY = Registry().with_resources(
    (s["$id"], Resource.from_contents(s)) for s in _SCHEMAS.values()
)
VALIDATORS = {
    EventKind.PREDICTION: jsonschema.Draft202012Validator(_SCHEMAS["prediction.schema.json"], registry=_REGISTRY),
    EventKind.OUTCOME: jsonschema.Draft202012Validator(_SCHEMAS["outcome.schema.json"], registry=_REGISTRY),
}
# Later than any instant the schema's pattern admits, so the future-skew rule (which JSON
# Schema cannot express) never decides.
LATE_CLOCK = datetime(2200, 6, 1, tzinfo=UTC)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=5),
    st.sampled_from(["", "a\x00b", "x" * 201]),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)), max_leaves=6)
# values near the schema's edges: negative, above 1, empty, too long, of the wrong type
edge_values = st.one_of(
    st.floats(-2, 2), st.integers(-3, 3), st.sampled_from(["", "a", "x" * 201, "a\x00b", True, None]),
    scalars, json_values,
)
timestamps = st.one_of(
    st.sampled_from([
        "2026-03-01T12:00:00Z", "2026-03-01T12:00:00.123456+05:30", "2026-03-01 12:00:00-01:00",
        "2026-03-01T12:00:00", "1999-12-31T23:59:59Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z",
        "2026-03-01T25:00:00Z", "2026-03-01", "20260301T120000Z", "2026-03-01T12:00:00.1234567890Z",
        "2199-12-31T23:59:59+00:00", "2026-03-01t12:00:00z",
    ]),
    json_values,
)


def _mutations(kind: EventKind) -> st.SearchStrategy[dict[str, Any]]:
    base = prediction_dict() if kind is EventKind.PREDICTION else outcome_dict()
    fields = list(base) + (
        ["probabilities", "score", "routing_key", "segment", "latency_ms", "error", "unknown"]
        if kind is EventKind.PREDICTION else ["source", "unknown"]
    )
    time_field = "predicted_at" if kind is EventKind.PREDICTION else "observed_at"

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc = dict(base)
        for _ in range(draw(st.integers(0, 2))):
            key = draw(st.sampled_from(fields))
            action = draw(st.sampled_from(["drop", "set", "time", "nested"]))
            if action == "drop":
                doc.pop(key, None)
            elif action == "time":
                doc[time_field] = draw(timestamps)
            elif action == "nested" and key in ("features", "probabilities", "segment"):
                doc[key] = draw(st.dictionaries(
                    st.one_of(st.sampled_from(["", "1", "x" * 201]), st.text(max_size=4)), edge_values,
                    min_size=1, max_size=3))
            else:
                doc[key] = draw(edge_values)
        return doc

    return build()


def assert_same_verdict(kind: EventKind, doc: dict[str, Any]) -> None:
    schema_ok = VALIDATORS[kind].is_valid(doc)
    decoded = decode_message(kind, json.dumps(doc).encode(), now=LATE_CLOCK)
    reason = decoded.rejected[0].reason if decoded.rejected else ""
    if schema_ok and decoded.rejected:
        # JSON Schema's pattern cannot know that 2026-02-30 or 25:00 is no instant
        assert "is not a valid instant" in reason, reason
    else:
        assert schema_ok == (not decoded.rejected), (doc, reason)


@settings(max_examples=1500, deadline=None)
@given(doc=_mutations(EventKind.PREDICTION))
def test_prediction_codec_agrees_with_schema(doc: dict[str, Any]) -> None:
    """A prediction passes the codec exactly when it passes prediction.schema.json (calendar aside)."""
    assert_same_verdict(EventKind.PREDICTION, doc)


@settings(max_examples=800, deadline=None)
@given(doc=_mutations(EventKind.OUTCOME))
def test_outcome_codec_agrees_with_schema(doc: dict[str, Any]) -> None:
    """An outcome passes the codec exactly when it passes outcome.schema.json (calendar aside)."""
    assert_same_verdict(EventKind.OUTCOME, doc)


def test_schemas_accept_the_factory_events() -> None:
    """The reference documents are valid against the schemas, so the mutations start from valid."""
    assert VALIDATORS[EventKind.PREDICTION].is_valid(prediction_dict())
    assert VALIDATORS[EventKind.OUTCOME].is_valid(outcome_dict())
