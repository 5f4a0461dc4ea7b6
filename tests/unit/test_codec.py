"""The codec: good events decode to dataclasses, each class of bad input is rejected with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from schemas import EventKind, Limits, OutcomeEvent, PredictionEvent, decode_message, encode_batch, encode_event
from tests.factories import NOW, outcome, outcome_dict, prediction, prediction_dict

P, OUT = EventKind.PREDICTION, EventKind.OUTCOME


def _one(kind: EventKind, doc: object, **kw: object) -> tuple[list, list]:
    value = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    decoded = decode_message(kind, value, now=NOW, **kw)  # type: ignore[arg-type]
    return decoded.events, [r.reason for r in decoded.rejected]


def test_prediction_round_trips() -> None:
    """Every field of a prediction survives encode then decode."""
    event = prediction(7, score=0.75, routing_key="user-9", error="timeout")
    decoded = decode_message(P, encode_event(event), now=NOW)
    assert decoded.rejected == []
    assert decoded.events == [event]


def test_outcome_round_trips_in_a_batch() -> None:
    """A JSON array of outcomes decodes to the same outcomes in order."""
    events = [outcome(i, label=i % 3) for i in range(5)]
    decoded = decode_message(OUT, encode_batch(events), now=NOW)
    assert decoded.events == events and decoded.rejected == []


def test_offsets_are_normalised_to_utc() -> None:
    """An instant with a +02:00 offset is stored as the same instant in UTC."""
    events, _ = _one(OUT, outcome_dict(observed_at="2026-03-02T14:00:00.5+02:00"))
    assert events[0].observed_at == datetime(2026, 3, 2, 12, 0, 0, 500000, tzinfo=UTC)
    assert events[0].observed_at.tzinfo is UTC


@pytest.mark.parametrize(
    ("kind", "value", "reason_start"),
    [
        (P, b"not json at all", "not_json"),
        (P, b"\xff\xfe{}", "not_json"),
        (P, b"", "not_json"),
        (P, b'"a string"', "schema: a prediction must be a JSON object"),
        (P, prediction_dict(features={"x": [1, 2]}), "schema: features.x must be a number"),
        (P, prediction_dict(features="age=3"), "schema: features must be an object"),
        (P, prediction_dict(schema_version=2), "schema: schema_version must be 1"),
        (P, prediction_dict(extra_field=1), "schema: prediction has unknown field(s) extra_field"),
        (P, {k: v for k, v in prediction_dict().items() if k != "model_version"}, "schema: prediction is missing"),
        (P, prediction_dict(prediction_id=""), "schema: prediction_id must be 1-200 characters"),
        (P, prediction_dict(prediction_id="a\x00b"), "schema: prediction_id contains a NUL"),
        (P, prediction_dict(prediction=None), "schema: prediction must be a number"),
        (P, prediction_dict(probabilities={"1": 1.5}), "schema: probabilities.1 must be in [0, 1]"),
        (P, prediction_dict(latency_ms=-1), "schema: latency_ms must be >= 0"),
        (P, prediction_dict(score=None), "schema: score must be omitted"),
        (P, prediction_dict(predicted_at="2026-03-01T12:00:00"), "timestamp: predicted_at"),  # naive
        (P, prediction_dict(predicted_at="1970-01-01T00:00:00Z"), "timestamp: predicted_at"),  # absurd
        (P, prediction_dict(predicted_at="2026-02-30T00:00:00Z"), "timestamp: predicted_at"),  # no such day
        (P, prediction_dict(predicted_at=1767225600), "schema: predicted_at must be an RFC 3339 string"),
        (P, prediction_dict(predicted_at="2027-01-01T00:00:00Z"), "timestamp: predicted_at 2027"),  # future
        (P, b'{"schema_version":1,"prediction_id":"p","model_name":"m","model_version":"v",'
            b'"predicted_at":"2026-03-01T12:00:00Z","features":{"x":NaN},"prediction":1}',
         "non_finite: features.x"),
        (OUT, b'{"schema_version":1,"prediction_id":"p","label":Infinity,"observed_at":"2026-03-01T12:00:00Z"}',
         "non_finite: label"),
        (OUT, outcome_dict(label=[1]), "schema: label must be a number"),
        (OUT, outcome_dict(observed_at="yesterday"), "timestamp: observed_at"),
        (OUT, b"[]", "schema: empty batch"),
        # found by the hostile-corpus test: a schema_version nested past what repr can walk
        (OUT, b'{"schema_version":' + b"[" * 1000 + b"]" * 1000 + b',"prediction_id":"p","label":1,'
              b'"observed_at":"2026-03-01T12:00:00Z"}', "schema: schema_version must be 1, got [[[[...]]]]"),
    ],
)
def test_bad_single_input_is_rejected_with_reason(kind: EventKind, value: object, reason_start: str) -> None:
    """Each class of bad input is rejected whole, with a one-line reason naming what is wrong."""
    events, reasons = _one(kind, value)
    assert events == []
    assert len(reasons) == 1
    assert reasons[0].startswith(reason_start), reasons[0]
    assert "\n" not in reasons[0]


def test_oversized_event_is_rejected() -> None:
    """A single event over max_event_bytes is rejected as too large."""
    doc = prediction_dict(features={f"f{i}": i for i in range(300)})
    _, reasons = _one(P, doc, limits=Limits(max_event_bytes=1024))
    assert reasons and reasons[0].startswith("too_large: event of")


def test_oversized_message_is_rejected_whole() -> None:
    """A message over max_message_bytes is rejected without being parsed."""
    value = encode_batch([prediction(i) for i in range(50)])
    decoded = decode_message(P, value, now=NOW, limits=Limits(max_message_bytes=1000))
    assert decoded.events == [] and decoded.rejected[0].index == -1
    assert decoded.rejected[0].reason.startswith("too_large: message")
    assert decoded.rejected[0].raw == value


def test_in_a_batch_only_bad_elements_are_rejected() -> None:
    """Bad elements of a batch are rejected one by one with their index; the good ones pass."""
    good = [prediction_dict(i) for i in range(4)]
    big = prediction_dict(9, features={f"f{i}": i for i in range(300)})
    body = (
        b"[" + orjson.dumps(good[0]) + b","
        + b'{"schema_version":1,"prediction_id":"nan","model_name":"m","model_version":"v",'
          b'"predicted_at":"2026-03-01T12:00:00Z","features":{"x":NaN},"prediction":1},'
        + orjson.dumps(good[1]) + b","
        + orjson.dumps(prediction_dict(5, predicted_at="2026-03-01T12:00:00")) + b","  # naive
        + orjson.dumps(good[2]) + b","
        + orjson.dumps(big) + b","
        + b'"just a string",'
        + orjson.dumps(good[3]) + b"]"
    )
    decoded = decode_message(P, body, now=NOW, limits=Limits(max_event_bytes=2048))
    assert [e.prediction_id for e in decoded.events] == ["p-0", "p-1", "p-2", "p-3"]
    assert [(r.index, r.reason.split(":")[0]) for r in decoded.rejected] == [
        (1, "non_finite"), (3, "timestamp"), (5, "too_large"), (6, "schema"),
    ]
    # the rejected element's bytes are kept, NaN and all
    assert b"NaN" in decoded.rejected[0].raw
    assert json.loads(decoded.rejected[1].raw)["prediction_id"] == "p-5"


def test_future_skew_is_measured_from_the_ingest_clock() -> None:
    """An instant just inside max_future_skew_s passes, just outside it is rejected."""
    limits = Limits(max_future_skew_s=60)
    inside = (NOW + timedelta(seconds=59)).isoformat()
    outside = (NOW + timedelta(seconds=61)).isoformat()
    assert _one(OUT, outcome_dict(observed_at=inside), limits=limits)[0]
    assert _one(OUT, outcome_dict(observed_at=outside), limits=limits)[1][0].startswith("timestamp")


def test_labels_keep_their_json_type() -> None:
    """Class labels may be strings, bools or numbers, and come back as given."""
    for label in ("churned", True, 0, 2.5):
        events, reasons = _one(OUT, outcome_dict(label=label))
        assert reasons == [] and events[0].label == label and type(events[0].label) is type(label)


def test_naive_datetime_cannot_be_encoded() -> None:
    """The encoder refuses a naive datetime instead of guessing its zone."""
    naive = OutcomeEvent(prediction_id="p", label=1, observed_at=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive datetime"):
        encode_event(naive)


def test_encode_batch_of_predictions_is_a_json_array() -> None:
    """A batch message is a JSON array that any JSON parser reads."""
    events = [prediction(i) for i in range(3)]
    doc = json.loads(encode_batch(events))
    assert isinstance(doc, list) and [d["prediction_id"] for d in doc] == ["p-0", "p-1", "p-2"]
    assert all(isinstance(e, PredictionEvent) for e in decode_message(P, encode_batch(events), now=NOW).events)


_HEAD = b'{"schema_version":1,"prediction_id":"p","model_name":"m","model_version":"v",' \
        b'"predicted_at":"2026-03-01T12:00:00Z","prediction":1,"features":'


@pytest.mark.parametrize(
    ("features", "reason"),
    [
        # past a double's range orjson refuses the number, and Python's json reads it as an int
        (b'{"x":1' + b"0" * 400 + b"}", "out_of_range: features.x is an integer outside the 64-bit range"),
        (b'{"x":-1' + b"0" * 400 + b"}", "out_of_range: features.x is an integer outside the 64-bit range"),
        (b'{"x":"\\ud800"}', "unicode: features.x holds a lone surrogate"),
        (b'{"\\udfff":1}', "unicode: features['\\udfff'] holds a lone surrogate"),
    ],
)
def test_values_the_store_cannot_write_are_rejected(features: bytes, reason: str) -> None:
    """Integers past 64 bits and lone surrogates, which only Python's json admits, are rejected with a reason."""
    events, reasons = _one(P, _HEAD + features + b"}")
    assert events == []
    assert reasons == [reason]


