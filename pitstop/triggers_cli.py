"""`pitstop triggers list | reset | replay` and `pitstop retrain`: the operator's hands on retrain decisions."""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg

from feedback.config import ModelConfig
from feedback.errors import ModelConfigError
from feedback.outbox import relay
from feedback.store import connect_kwargs
from pitstop import queries
from pitstop.errors import ConfigFileError, PitstopError
from pitstop.output import Progress, json_default, reply
from pitstop.settings import Settings

if TYPE_CHECKING:
    from feedback.triggers.engine import Decision
    from feedback.triggers.replay import ReplayResult

# The engine and the replay import the monitor's statistics (scipy: about a second); they are imported where a
# command needs them, after its arguments are checked, so `list` and a refused request answer at once.

Say = Callable[[str], None]

MAX_REASON_CHARS = 500
MAX_BY_CHARS = 100
#: how long `pitstop retrain` waits for a broker to answer at all, then for it to confirm the event, before it
#: leaves the event to a worker's relay
CONNECT_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 10.0
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:[Zz]|[+-]\d{2}:\d{2})?)?")
_INSTANT_EXPECTED = ("an instant such as 2026-03-01, 2026-03-01T12:00 or 2026-03-01T12:00:00Z (UTC unless an offset "
                     "is given)")

_RESET = """
INSERT INTO trigger_resets (model_name, reset_by) VALUES (%s, coalesce(%s, current_user)) ON CONFLICT DO NOTHING
"""
_STORED = "SELECT status, recorded_at FROM retrain_decisions WHERE decision_id = %s"
_EVENT = "SELECT sent_at FROM outbox WHERE event_id = %s"


# --- pitstop triggers list --------------------------------------------------------------------------------------


def list_decisions(settings: Settings, model: str, *, limit: int, as_json: bool, say: Say) -> int:
    """Print the model's retrain decisions, newest first."""
    settings.require_model(model)
    if limit < 1:
        msg = f"--limit {limit}: expected an integer >= 1"
        raise PitstopError(msg)
    with _database(settings) as conn:
        rows = [dict(zip(queries.DECISION_KEYS, row, strict=True))
                for row in conn.execute(queries.DECISIONS, (model, limit)).fetchall()]
    if as_json:
        say(json.dumps([{**r, "event": _event_state(r)} for r in rows], default=json_default))
        return 0
    if not rows:
        say(f"{model}: no retrain decisions yet")
        return 0
    say(f"{model}: {len(rows)} retrain decision{'s' if len(rows) != 1 else ''}, newest first (event time, UTC)")
    say(f"  {'decided':<16}  {'kind':<11} {'urgency':<9} {'status':<10} {'change point':<16}  "
        f"{'labels / needed':<17} {'event':<9} outcome")
    for r in rows:
        labels = _labels(r["labels_since_change"], r["labels_needed"])
        say(f"  {_minute(r['decided_at']):<16}  {r['kind']:<11} {r['urgency']:<9} {r['status']:<10} "
            f"{_minute(r['change_point']):<16}  {labels:<17} {_event_state(r):<9} {r['outcome'] or '-'}")
        fired = f"fired {_minute(r['fired_at'])}: " if r["fired_at"] is not None else ""
        say(f"      {fired}{r['sentence']}")
        if r["suppressed_by"]:
            say(f"      held back: {r['suppressed_by']}")
        if r["outcome_sentence"]:
            say(f"      outcome {r['outcome']}: {r['outcome_sentence']}")
    return 0


def _labels(since: int | None, needed: int | None) -> str:
    """The labels column: since the change / needed; a pool look or a refit needs no count, so it shows the count.

    >>> _labels(312, 1000), _labels(250, None), _labels(None, None)
    ('312 / 1,000', '250', '')
    """
    if since is None:
        return ""
    return f"{since:,}" if needed is None else f"{since:,} / {needed:,}"


def _event_state(row: dict[str, Any]) -> str:
    """published (the broker confirmed it), queued (in the outbox, not yet published), or - (no event)."""
    if row["published_at"] is not None:
        return "published"
    return "queued" if row["in_outbox"] else "-"


# --- pitstop triggers reset -------------------------------------------------------------------------------------


