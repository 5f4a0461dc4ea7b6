"""Hostile input for the ingest: hypothesis strategies that build message values out of extreme numbers, deep
nesting, odd Unicode, duplicate keys and every field's wrong type, and the accounting that checks each input
ended stored or dead-lettered (never both, never neither)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from feedback.store import FeedbackStore
from tests.factories import outcome_dict, prediction_dict

#: What the first word of a dead letter's reason may be: the decoder's classes. Not ``store:`` or ``database:``,
#: the bisection's (feedback.store.ingest): that would be input the decoder let through and the store refused.
REASON_CLASSES = frozenset(
    ("not_json", "schema", "timestamp", "non_finite", "too_large", "out_of_range", "unicode"))


@dataclass(frozen=True)
class Deep:
    """An array nested ``depth`` times, written out without recursion."""

    depth: int


@dataclass(frozen=True)
class Dup:
    """A JSON object whose keys repeat (parsers keep the last)."""

    pairs: tuple[tuple[str, Any], ...]

    def effective(self) -> dict[str, Any]:
        return dict(self.pairs)


@dataclass(frozen=True)
class Junk:
    """Bytes that are not a JSON document."""

    raw: bytes


def to_json(value: Any, *, ascii_only: bool) -> bytes:
    """``value`` as JSON text: NaN and infinities as Python's json writes them, lone surrogates escaped
    (``\\ud800``) or, when not ``ascii_only``, as the invalid UTF-8 they encode to."""
    if isinstance(value, Deep):
        return b"[" * value.depth + b"]" * value.depth
    if isinstance(value, Junk):
        return value.raw
    if isinstance(value, Dup):
        pairs: Any = value.pairs
    elif isinstance(value, dict):
        pairs = value.items()
    else:
        pairs = None
    if pairs is not None:
        return b"{" + b",".join(
            to_json(str(k), ascii_only=ascii_only) + b":" + to_json(v, ascii_only=ascii_only) for k, v in pairs) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(to_json(v, ascii_only=ascii_only) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")


_ODD_CHARS = st.sampled_from(["\x00", "\u200f", "\u202e", "\u2066", "\ufeff", "\u0085", "\u2028", "\U0001f600", "é"])
hostile_text = st.text(
    st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), _ODD_CHARS), max_size=12)
_EXTREME_FLOATS = st.sampled_from([
    1e308, -1e308, 1.7976931348623157e308, 5e-324, -5e-324, 2.2250738585072014e-308, -0.0, 0.0,
    math.nan, math.inf, -math.inf])
hostile_scalar = st.one_of(
    st.integers(min_value=2**64, max_value=2**300),
    st.integers(min_value=-(2**300), max_value=-(2**63) - 1),
    st.sampled_from([2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**400]),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    _EXTREME_FLOATS,
    st.floats(),
    hostile_text,
    st.booleans(),
    st.none(),
    st.builds(Deep, st.integers(min_value=2, max_value=1100)),
)
hostile_value = st.recursive(
    hostile_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.dictionaries(hostile_text, children, max_size=3),
        st.builds(Dup, st.lists(st.tuples(st.sampled_from(["a", "a", "b"]), children), min_size=2, max_size=4)
                  .map(tuple)),
    ),
    max_leaves=6,
)

# Values the contract admits, at their extremes: the store must keep every one.
_valid_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=20)
_valid_feature = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, 5e-324, -0.0, 2**64 - 1, -(2**63)]),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30),
    st.booleans(),
    st.none(),
)


@st.composite
def good_prediction(draw: st.DrawFn, n: int, prefix: str = "") -> dict[str, Any]:
    """A prediction the contract accepts, with extreme but valid values."""
    return prediction_dict(
        n, prediction_id=f"{prefix}good-{n}-" + draw(_valid_text),
        features=draw(st.dictionaries(_valid_text, _valid_feature, max_size=5)),
        prediction=draw(st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
                                  st.booleans(), _valid_text)),
        score=draw(st.floats(allow_nan=False, allow_infinity=False)),
        latency_ms=draw(st.floats(min_value=0, allow_infinity=False)),
    )


@st.composite
def good_outcome(draw: st.DrawFn, n: int, prefix: str = "") -> dict[str, Any]:
    """An outcome the contract accepts."""
    label = draw(st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False, allow_infinity=False),
                           st.booleans(), _valid_text))
    return outcome_dict(n, prediction_id=f"{prefix}good-o-{n}-" + draw(_valid_text), label=label)


_PREDICTION_FIELDS = ("schema_version", "prediction_id", "model_name", "model_version", "predicted_at", "features",
                      "prediction", "probabilities", "score", "routing_key", "segment", "latency_ms", "error")
_OUTCOME_FIELDS = ("schema_version", "prediction_id", "label", "observed_at", "source")


@st.composite
def hostile_event(draw: st.DrawFn, n: int, kind: str, prefix: str = "") -> Any:
    """A good event with one to three fields set to hostile values (a wrong type, an extreme number, odd
    text, deep nesting), a key repeated, or the whole replaced by a hostile value."""
    doc: dict[str, Any] = (prediction_dict(n, prediction_id=f"{prefix}bad-{n}") if kind == "prediction"
                           else outcome_dict(n, prediction_id=f"{prefix}bad-o-{n}"))
    how = draw(st.sampled_from(["fields", "fields", "fields", "feature", "duplicate", "whole"]))
    if how == "whole":
        return draw(hostile_value)
    if how == "feature":
        doc["features"] = {draw(hostile_text): draw(hostile_value)}
        return doc
    fields = _PREDICTION_FIELDS if kind == "prediction" else _OUTCOME_FIELDS
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3)):
        doc[name] = draw(hostile_value)
    if how == "duplicate":
        name = draw(st.sampled_from(fields))
        return Dup((*doc.items(), (name, draw(hostile_value))))
    return doc


@dataclass
class Message:
    """One message value and the inputs it holds (one, or a batch's elements), with where it went."""

    topic_kind: str  # "prediction" or "outcome": which input topic it is sent to
    value: bytes
    batch: bool
    elements: list[tuple[Any, bool]]  # (the generated document, whether it was built good)
    partition: int = 0
    offset: int = -1


@dataclass
class Corpus:
    messages: list[Message] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [i for m in self.messages for doc, _ in m.elements if isinstance(i := event_id(doc), str)]


def event_id(doc: Any) -> Any:
    """The prediction_id a parser reads from ``doc`` (the last of repeated keys), or None."""
    if isinstance(doc, Dup):
        doc = doc.effective()
    return doc.get("prediction_id") if isinstance(doc, dict) else None


@st.composite
def corpus(draw: st.DrawFn, *, max_messages: int = 6, prefix: str = "") -> Corpus:
    """Messages for both input topics: single events, batches (JSON arrays) and junk, good and hostile mixed.
    Events are numbered, their ids start with ``prefix``: unique but for hostile ids (the accounting finds each
    input by its id, and skips a corpus where two repeat)."""
    out = Corpus()
    n = 0
    for _ in range(draw(st.integers(min_value=1, max_value=max_messages))):
        kind = draw(st.sampled_from(["prediction", "outcome"]))
        shape = draw(st.sampled_from(["single", "single", "batch", "junk"]))
        ascii_only = draw(st.booleans())
        if shape == "junk":
            raw = draw(st.sampled_from([b"", b"{", b"[", b"nul\x00", b"\xff\xfe{}", b'{"a":1}{"b":2}', b"[1,]",
                                        b'{"prediction_id":"x",}', b"\xed\xa0\x80"]))
            out.messages.append(Message(kind, raw, False, [(Junk(raw), False)]))
            continue
        elements: list[tuple[Any, bool]] = []
        for _ in range(1 if shape == "single" else draw(st.integers(min_value=1, max_value=5))):
            n += 1
            if draw(st.booleans()):
                # now and then a good event of the other kind: the wrong topic
                good_kind = kind if draw(st.integers(0, 9)) else ("outcome" if kind == "prediction" else "prediction")
                doc = draw(good_prediction(n, prefix) if good_kind == "prediction" else good_outcome(n, prefix))
                elements.append((doc, good_kind == kind))
            else:
                elements.append((draw(hostile_event(n, kind, prefix)), False))
        docs = [doc for doc, _ in elements]
        if shape == "batch":
            out.messages.append(Message(kind, to_json(docs, ascii_only=ascii_only), True, elements))
            continue
        doc = docs[0]
        # a single hostile value that is an array is a batch message of its elements
        if isinstance(doc, list):
            elements = [(e, False) for e in doc]
        elif isinstance(doc, Deep):
            elements = [(Deep(doc.depth - 1), False)] if doc.depth > 1 else []
        out.messages.append(Message(kind, to_json(doc, ascii_only=ascii_only), isinstance(doc, list | Deep), elements))
    return out


def same_json(stored: Any, sent: Any) -> bool:
    """Whether a value read back from jsonb is the one sent: numbers compare by value (jsonb writes 1e16 as the
    integer 10000000000000000, which orjson reads back as an int), the rest exactly.

    >>> same_json({"a": 57408140616673070}, {"a": 5.740814061667307e16}), same_json([True], [1])
    (True, False)
    """
    if isinstance(stored, dict) and isinstance(sent, dict):
        return stored.keys() == sent.keys() and all(same_json(stored[k], sent[k]) for k in sent)
    if isinstance(stored, list) and isinstance(sent, list):
        return len(stored) == len(sent) and all(same_json(a, b) for a, b in zip(stored, sent, strict=True))
    numbers = (int, float)
    if type(stored) in numbers and type(sent) in numbers and float in (type(stored), type(sent)):
        return float(stored) == float(sent)
    return type(stored) is type(sent) and stored == sent


def unaccounted(store: FeedbackStore, topics: dict[str, str], messages: list[Message]) -> list[str]:
    """Each input that is not exactly one of: stored (good ones with their features intact), or dead-lettered
    with a reason of a known class; and any row no input explains. Empty when all is well."""
    predictions = {r[0]: r[1] for r in store.rows("SELECT prediction_id, features FROM predictions")}
    outcomes = {r[0] for r in store.rows("SELECT prediction_id FROM outcomes")}
    letters = {(t, p, o, i): r for t, p, o, i, r in store.rows(
        "SELECT source_topic, source_partition, source_offset, element_index, reason FROM dead_letters")}
    problems: list[str] = []
    used_letters: set[tuple[str, int, int, int]] = set()
    stored = 0
    for m in messages:
        topic = topics[m.topic_kind]
        whole = (topic, m.partition, m.offset, -1)
        if whole in letters:
            used_letters.add(whole)
        for index, (doc, good) in enumerate(m.elements):
            pid = event_id(doc)
            in_store = isinstance(pid, str) and pid in (predictions if m.topic_kind == "prediction" else outcomes)
            own = (topic, m.partition, m.offset, index if m.batch else -1)
            dead = whole in letters or own in letters
            if own in letters:
                used_letters.add(own)
            where = f"{topic}[{m.partition}]@{m.offset} element {index}: {m.value[:200]!r}"
            if in_store == dead:
                problems.append(f"{'both stored and dead-lettered' if dead else 'lost'}: {where}")
            if in_store:
                stored += 1
            # a good event inside a message that is not JSON as a whole (a hostile element beside it wrote invalid
            # UTF-8, NaN or a nesting past the limit) cannot be read apart from it: it goes with the message
            unreadable = whole in letters and letters[whole].startswith("not_json")
            if good and not in_store and not unreadable:
                problems.append(f"good input not stored ({letters.get(own) or letters.get(whole)}): {where}")
            if good and in_store and m.topic_kind == "prediction" and not same_json(predictions[pid], doc["features"]):
                problems.append(f"features changed: {predictions[pid]!r} != {doc['features']!r}: {where}")
        if m.batch and not m.elements and whole not in letters:
            problems.append(f"empty batch not dead-lettered: {m.value!r}")
    for key, reason in letters.items():
        if key not in used_letters:
            problems.append(f"dead letter no input explains: {key} {reason}")
        if reason.split(":")[0] not in REASON_CLASSES:
            problems.append(f"dead letter {key} has a reason of no known class: {reason!r}")
    if len(predictions) + len(outcomes) != stored:
        problems.append(f"{len(predictions)} + {len(outcomes)} rows stored for {stored} stored inputs")
    return problems