def test_integers_past_64_bits_in_a_batch_are_rejected_alone() -> None:
    """In a batch Python's json reads (a NaN in it), an integer past 64 bits rejects its element only; the
    bounds of signed and unsigned 64 bits themselves pass."""
    elements = [_HEAD + f'{{"x":{x}}}}}'.encode() for x in (2**64, 2**64 - 1, -(2**63), -(2**63) - 1)]
    value = b"[" + b",".join([b'{"x":NaN}', *elements]) + b"]"
    decoded = decode_message(P, value, now=NOW)
    assert [e.features["x"] for e in decoded.events] == [2**64 - 1, -(2**63)]
    assert [(r.index, r.reason) for r in decoded.rejected] == [
        (0, "non_finite: x is NaN or infinite"),
        (1, "out_of_range: features.x is an integer outside the 64-bit range"),
        (4, "out_of_range: features.x is an integer outside the 64-bit range"),
    ]
    assert orjson.dumps([e.features for e in decoded.events])  # what the store writes


def test_deeply_nested_batch_element_is_rejected_not_raised() -> None:
    """A batch element nested 1000 deep (orjson reads it; neither encoder writes it back) is rejected with its
    index, the good element beside it passes."""
    deep = b"[" * 1000 + b"]" * 1000
    value = b"[" + orjson.dumps(prediction_dict(1)) + b"," + deep + b"]"
    decoded = decode_message(P, value, now=NOW)
    assert [e.prediction_id for e in decoded.events] == ["p-1"]
    assert [(r.index, r.reason) for r in decoded.rejected] == [
        (1, "schema: a prediction must be a JSON object, got array")]
    assert decoded.rejected[0].raw  # something of it is kept


def test_deep_nesting_in_a_lenient_batch_is_rejected_not_raised() -> None:
    """Beside a NaN (Python's json reads the batch) a 900-deep element is rejected, not a RecursionError."""
    deep = b'{"a":' * 900 + b"1" + b"}" * 900
    value = b"[" + deep + b',{"x":NaN},' + orjson.dumps(prediction_dict(1)) + b"]"
    decoded = decode_message(P, value, now=NOW)
    assert [e.prediction_id for e in decoded.events] == ["p-1"]
    assert [r.index for r in decoded.rejected] in ([0, 1], [-1])
    assert all(r.reason for r in decoded.rejected)