def reset_breaker(settings: Settings, model: str, *, by: str | None, say: Say, as_json: bool = False) -> int:
    """Reset the model's circuit breaker (a trigger_resets row); says what its state was."""
    config = settings.require_model(model)
    if by is not None:
        by = check_by(by)
    from feedback.triggers.engine import PostgresLedger

    limit = config.triggers.circuit_breaker
    with _database(settings) as conn, conn.transaction(), conn.cursor() as cur:
        ledger = PostgresLedger(cur, max_training_s={model: config.triggers.max_training_s})
        ledger.lock(model)
        rejected = ledger.history(model, datetime.now(UTC)).rejected_in_row  # since the last reset
        cur.execute(_RESET, (model, by))
    in_row = f"{rejected} rejected candidate{'s' if rejected != 1 else ''} in a row since the last reset, limit {limit}"
    if rejected >= limit:
        sentence = f"{model}: circuit breaker was tripped ({in_row}); reset: automatic retraining resumes"
    else:
        sentence = f"{model}: circuit breaker was not tripped ({in_row}); reset recorded: automatic retraining goes on"
    reply(say, as_json, sentence, model=model, was_tripped=rejected >= limit, rejected_in_row=rejected, limit=limit,
          by=by)
    return 0


# --- pitstop retrain --------------------------------------------------------------------------------------------


def request_retrain(settings: Settings, model: str, *, reason: str, request_id: str | None, by: str | None,
                    say: Say, wait_s: float | None = None, as_json: bool = False,
                    clock: Callable[[], float] = time.monotonic) -> int:
    """Record a manual retrain request; publish its event at once when a broker is configured; with ``wait_s``,
    follow the training it starts until its outcome (a progress line on a terminal), at most ``wait_s`` seconds.

    Exit code 0 when the request fired (now or by an earlier identical request), 1 when storm control held it back;
    when waiting, 0 only when the training ended with a candidate (or a former champion, for a pool decision).
    """
    config = settings.require_model(model)
    if not config.triggers.enabled:
        msg = (f"model {model!r} has retrain triggers disabled in {settings.monitoring.path} (triggers.enabled = "
               "false); enable them to request a retrain")
        raise PitstopError(msg)
    reason = check_reason(reason)
    by = check_by(by if by is not None else _user())
    now = datetime.now(UTC)
    if request_id is None:
        request_id = default_request_id(reason, now)
    elif not _REQUEST_ID.fullmatch(request_id):
        msg = f"--id {request_id!r}: expected 1 to 100 letters, digits, '.', '_', ':' or '-'"
        raise PitstopError(msg)
    from feedback.alerts import LogAlertSink
    from feedback.triggers.engine import TriggerEngine, decision_id

    did = decision_id(model, "manual", request_id)
    engine = TriggerEngine(settings.monitoring, LogAlertSink())
    lines: list[str] = []
    out = lines.append if as_json else say
    with _database(settings) as conn:
        stored = conn.execute(_STORED, (did,)).fetchone()
        decision = engine.manual(conn, model, reason=reason, requested_by=by, request_id=request_id)
        if stored is not None:
            out(f"{model}: request {did} was already recorded at {_second(stored[1])} UTC (wall clock; the same "
                "reason within the same minute, or the same --id): one decision")
        out(_decision_line(decision))
        event = _publish(settings, conn, decision) if decision.status == "fired" else None
        if event is not None:
            out(event)
        outcome = None
        if wait_s is not None and decision.status == "fired":  # a held-back request has no training to follow
            outcome = _follow_training(conn, model, did, wait_s, clock)
            out(outcome["sentence"])
    if outcome is not None:
        code = 0 if outcome["outcome"] in ("candidate", "unchanged") else 1
    else:
        code = 0 if decision.status == "fired" else 1
    if as_json:
        say(json.dumps({**_decision_document(decision), "model": model, "requested_by": by,
                        "already_recorded_at": None if stored is None else stored[1], "event": event,
                        "training": outcome, "sentence": "; ".join(lines)}, default=json_default))
    return code


_FOLLOW = """
SELECT o.outcome, o.sentence, v.version, p.step, p.detail
FROM (SELECT %(id)s::text AS trigger_id) t
LEFT JOIN retrain_outcomes o USING (trigger_id)
LEFT JOIN model_versions v ON v.trigger_id = t.trigger_id
LEFT JOIN retrain_progress p ON p.trigger_id = t.trigger_id
"""


def _follow_training(conn: psycopg.Connection[Any], model: str, trigger_id: str, wait_s: float,
                     clock: Callable[[], float]) -> dict[str, Any]:
    """Wait for a fired trigger's outcome, the retrain worker's step shown on a terminal; the outcome, or
    ``timeout``."""
    started = clock()
    bar = Progress(f"retrain {model}")
    try:
        while True:
            outcome, sentence, version, step, detail = conn.execute(_FOLLOW, {"id": trigger_id}).fetchone()
            waited = clock() - started
            if outcome is not None:
                said = f"{model}: training {outcome}" + (f" ({version})" if version else "") + f": {sentence}"
            elif waited >= wait_s:
                where = f"still {step}: {detail}" if step else "no retrain worker has taken it"
                outcome, said = "timeout", (f"{model}: no outcome within {wait_s:g} s ({where}); the request stands: "
                                            f"follow it with `pitstop models show {model}`")
            if outcome is not None:
                return {"outcome": outcome, "version": version, "sentence": said, "waited_s": round(waited, 1)}
            bar.status(f"{step}: {detail} ({waited:.0f} s)" if step
                       else f"waiting for a retrain worker to take the request ({waited:.0f} s)")
            time.sleep(0.5)
    finally:
        bar.close()


def check_reason(reason: str, why: str = "the model needs retraining", example: str = "new plan tiers") -> str:
    """The reason of a manual request (or a person's verdict), stripped: one line, 1 to 500 characters.

    >>> check_reason("  new features in the feed ")
    'new features in the feed'
    >>> check_reason("   ")
    Traceback (most recent call last):
    ...
    pitstop.errors.PitstopError: --reason is empty: say why the model needs retraining, e.g. --reason "new plan tiers"
    """
    text = reason.strip()
    if not text:
        msg = f'--reason is empty: say why {why}, e.g. --reason "{example}"'
        raise PitstopError(msg)
    if len(text) > MAX_REASON_CHARS:
        msg = (f"--reason is {len(text)} characters long: keep it to {MAX_REASON_CHARS} (one sentence; link the "
               "details, e.g. a ticket)")
        raise PitstopError(msg)
    if _CONTROL.search(text):
        msg = "--reason holds a line break or control character: give one line"
        raise PitstopError(msg)
    return text


def default_request_id(reason: str, at: datetime) -> str:
    """The request id when none is given: the UTC minute and a short hash of the reason, so the same request
    repeated by mistake within a minute is the same decision.

    >>> t = datetime(2026, 3, 1, 12, 0, 41, tzinfo=UTC)
    >>> default_request_id("new features", t)
    '20260301T1200Z-5ca19a5a'
    >>> default_request_id("new features", t.replace(second=2)) == default_request_id("new features", t)
    True
    """
    digest = hashlib.sha256(reason.encode()).hexdigest()[:8]
    return f"{at.astimezone(UTC):%Y%m%dT%H%MZ}-{digest}"


def check_by(by: str) -> str:
    text = by.strip()
    if not text or len(text) > MAX_BY_CHARS or _CONTROL.search(text):
        msg = f"--by {by!r}: expected a name of 1 to {MAX_BY_CHARS} characters on one line"
        raise PitstopError(msg)
    return text


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in a bare container
        return "operator"


def _decision_line(d: Decision) -> str:
    if d.status == "suppressed":
        return f"{d.model_name}: suppressed {d.decision_id}: {d.suppressed_by}; request: {d.sentence}"
    return f"{d.model_name}: {d.status} {d.decision_id}: {d.sentence}"


def _publish(settings: Settings, conn: psycopg.Connection[Any], decision: Decision) -> str:
    """Publish the outbox now (the event's broker confirmation included); say where the event is."""
    topic = settings.topics.retrain_triggers
    sent_at = _sent_at(conn, decision)
    if sent_at is not None:
        return f"event already published to {topic} at {_second(sent_at)} UTC"
    if settings.kafka_bootstrap is None:
        return (f"event is in the outbox; a worker's relay publishes it to {topic} (no broker configured: "
                "set PITSTOP_KAFKA_BOOTSTRAP or run `pitstop up`)")
    from kafka import KafkaProducer

    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)  # its connection errors would bury the one line below
    producer = None
    try:
        timeout_ms = int(PUBLISH_TIMEOUT_S * 1000)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", client_id="pitstop-retrain",
                                 bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000), max_block_ms=timeout_ms,
                                 request_timeout_ms=timeout_ms)
        futures: list[Any] = []

        def send(topic_name: str, key: bytes | None, value: bytes) -> None:
            futures.append(producer.send(topic_name, key=key, value=value))

        def flush() -> None:
            producer.flush(timeout=PUBLISH_TIMEOUT_S)
            for future in futures:
                future.get(timeout=PUBLISH_TIMEOUT_S)  # raises what the broker refused

        n = relay(conn, send, flush, topic_prefix=settings.topics.prefix)
    except Exception as exc:  # any failure leaves the event where it is safe: in the outbox
        why = " ".join(str(exc).split()) or type(exc).__name__
        return (f"event stays in the outbox (broker {settings.kafka_bootstrap}: {why}); a worker's relay "
                f"publishes it to {topic}")
    finally:
        if producer is not None:
            producer.close(timeout=PUBLISH_TIMEOUT_S)
        kafka_log.setLevel(level)
    if _sent_at(conn, decision) is None:  # another relay held the outbox: it publishes in order
        return f"event is in the outbox; the relay running now publishes it to {topic}"
    others = f" (and {n - 1} earlier event{'s' if n != 2 else ''} of the outbox)" if n > 1 else ""
    return f"event published to {topic}{others}"


def _sent_at(conn: psycopg.Connection[Any], decision: Decision) -> datetime | None:
    row = conn.execute(_EVENT, (decision.decision_id,)).fetchone()
    return None if row is None else row[0]


# --- pitstop triggers replay ------------------------------------------------------------------------------------


def replay_triggers(settings: Settings, model: str, *, start: str, end: str, version: str | None,
                    overrides: Sequence[str], as_json: bool, say: Say, progress_to: TextIO | None = None) -> int:
    """Re-run the decision rules over the stored windows within [start, end], each looked at at its end; print
    what would have fired.

    Writes nothing. A progress line is rewritten on ``progress_to`` (default stderr) only when it is a terminal,
    at most about 50 times.
    """
    config = settings.require_model(model)
    t1, t2 = parse_instant(start, "--from"), parse_instant(end, "--to")
    if t1 > t2:
        msg = f"--from {_minute(t1)} is after --to {_minute(t2)} (UTC): give the earlier instant first"
        raise PitstopError(msg)
    if overrides:
        config = _overridden(settings, model, overrides)
    if not config.triggers.enabled:
        msg = (f"model {model!r} has retrain triggers disabled; add --set triggers.enabled=true to replay them "
               "anyway")
        raise PitstopError(msg)
    from feedback.triggers.replay import (
        live_version,
        load_profile,
        profiled_versions,
        read_only,
        replay,
        version_windows,
        window_ends,
    )

    ends = window_ends(t1, t2, config.window_s)
    if not ends:
        msg = (f"no whole {_duration(config.window_s)} window lies between {_minute(t1)} and {_minute(t2)} UTC: "
               "widen the range")
        raise PitstopError(msg)
    with _database(settings) as conn, read_only(conn) as cur:
        chosen = version or live_version(cur, config, ends)
        profile = load_profile(cur, model, chosen) if chosen is not None else None
        if chosen is not None and profile is None:
            have = ", ".join(profiled_versions(cur, model)) or "none"
            msg = (f"{model} {chosen}: no reference profile, so its windows cannot be judged (versions with one: "
                   f"{have}); import one with `pitstop reference import`")
            raise PitstopError(msg)
        n, first, last = version_windows(cur, config, chosen, ends)
        if profile is None or n == 0:
            whose = f"{model} {chosen}" if chosen else model
            step = timedelta(seconds=config.window_s)
            where = (f"its windows with rows lie between {_minute(first)} and {_minute(last + step)} UTC"
                     if first is not None and last is not None
                     else f"it has no {_duration(config.window_s)} windows with rows at all")
            msg = f"{whose}: no windows with rows between {_minute(t1)} and {_minute(t2)} UTC; {where}"
            raise PitstopError(msg)
        bar = Progress(f"replay {model} {chosen}", progress_to)
        try:
            result = replay(cur, config, profile, ends, progress=lambda done, total: bar.update(done, total, "windows"))
        finally:
            bar.close()
    if as_json:
        say(json.dumps(_replay_document(result, overrides), default=json_default))
        return 0
    with_overrides = f"; --set {', '.join(overrides)}" if overrides else ""
    say(f"replay {model} {chosen}: {len(ends)} windows ending {_minute(ends[0])} to {_minute(ends[-1])} UTC "
        f"({_duration(config.window_s)}, {n} with rows{with_overrides}); in memory, nothing written")
    for d in result.transitions:
        say(_transition_line(d))
    say(_summary(result))
    return 0


def parse_instant(text: str, option: str) -> datetime:
    """An instant from the command line: RFC 3339, or YYYY-MM-DD[THH:MM[:SS]] read as UTC; always aware UTC.

    >>> parse_instant("2026-03-01", "--from")
    datetime.datetime(2026, 3, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> parse_instant("2026-03-01T14:30+02:00", "--to")
    datetime.datetime(2026, 3, 1, 12, 30, tzinfo=datetime.timezone.utc)
    >>> parse_instant("2026-3-1", "--from")
    Traceback (most recent call last):
    ...
    pitstop.errors.PitstopError: --from '2026-3-1': expected an instant such as 2026-03-01, 2026-03-01T12:00 or \
2026-03-01T12:00:00Z (UTC unless an offset is given)
    """
    value = text.strip()
    try:
        if not _INSTANT.fullmatch(value):
            raise ValueError(value)
        at = datetime.fromisoformat(value.upper())
    except ValueError:
        msg = f"{option} {text!r}: expected {_INSTANT_EXPECTED}"
        raise PitstopError(msg) from None
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at).astimezone(UTC)


def _overridden(settings: Settings, model: str, overrides: Sequence[str]) -> ModelConfig:
    from feedback.triggers.replay import override_config

    path = settings.monitoring.path
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        msg = f"{path}: cannot read it again for --set ({exc.strerror})"
        raise PitstopError(msg) from None
    try:
        return override_config(text, model, overrides, path=f"{path} with --set")
    except ModelConfigError as exc:
        raise ConfigFileError(str(exc)) from None


def _transition_line(d: Decision) -> str:
    change = f"change {_minute(d.change_point)}" if d.change_point else ""
    held = f" [held back: {d.suppressed_by}]" if d.suppressed_by else ""
    return f"{_minute(d.decided_at)}  {d.kind:<11} {d.urgency:<9} {d.status:<10}  {change:<23}  {d.sentence}{held}"


def _summary(result: ReplayResult) -> str:
    fired = result.fired
    statuses = Counter(d.status for d in result.transitions if d.status != "fired")
    others = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
    others = f"; also {others}" if others else ""
    looks = f"over {len(result.window_ends)} windows of {result.model_name} {result.model_version}"
    if not fired:
        return f"would have fired no retrain {looks}{others}"
    first = fired[0]
    change = f", change point {_minute(first.change_point)} UTC" if first.change_point else ""
    return (f"would have fired {len(fired)} retrain{'s' if len(fired) != 1 else ''} {looks}: first at "
            f"{_minute(first.fired_at or first.decided_at)} UTC ({first.kind}, {first.urgency}{change}){others}")


def _replay_document(result: ReplayResult, overrides: Sequence[str]) -> dict[str, Any]:
    fired = result.fired
    return {
        "model_name": result.model_name,
        "model_version": result.model_version,
        "first_window_end": result.window_ends[0],
        "last_window_end": result.window_ends[-1],
        "windows": len(result.window_ends),
        "overrides": list(overrides),
        "transitions": [_decision_document(d) for d in result.transitions],
        "fired": len(fired),
        "first_fired_at": (fired[0].fired_at or fired[0].decided_at) if fired else None,
        "events": list(result.events),
    }


def _decision_document(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id, "model_version": d.model_version, "kind": d.kind, "urgency": d.urgency,
        "status": d.status, "decided_at": d.decided_at, "fired_at": d.fired_at, "change_point": d.change_point,
        "labels_since_change": d.labels_since_change, "labels_needed": d.labels_needed, "sentence": d.sentence,
        "suppressed_by": d.suppressed_by,
    }


# --- shared -----------------------------------------------------------------------------------------------------


@contextmanager
def _database(settings: Settings) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the feedback store; an unreachable or unmigrated one is one line."""
    database_url = settings.require_database()
    try:
        conn = psycopg.connect(database_url, connect_timeout=10, **connect_kwargs(settings.db_schema))
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"cannot reach the database: {first}; is it running (`pitstop status`)?"
        raise PitstopError(msg) from None
    try:
        with conn:
            yield conn
    except psycopg.errors.UndefinedTable as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        msg = f"schema {settings.db_schema}: {first}; apply the migrations with `pitstop migrate`"
        raise PitstopError(msg) from None


def _minute(at: datetime | None) -> str:
    return "" if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M}"


def _second(at: datetime | None) -> str:
    return "" if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}"


def _duration(seconds: int) -> str:
    """'1h', '30m', '1d', '45s'.

    >>> _duration(3600), _duration(1800), _duration(86400), _duration(45)
    ('1h', '30m', '1d', '45s')
    """
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
