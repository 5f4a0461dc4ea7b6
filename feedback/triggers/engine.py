"""The trigger engine: monitoring results, the calendar, label volume and manual requests -> retrain decisions.

A round looks at each model with triggers: the rules' verdict on its live version's windows (the version with
the newest traffic), the calendar in event time, and the labels gathered since the last training. Every
verdict worth a record becomes a :class:`Decision` with a deterministic id; storm control may hold a retrain
back (recorded as ``suppressed``, with the reason). A fired decision's event is written to the outbox in the
same transaction as the decision (feedback/outbox.py publishes it after commit), so an event exists
if and only if its decision was committed, and a replayed or repeated input never makes a second event for
an id: a fired decision is final.

The engine reads and writes through a :class:`Ledger`: the database for the live engine, memory for
`pitstop triggers replay`, which re-runs the rules over stored windows and writes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from feedback import topics
from feedback.alerts import Alert, AlertSink
from feedback.config import ModelConfig, MonitoringConfig
from feedback.monitoring.evaluate import Evaluation
from feedback.outbox import enqueue
from feedback.registry.versions import Registry
from feedback.store.database import lock_key
from feedback.triggers.calendar import EventClock, Schedule, parse_schedule
from feedback.triggers.rules import (
    CHANGE_KINDS,
    Detection,
    History,
    Kind,
    Status,
    Urgency,
    Verdict,
    decide,
    decide_detectors,
    relative_drop,
    suppression,
    wait_for_labels,
)
from feedback.triggers.signals import window_signals

log = logging.getLogger(__name__)

TRIGGER_LOCK_CLASS = 0x5452  # advisory lock class of "a model's retrain decisions"
SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A retrain decision as stored in ``retrain_decisions`` and, once fired, published as a trigger event."""

    decision_id: str
    model_name: str
    model_version: str | None
    kind: Kind
    urgency: Urgency
    status: Status
    sentence: str
    decided_at: datetime
    first_decided_at: datetime | None = None
    fired_at: datetime | None = None
    suppressed_by: str | None = None
    change_point: datetime | None = None
    labels_since_change: int | None = None
    labels_needed: int | None = None
    requested_by: str | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def same_as(self, other: Decision) -> bool:
        """The same verdict, whatever time it was looked at."""
        keys = ("status", "urgency", "sentence", "suppressed_by", "change_point", "labels_since_change")
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass(frozen=True, slots=True)
class Look:
    """One look at a model (:meth:`Decider.look`): the decisions that are new or changed, the clock's reading, whether
    a verdict stands (a decision the look settled, changed or not: its ``decided_at`` follows the clock, and
    storm control's clocks may free it) and when the scheduled refresh falls due."""

    changed: list[Decision]
    now: datetime | None = None
    standing: bool = False
    refresh_due: datetime | None = None


def decision_id(model: str, kind: str, *parts: str | datetime | None) -> str:
    """A readable, deterministic id: the same decision in a replay or a redelivery gets the same one.

    >>> decision_id("churn", "drift", "v1", datetime(2026, 3, 2, 13, tzinfo=UTC))
    'churn/drift/v1/2026-03-02T13:00:00Z'
    """
    shown = [p.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(p, datetime) else (p or "-")
             for p in parts]
    return "/".join([model, kind, *shown])


def trigger_event(d: Decision) -> dict[str, Any]:
    """The event on `pitstop.retrain-triggers` (schemas/retrain_trigger.schema.json)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "trigger_id": d.decision_id,
        "model_name": d.model_name,
        "model_version": d.model_version,
        "kind": d.kind,
        "urgency": d.urgency,
        "decided_at": _iso(d.decided_at),
        "change_point": _iso(d.change_point) if d.change_point else None,
        "labels_since_change": d.labels_since_change,
        "reason": d.sentence,
        "requested_by": d.requested_by,
        "evidence": dict(d.evidence),
    }


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Ledger(Protocol):
    """Where decisions are read and written: the database, or memory for a replay."""

    def history(self, model: str, at: datetime) -> History: ...

    def decision(self, decision_id: str) -> Decision | None: ...

    def latest(self, model: str, version: str | None, kind: str) -> Decision | None: ...

    def save(self, decision: Decision) -> None: ...

    def publish(self, decision: Decision) -> None: ...

    def calendar_slot(self, model: str) -> datetime | None: ...

    def set_calendar_slot(self, model: str, slot: datetime) -> None: ...

    def labels_since(self, model: ModelConfig, version: str | None, since: datetime | None, until: datetime) -> int:
        """Labelled predictions of ``version`` (every version when None) made in [since, until)."""
        ...

    def detections(self, model: str, version: str) -> list[Detection]:
        """The version's recorded detector events, in label order."""
        ...

    def episode(self, model: str) -> Decision | None:
        """The model's latest fired drift, performance or detector decision: the episode of change it is in."""
        ...

    def refits(self, model: str, change_point: datetime) -> list[Decision]:
        """The refit decisions (any status) of the episode that began at ``change_point``."""
        ...

    def latest_change(self, model: str) -> datetime | None:
        """The latest change point of the model's drift, performance or detector decisions, fired or pending."""
        ...

    def has_former_champion(self, model: str) -> bool:
        """Whether the model pool holds a former champion to score (a loadable version in stage ``previous``)."""
        ...

    def first_seen(self, model: ModelConfig) -> datetime | None:
        """The start of the model's first window with labels: the refresh's clock before any training."""
        ...


class Decider:
    """Turns a model's evaluation and clocks into decisions, through a ledger. Keeps the calendar's clocks."""

    def __init__(self, config: MonitoringConfig, *, idle_after: timedelta = timedelta(hours=1)) -> None:
        self.config = config
        self.schedules: dict[str, Schedule] = {
            name: parse_schedule(m.triggers.calendar) for name, m in config.models.items() if m.triggers.calendar
        }
        self.clocks: dict[str, EventClock] = {name: EventClock(idle_after) for name in config.models}

    def decide(self, ledger: Ledger, model: ModelConfig, evaluation: Evaluation | None, *,
               wall_now: datetime) -> list[Decision]:
        """Every decision of this look at ``model`` that is new or changed (fired, pending, suppressed, ...)."""
        return self.look(ledger, model, evaluation, wall_now=wall_now).changed

    def look(self, ledger: Ledger, model: ModelConfig, evaluation: Evaluation | None, *, wall_now: datetime) -> Look:
        """One look at ``model``: its decisions that are new or changed, and what the next look depends on."""
        if not model.triggers.enabled:
            return Look([])
        watermark = evaluation.evaluated_at if evaluation is not None else None
        now = self.clocks[model.name].now(watermark, wall_now)
        if now is None:
            return Look([])  # no event yet: nothing to decide on, not even the calendar
        out: list[Decision] = []
        standing = False

        def settle(candidate: Decision) -> None:
            nonlocal standing
            standing = True
            out.extend(self._settle(ledger, model, candidate))

        if evaluation is not None:
            found = self._windows(ledger, model, evaluation, now)
            if found is not None:
                settle(found)
                pool = _pool_look(model, found, now)
                # the trigger topic is a contract other teams' retrain jobs consume: a look with nothing to
                # score publishes nothing (asked each round until the retrain fires; a champion may retire)
                if pool is not None and ledger.has_former_champion(model.name):
                    settle(pool)
        calendar = self._calendar(ledger, model, now)
        if calendar is not None:
            settle(calendar)
        volume = self._volume(ledger, model, now)
        if volume is not None:
            settle(volume)
        refresh, refresh_due = self._refresh(ledger, model, now)
        if refresh is not None:
            settle(refresh)
        follow_up = self._follow_up(ledger, model, evaluation, now)
        if follow_up is not None:
            settle(follow_up)
        return Look(out, now=now, standing=standing, refresh_due=refresh_due)

    def manual(self, ledger: Ledger, model: ModelConfig, *, reason: str, requested_by: str, request_id: str,
               at: datetime) -> Decision:
        """A person's retrain request: it passes cooldown, cap and breaker, but not a running training (held back)."""
        candidate = Decision(
            decision_id=decision_id(model.name, "manual", request_id), model_name=model.name, model_version=None,
            kind="manual", urgency="routine", status="fired", sentence=f"manual request by {requested_by}: {reason}",
            decided_at=at, requested_by=requested_by, evidence={"reason": reason},
        )
        settled = self._settle(ledger, model, candidate)
        return settled[0] if settled else (ledger.decision(candidate.decision_id) or candidate)

    # --- the three automatic sources ------------------------------------------------------------------

    def _windows(self, ledger: Ledger, model: ModelConfig, evaluation: Evaluation, now: datetime) -> Decision | None:
        signals = window_signals(evaluation, model)
        verdict = decide(signals, evaluation.baseline, model, wait=False)
        if (verdict is None or not verdict.wants_retrain) and model.triggers.detectors.enabled:
            # the early warning: the error stream has changed before the windows' CIs can say so
            early = decide_detectors(signals, evaluation.baseline, model,
                                     ledger.detections(model.name, evaluation.model_version), wait=False)
            verdict = early or verdict
        if verdict is None or verdict.change_point is None:
            return None
        step = timedelta(seconds=model.window_s)
        version = evaluation.model_version
        change_point = verdict.change_point
        prior = ledger.latest(model.name, version, verdict.kind)
        if (prior is not None and prior.change_point is not None
                and prior.change_point <= change_point <= prior.decided_at + step):
            change_point = prior.change_point  # the same episode, seen from a span that has moved on
        labels = ledger.labels_since(model, version, change_point, evaluation.evaluated_at)
        verdict = wait_for_labels(replace(verdict, change_point=change_point), labels, model.triggers)
        if evaluation.observed is not None:  # the level before the change: what a retrain must recover
            verdict = replace(verdict, evidence={**verdict.evidence, "baseline": evaluation.observed})
        return _from_verdict(model, version, verdict, now)

    def _follow_up(self, ledger: Ledger, model: ModelConfig, evaluation: Evaluation | None, now: datetime
                   ) -> Decision | None:
        """After a drift or performance retrain: the refit ladder's next rung, or a refit (then an alert) while
        the version trained since the change stays worse than the level before it.

        The first training of an episode learns the new concept from ``min_labels_since_change`` labels; as
        labels accumulate, a refit at each rung of ``refit_ladder`` (multiples of that minimum) learns it from
        more (bench/loop_quality.py measures what that buys). A new version starts its own baseline, so a
        model that never recovered would look normal to its own windows: its baseline is compared with the
        level before the change, within reach of the ladder (twice its last rung of labels).
        """
        t = model.triggers
        episode = ledger.episode(model.name)
        if episode is None or episode.change_point is None:
            return None
        change = episode.change_point
        newer = ledger.latest_change(model.name)
        if newer is not None and newer > change:
            return None  # a newer change is seen (pending): this episode is over, its ladder with it
        refits = ledger.refits(model.name, change)
        fired = [d for d in refits if d.status == "fired"]
        labels = ledger.labels_since(model, None, change, now)
        minimum = max(t.min_labels_since_change, 1)
        trained_on = max([episode.labels_since_change or 0] + [d.labels_since_change or 0 for d in fired])
        due = [m for m in t.refit_ladder if trained_on < m * minimum <= labels]
        since = f"since the change ({change:%Y-%m-%d %H:%M} UTC)"
        if due:
            rung = due[-1]
            return Decision(
                decision_id=decision_id(model.name, "refit", change, f"x{rung}"), model_name=model.name,
                model_version=evaluation.model_version if evaluation is not None else None, kind="refit",
                urgency="routine", status="fired", decided_at=now, change_point=change, labels_since_change=labels,
                sentence=(f"refit ladder: {labels:,} labels {since} >= {rung} x {minimum:,}; the last training "
                          f"of this episode had {trained_on:,}"),
                evidence={"episode": episode.decision_id, "rung": rung, "trained_on": trained_on},
            )
        level = episode.evidence.get("baseline")
        reach = 2 * minimum * (t.refit_ladder[-1] if t.refit_ladder else 1)
        # the new version's level as its own windows show it (its tested level would answer before any window)
        if (evaluation is None or evaluation.observed is None or level is None or labels > reach
                or evaluation.model_version == episode.model_version):
            return None
        drop = relative_drop(evaluation.observed, float(level), higher_is_better=model.higher_is_better)
        if drop is None or drop <= t.performance.elevated:
            return None
        tries = sum(1 for d in fired if d.evidence.get("unrecovered"))
        sentence = (f"not recovered: {evaluation.model_version}'s {model.metric} baseline {evaluation.observed:.4g} "
                    f"is {drop:.1%} worse than {float(level):.4g} before the change ({change:%Y-%m-%d %H:%M} UTC)")
        decision = Decision(
            decision_id=_unrecovered_id(model.name, change, evaluation.model_version), model_name=model.name,
            model_version=evaluation.model_version, kind="refit", urgency="elevated", status="fired",
            decided_at=now, change_point=change, labels_since_change=labels, sentence=sentence,
            evidence={"episode": episode.decision_id, "unrecovered": evaluation.model_version, "level": level,
                      "baseline": evaluation.observed, "tries": tries},
        )
        if tries >= t.recovery_tries:
            return replace(decision, status="suppressed", suppressed_by=(
                f"not recovered after {tries} refit(s) (recovery_tries {t.recovery_tries}): a person should look "
                "at the model and its data"))
        return decision

    def _calendar(self, ledger: Ledger, model: ModelConfig, now: datetime) -> Decision | None:
        schedule = self.schedules.get(model.name)
        if schedule is None:
            return None
        slot = schedule.latest_slot(now)
        if slot is None:
            return None
        last = ledger.calendar_slot(model.name)
        if last is not None and slot <= last:
            return None
        ledger.set_calendar_slot(model.name, slot)
        if last is None:
            return None  # first sight of this schedule: the slot before it is not ours to fire
        return Decision(
            decision_id=decision_id(model.name, "calendar", slot), model_name=model.name, model_version=None,
            kind="calendar", urgency="routine", status="fired", decided_at=now,
            sentence=f"calendar: slot {slot:%Y-%m-%d %H:%M} UTC of '{schedule.expression}' (event time)",
            evidence={"slot": _iso(slot), "expression": schedule.expression},
        )

    def _volume(self, ledger: Ledger, model: ModelConfig, now: datetime) -> Decision | None:
        k = model.triggers.volume
        if k is None:
            return None
        since = ledger.history(model.name, now).last_fired_at
        labels = ledger.labels_since(model, None, since, now)
        if labels < k:
            return None
        where = f"since the last training ({since:%Y-%m-%d %H:%M} UTC)" if since else "since the first prediction"
        return Decision(
            decision_id=decision_id(model.name, "volume", since), model_name=model.name, model_version=None,
            kind="volume", urgency="routine", status="fired", decided_at=now,
            sentence=f"volume: {labels:,} new labelled predictions {where} >= {k:,}",
            evidence={"labels": labels, "volume": k, "since": _iso(since) if since else None},
        )

    def _refresh(self, ledger: Ledger, model: ModelConfig, now: datetime
                 ) -> tuple[Decision | None, datetime | None]:
        """The scheduled refresh: ``refresh`` after the last training (any kind), a candidate of the current
        concept that replaces the champion only when significantly better on the newest labels. It yields to a
        change still waiting for its labels (the episode's own retrain is coming) and trains on the episode's
        rows (from its change point) when one has fired. Also returns when it falls due (None: no clock yet)."""
        t = model.triggers
        if t.refresh_s is None:
            return None, None
        since = ledger.history(model.name, now).last_trained_at or ledger.first_seen(model)
        if since is None:
            return None, None
        due = since + timedelta(seconds=t.refresh_s)
        if now < due:
            return None, due
        episode = ledger.episode(model.name)
        change = episode.change_point if episode is not None else None
        newer = ledger.latest_change(model.name)
        if newer is not None and (change is None or newer > change):
            return None, due  # a change is pending: its retrain, not a refresh, learns what comes after it
        labels = ledger.labels_since(model, None, since, now)
        if labels == 0:
            return None, due
        age_h = (now - since).total_seconds() / 3600
        rows = f"the rows since the change ({change:%Y-%m-%d %H:%M} UTC)" if change is not None else "recent rows"
        return Decision(
            decision_id=decision_id(model.name, "refresh", since), model_name=model.name, model_version=None,
            kind="refresh", urgency="routine", status="fired", decided_at=now, change_point=change,
            sentence=(f"refresh: {age_h:.1f} h since the last training ({since:%Y-%m-%d %H:%M} UTC) >= "
                      f"{t.refresh_s / 3600:.1f} h, {labels:,} new labels: a candidate on {rows} replaces the "
                      "champion only if significantly better on the newest labels"),
            evidence={"since": _iso(since), "labels": labels, "refresh_s": t.refresh_s,
                      "episode": episode.decision_id if episode is not None else None},
        ), due

    # --- storm control and the record -----------------------------------------------------------------

    def _settle(self, ledger: Ledger, model: ModelConfig, candidate: Decision) -> list[Decision]:
        """Record ``candidate`` (a fired one through storm control); returns it when something changed."""
        stored = ledger.decision(candidate.decision_id)
        if stored is not None and stored.status == "fired":
            if stored.decided_at < candidate.decided_at:
                ledger.save(replace(stored, decided_at=candidate.decided_at))  # still going: seen now
            return []  # a fired decision is final: no second event for an id
        first = stored.first_decided_at if stored is not None else candidate.decided_at
        decision = replace(candidate, first_decided_at=first,
                           suppressed_by=candidate.suppressed_by if candidate.status == "suppressed" else None)
        if decision.status == "fired":
            reason = suppression(decision.kind, decision.decided_at, ledger.history(model.name, decision.decided_at),
                                 model.triggers, decision.change_point, decision.model_version)
            if reason is not None:
                decision = replace(decision, status="suppressed", suppressed_by=reason)
            else:
                decision = replace(decision, fired_at=decision.decided_at)
        if stored is None or not _same_record(stored, decision):
            ledger.save(decision)  # a look that changes nothing writes nothing (TriggerEngine skips on that)
        if decision.status == "fired":
            ledger.publish(decision)
        if stored is not None and stored.same_as(decision):
            return []
        return [decision]


def _same_record(stored: Decision, new: Decision) -> bool:
    """Whether saving ``new`` over ``stored`` would leave the row as it is (the evidence as JSON stores it)."""
    return (replace(stored, evidence={}) == replace(new, evidence={})
            and json.loads(json.dumps(dict(stored.evidence))) == json.loads(json.dumps(dict(new.evidence))))


def _pool_look(model: ModelConfig, d: Decision, now: datetime) -> Decision | None:
    """For a change still waiting for its labels: one early look at the model pool (no training: a former
    champion scored on the rows since the change), once ``pool_labels`` labels since the change exist. Its
    urgency is routine: the pending decision has already raised whatever alert its urgency calls for."""
    k = model.triggers.pool_labels
    if (k <= 0 or d.status != "pending" or d.change_point is None or d.labels_since_change is None
            or d.labels_since_change < k or d.kind not in ("drift", "performance", "detector")):
        return None
    change = d.change_point
    return Decision(
        decision_id=decision_id(model.name, "pool", d.model_version, change), model_name=model.name,
        model_version=d.model_version, kind="pool", urgency="routine", status="fired", decided_at=now,
        change_point=change, labels_since_change=d.labels_since_change,
        sentence=(f"model pool: {d.labels_since_change:,} labels since the change ({change:%Y-%m-%d %H:%M} UTC), "
                  f"before the retrain's {model.triggers.min_labels_since_change:,}: a former champion that beats "
                  "the champion on them is proposed now"),
        evidence={"decision": d.decision_id},
    )


def _unrecovered_id(model: str, change: datetime, version: str) -> str:
    return decision_id(model, "refit", change, f"unrecovered-{version}")


def _from_verdict(model: ModelConfig, version: str, verdict: Verdict, now: datetime) -> Decision:
    return Decision(
        decision_id=decision_id(model.name, verdict.kind, version, verdict.change_point), model_name=model.name,
        model_version=version, kind=verdict.kind, urgency=verdict.urgency, status=verdict.status,
        sentence=verdict.sentence, decided_at=now, change_point=verdict.change_point,
        labels_since_change=verdict.labels_since_change, labels_needed=verdict.labels_needed,
        evidence=verdict.evidence,
    )


def alerts_for(decision: Decision) -> list[Alert]:
    """The alerts a changed decision raises: a critical retrain, unjudged drift, a suppression by the breaker."""
    out = []
    if decision.urgency == "critical" and decision.status in ("fired", "pending"):
        out.append(("critical", decision.sentence))
    if decision.status == "unjudged":
        out.append(("unjudged_drift", decision.sentence))
    if decision.status == "suppressed" and (decision.suppressed_by or "").startswith("circuit breaker"):
        out.append(("circuit_breaker", f"{decision.suppressed_by}; held back: {decision.sentence}"))
    if decision.status == "suppressed" and (decision.suppressed_by or "").startswith("not recovered"):
        out.append(("not_recovered", f"{decision.sentence}; {decision.suppressed_by}"))
    return [
        Alert(alert_id=f"{decision.decision_id}/{kind}/{decision.status}", model_name=decision.model_name, kind=kind,
              sentence=sentence, at=decision.decided_at,
              details={"decision_id": decision.decision_id, "status": decision.status, "urgency": decision.urgency})
        for kind, sentence in out
    ]


# --- the database ledger -------------------------------------------------------------------------------

_COLUMNS = (
    "decision_id, model_name, model_version, kind, urgency, status, sentence, suppressed_by, change_point, "
    "labels_since_change, labels_needed, first_decided_at, decided_at, fired_at, requested_by, evidence"
)
_SELECT = f"SELECT {_COLUMNS} FROM retrain_decisions"
_UPSERT = f"""
INSERT INTO retrain_decisions ({_COLUMNS}) VALUES ({", ".join(["%s"] * 16)})
ON CONFLICT (decision_id) DO UPDATE SET
    urgency = excluded.urgency, status = excluded.status, sentence = excluded.sentence,
    suppressed_by = excluded.suppressed_by, change_point = excluded.change_point,
    labels_since_change = excluded.labels_since_change, labels_needed = excluded.labels_needed,
    decided_at = excluded.decided_at, fired_at = excluded.fired_at, evidence = excluded.evidence, updated_at = now()
WHERE retrain_decisions.status <> 'fired' OR excluded.status = 'fired'
"""
# a pool look trains nothing: it starts no cooldown, counts toward no cap and is no running training; a refresh
# trains, but on its own schedule: it starts no cooldown and counts toward no cap either
_HISTORY = """
SELECT max(fired_at) FILTER (WHERE fired_at <= %(at)s AND kind <> 'refresh'),
       count(*) FILTER (WHERE fired_at > %(at)s - interval '1 day' AND fired_at <= %(at)s AND kind <> 'refresh'),
       max(fired_at) FILTER (WHERE fired_at <= %(at)s),
       (SELECT d.decision_id FROM retrain_decisions d
        WHERE d.model_name = %(m)s AND d.status = 'fired' AND d.fired_at > %(at)s - %(running)s * interval '1 second'
          AND d.kind <> 'pool'
          AND NOT EXISTS (SELECT 1 FROM retrain_outcomes o WHERE o.trigger_id = d.decision_id)
        ORDER BY d.fired_at DESC LIMIT 1)
FROM retrain_decisions WHERE model_name = %(m)s AND status = 'fired' AND kind <> 'pool'
"""
# a ramp under way (feedback/rollout/controller.py): a retrain waits for it
_ROLLOUT = """
SELECT r.challenger || ' at ' || round((100 * r.share)::numeric, 1) || '%%' || CASE WHEN r.state = 'ramping' THEN ''
       ELSE ', ' || r.state END,
       v.lineage ->> 'change_point', r.challenger, r.state = 'holding'
FROM rollouts r LEFT JOIN model_versions v ON v.model_name = r.model_name AND v.version = r.challenger
WHERE r.model_name = %s AND r.state IN ('ramping', 'paused', 'holding')
"""
# during a ramp: the change point each version was trained to answer (rules.new_episode keeps those trained for the
# ramp's episode or a later one)
_ANSWERED = """
SELECT version, (lineage ->> 'change_point')::timestamptz FROM model_versions
WHERE model_name = %s AND lineage ->> 'change_point' IS NOT NULL
"""
# the outcomes since the last reset of the breaker, newest first (a reset starts the count again)
_OUTCOMES = """
SELECT outcome FROM retrain_outcomes
WHERE model_name = %(m)s
  AND recorded_at > coalesce((SELECT max(reset_at) FROM trigger_resets WHERE model_name = %(m)s), '-infinity')
ORDER BY recorded_at DESC LIMIT %(limit)s
"""
_LABELS = """
SELECT coalesce(sum((stats->>'n')::bigint), 0) FROM window_performance
WHERE model_name = %s AND (%s::text IS NULL OR model_version = %s) AND window_s = %s AND segment = '*'
  AND window_start >= coalesce(%s, '-infinity'::timestamptz) AND window_start < %s
"""


class PostgresLedger:
    """The ledger of the live engine: retrain_decisions, retrain_outcomes, trigger_state and the outbox, read and
    written through one cursor inside the caller's transaction (which holds the model's lock)."""

    def __init__(self, cur: psycopg.Cursor[Any], *, max_training_s: Mapping[str, int]) -> None:
        self.cur = cur
        self.max_training_s = max_training_s
        self.wrote = False  # whether anything was saved, published or set through this ledger

    def lock(self, model: str) -> None:
        """Serialise this model's decisions (monitor rounds, manual requests) until the transaction ends."""
        self.cur.execute(f"SELECT pg_advisory_xact_lock(%s, {lock_key()})", (TRIGGER_LOCK_CLASS, model))

    def history(self, model: str, at: datetime) -> History:
        last, day, trained, running = self.cur.execute(
            _HISTORY, {"m": model, "at": at, "running": self.max_training_s.get(model, 86_400)}).fetchone()
        outcomes = self.cur.execute(_OUTCOMES, {"m": model, "limit": 1000}).fetchall()
        rejected = 0
        for (outcome,) in outcomes:
            if outcome == "unchanged":
                continue  # a pool look that proposed nothing: neither a rejection nor a success
            if outcome != "rejected":
                break
            rejected += 1
        rollout = self.cur.execute(_ROLLOUT, (model,)).fetchone()
        answered = {} if rollout is None else dict(self.cur.execute(_ANSWERED, (model,)).fetchall())
        return History(last_fired_at=last, fired_last_day=int(day), last_trained_at=trained, running=running,
                       rejected_in_row=rejected, rollout=None if rollout is None else rollout[0],
                       rollout_challenger=None if rollout is None else rollout[2],
                       rollout_holding=rollout is not None and bool(rollout[3]),
                       rollout_change=None if rollout is None or rollout[1] is None
                       else datetime.fromisoformat(rollout[1]),
                       answered=answered)

    def decision(self, decision_id: str) -> Decision | None:
        row = self.cur.execute(f"{_SELECT} WHERE decision_id = %s", (decision_id,)).fetchone()
        return None if row is None else _decision(row)

    def latest(self, model: str, version: str | None, kind: str) -> Decision | None:
        row = self.cur.execute(
            f"{_SELECT} WHERE model_name = %s AND model_version IS NOT DISTINCT FROM %s AND kind = %s "
            "ORDER BY decided_at DESC LIMIT 1", (model, version, kind)).fetchone()
        return None if row is None else _decision(row)

    def save(self, d: Decision) -> None:
        self.wrote = True
        self.cur.execute(_UPSERT, (
            d.decision_id, d.model_name, d.model_version, d.kind, d.urgency, d.status, d.sentence, d.suppressed_by,
            d.change_point, d.labels_since_change, d.labels_needed, d.first_decided_at or d.decided_at, d.decided_at,
            d.fired_at, d.requested_by, Jsonb(dict(d.evidence)),
        ))

    def publish(self, d: Decision) -> None:
        self.wrote = True
        enqueue(self.cur, d.decision_id, topics.RETRAIN_TRIGGERS, d.model_name, trigger_event(d))

    def calendar_slot(self, model: str) -> datetime | None:
        row = self.cur.execute("SELECT calendar_slot FROM trigger_state WHERE model_name = %s", (model,)).fetchone()
        return None if row is None else row[0]

    def set_calendar_slot(self, model: str, slot: datetime) -> None:
        self.wrote = True
        self.cur.execute(
            "INSERT INTO trigger_state (model_name, calendar_slot) VALUES (%s, %s) ON CONFLICT (model_name) "
            "DO UPDATE SET calendar_slot = excluded.calendar_slot, updated_at = now()", (model, slot))

    def detections(self, model: str, version: str) -> list[Detection]:
        return detections_of(self.cur, model, version)

    def episode(self, model: str) -> Decision | None:
        row = self.cur.execute(f"{_SELECT} WHERE model_name = %s AND status = 'fired' AND kind = ANY(%s) "
                               "ORDER BY fired_at DESC, decision_id DESC LIMIT 1",
                               (model, sorted(CHANGE_KINDS - {"refit"}))).fetchone()
        return None if row is None else _decision(row)

    def latest_change(self, model: str) -> datetime | None:
        return self.cur.execute("SELECT max(change_point) FROM retrain_decisions WHERE model_name = %s "
                                "AND kind = ANY(%s) AND status IN ('fired', 'pending')",
                                (model, sorted(CHANGE_KINDS - {"refit"}))).fetchone()[0]

    def has_former_champion(self, model: str) -> bool:
        return has_former_champion(self.cur, model)

    def first_seen(self, model: ModelConfig) -> datetime | None:
        return first_seen(self.cur, model)

    def refits(self, model: str, change_point: datetime) -> list[Decision]:
        rows = self.cur.execute(f"{_SELECT} WHERE model_name = %s AND kind = 'refit' AND change_point = %s "
                                "ORDER BY first_decided_at", (model, change_point)).fetchall()
        return [_decision(r) for r in rows]

    def labels_since(self, model: ModelConfig, version: str | None, since: datetime | None, until: datetime) -> int:
        return labels_since(self.cur, model, version, since, until)


_DETECTIONS = """
SELECT detector, label_index, predicted_at, error_mean_before, error_mean_after FROM detector_events
WHERE model_name = %s AND model_version = %s ORDER BY label_index
"""


def first_seen(cur: psycopg.Cursor[Any], model: ModelConfig) -> datetime | None:
    """The start of the model's first window with labels (read-only: the replay uses it too)."""
    return cur.execute("SELECT min(window_start) FROM window_performance WHERE model_name = %s AND window_s = %s "
                       "AND segment = '*'", (model.name, model.window_s)).fetchone()[0]


def has_former_champion(cur: psycopg.Cursor[Any], model: str) -> bool:
    """Whether the registry holds a former champion of ``model`` that the pool would score (read-only: the
    replay uses it too)."""
    return bool(Registry().past_champions(cur, model, limit=1))


def labels_since(cur: psycopg.Cursor[Any], model: ModelConfig, version: str | None, since: datetime | None,
                 until: datetime) -> int:
    """Labelled predictions of ``version`` (every version when None) made in windows starting in [since, until),
    from the window aggregates (read-only: the replay uses it too)."""
    found = cur.execute(_LABELS, (model.name, version, version, model.window_s, since, until)).fetchone()
    return int(found[0]) if found else 0


def detections_of(cur: psycopg.Cursor[Any], model: str, version: str) -> list[Detection]:
    """The version's detector events (read-only: the replay uses it too)."""
    return [Detection(detector=d, label_index=int(i), predicted_at=at, mean_before=b, mean_after=a)
            for d, i, at, b, a in cur.execute(_DETECTIONS, (model, version)).fetchall()]


def _decision(row: Sequence[Any]) -> Decision:
    (did, model, version, kind, urgency, status, sentence, suppressed_by, change_point, labels_since, labels_needed,
     first, decided, fired, requested_by, evidence) = row
    return Decision(decision_id=did, model_name=model, model_version=version, kind=kind, urgency=urgency,
                    status=status, sentence=sentence, suppressed_by=suppressed_by, change_point=change_point,
                    labels_since_change=labels_since, labels_needed=labels_needed, first_decided_at=first,
                    decided_at=decided, fired_at=fired, requested_by=requested_by, evidence=evidence or {})


class TriggerEngine:
    """The live engine: one look at every model with triggers after each monitor round, in one transaction per
    model; alerts go out after commit.

    A look costs a dozen statements, so a model is looked at only when something its look reads may have
    changed (:class:`_Seen`): its evaluations, its rows in the ledger's tables (:func:`ledger_marks`), or its
    clock (when a verdict stands, a calendar slot or the refresh falls due, or a training fired ahead of the
    clock comes within it). A round where nothing changed reads one statement for all models.
    """

    def __init__(self, config: MonitoringConfig, alerts: AlertSink, *, skip_unchanged: bool = True) -> None:
        self.config = config
        self.decider = Decider(config)
        self.alerts = alerts
        self.max_training_s = {n: m.triggers.max_training_s for n, m in config.models.items()}
        #: False: look at every model every round (the reference the skipping is tested against)
        self.skip_unchanged = skip_unchanged
        self._seen: dict[str, _Seen] = {}
        #: models looked at and skipped by the last :meth:`run`
        self.looked: list[str] = []
        self.skipped: list[str] = []

    def _ledger(self, cur: psycopg.Cursor[Any]) -> PostgresLedger:
        return PostgresLedger(cur, max_training_s=self.max_training_s)

    def run(self, conn: psycopg.Connection[Any], evaluations: Iterable[Evaluation], *,
            wall_now: datetime | None = None, models: Collection[str] | None = None) -> list[Decision]:
        """Decide for every model with triggers (of ``models``, when given: a monitor worker's share); returns the
        decisions that are new or changed."""
        wall_now = wall_now or datetime.now(UTC)
        evaluations = list(evaluations)
        names = [name for name, model in sorted(self.config.models.items())
                 if model.triggers.enabled and (models is None or name in models)]
        with conn.cursor() as cur:
            champions = dict(cur.execute("SELECT model_name, champion FROM deployments").fetchall())
            marks = ledger_marks(cur, names) if self.skip_unchanged and self._seen else {}
        live = live_evaluations(evaluations, champions)
        by_model: dict[str, list[Evaluation]] = {}
        for ev in evaluations:
            by_model.setdefault(ev.model_name, []).append(ev)
        changed: list[Decision] = []
        self.looked, self.skipped = [], []
        for name in names:
            model = self.config.models[name]
            evs = _identity(by_model.get(name, ()))
            ev = live.get(name)
            clock = self.decider.clocks[name]
            now = clock.now(ev.evaluated_at if ev is not None else None, wall_now)
            if now is None:
                continue  # no event yet: a look would decide nothing, not even the calendar
            seen = self._seen.pop(name, None)
            if seen is not None and seen.holds(evs, marks.get(name, ()), now, self.decider.schedules.get(name)):
                self._seen[name] = seen
                self.skipped.append(name)
                continue
            self.looked.append(name)
            with conn.transaction(), conn.cursor() as cur:
                ledger = self._ledger(cur)
                ledger.lock(name)
                mark = ledger_marks(cur, [name]).get(name, ()) if self.skip_unchanged else ()
                look = self.decider.look(ledger, model, ev, wall_now=wall_now)
            changed += look.changed
            if self.skip_unchanged and not ledger.wrote and look.now is not None:
                # the look changed nothing: the next one would see what it saw, until something moves
                watermark = clock.watermark
                self._seen[name] = _Seen(evs, mark, look.now, idle=watermark is not None and look.now > watermark,
                                         standing=look.standing, refresh_due=look.refresh_due)
        for decision in changed:
            log.info("retrain decision %s: %s (%s, %s): %s", decision.decision_id, decision.status, decision.kind,
                     decision.urgency, decision.sentence)
            for alert in alerts_for(decision):
                self.alerts.send(alert)
        return changed

    def manual(self, conn: psycopg.Connection[Any], model: str, *, reason: str, requested_by: str, request_id: str,
               at: datetime | None = None) -> Decision:
        """Record a manual retrain request (its event goes to the outbox when it fires)."""
        config = self.config.models[model]
        with conn.transaction(), conn.cursor() as cur:
            ledger = self._ledger(cur)
            ledger.lock(model)
            at = at or _event_now(cur, model) or datetime.now(UTC)
            return self.decider.manual(ledger, config, reason=reason, requested_by=requested_by,
                                       request_id=request_id, at=at)


def _identity(evaluations: Iterable[Evaluation]) -> tuple[Evaluation, ...]:
    return tuple(sorted(evaluations, key=lambda ev: ev.model_version))


@dataclass(frozen=True, slots=True)
class _Seen:
    """What a model's last look read, when it wrote nothing. A look is a function of the model's evaluations, its
    rows in the ledger's tables and its clock's reading; while they stay as they were, the next look would decide
    the same and write nothing, so it is skipped.

    The clock alone may move (a model without traffic runs on wall time after an hour): the look is then the same
    unless a verdict stands (its ``decided_at`` follows the clock; cooldown, the daily cap and a running training's
    age are clocks too), a calendar slot or the refresh falls due, a decision was fired ahead of the reading (a
    manual request at the newest window's end) or a window may start at or after the reading (label counts run
    up to it: only once the clock has run past every event are they fixed).
    """

    evaluations: tuple[Evaluation, ...]  # the very objects: the monitor hands over the same one while unchanged
    mark: tuple[Any, ...]
    now: datetime
    idle: bool
    standing: bool
    refresh_due: datetime | None

    def holds(self, evaluations: tuple[Evaluation, ...], mark: tuple[Any, ...], now: datetime | None,
              schedule: Schedule | None) -> bool:
        if (now is None or mark != self.mark or len(evaluations) != len(self.evaluations)
                or any(a is not b for a, b in zip(evaluations, self.evaluations, strict=True))):
            return False
        if now == self.now:
            return True
        fired_ahead = _newest_fired(mark)
        return (self.idle and not self.standing and (fired_ahead is None or fired_ahead <= self.now)
                and (schedule is None or schedule.latest_slot(now) == schedule.latest_slot(self.now))
                and not (self.refresh_due is not None and self.now < self.refresh_due <= now))


# every table a look reads besides the windows (which change only with the model's evaluations): a change to any row
# changes the count or the sum of the rows' xmin (an updated row is a new tuple with the updater's transaction id)
_MARK_TABLES = ("retrain_decisions", "retrain_outcomes", "trigger_resets", "trigger_state", "detector_events",
                "model_versions", "rollouts", "deployments")
_MARKS = "SELECT model_name, t, count(*), sum(x), max(f) FROM (" + " UNION ALL ".join(
    f"SELECT model_name, {i} AS t, xmin::text::bigint AS x, "
    f"{'fired_at' if table == 'retrain_decisions' else 'NULL::timestamptz'} AS f "
    f"FROM {table} WHERE model_name = ANY(%(m)s)" for i, table in enumerate(_MARK_TABLES)
) + ") rows GROUP BY 1, 2 ORDER BY 1, 2"


def ledger_marks(cur: psycopg.Cursor[Any], models: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    """Per model, a mark of its rows in the tables a look reads (one statement for all): equal marks, equal rows.
    Its first entry, when the model has decisions, carries their newest ``fired_at``."""
    marks: dict[str, list[Any]] = {}
    for model, table, count, xsum, fired in cur.execute(_MARKS, {"m": list(models)}).fetchall():
        marks.setdefault(model, []).append((table, count, int(xsum), fired))
    return {model: tuple(rows) for model, rows in marks.items()}


def _newest_fired(mark: tuple[Any, ...]) -> datetime | None:
    return mark[0][3] if mark and mark[0][0] == 0 else None


def live_evaluations(evaluations: Iterable[Evaluation],
                     champions: Mapping[str, str] | None = None) -> dict[str, Evaluation]:
    """Per model, the evaluation of its live version: the one with the newest traffic; between versions serving
    the same windows (a canary beside its champion) the deployed champion."""
    champions = champions or {}

    def rank(ev: Evaluation) -> tuple[Any, ...]:
        return ev.evaluated_at, champions.get(ev.model_name) == ev.model_version, ev.model_version

    live: dict[str, Evaluation] = {}
    for ev in evaluations:
        have = live.get(ev.model_name)
        if have is None or rank(ev) > rank(have):
            live[ev.model_name] = ev
    return live


def _event_now(cur: psycopg.Cursor[Any], model: str) -> datetime | None:
    """The model's event time: the newest window end of its counted predictions."""
    row = cur.execute(
        "SELECT max(window_start + window_s * interval '1 second') FROM window_counts "
        "WHERE model_name = %s AND segment = '*' AND series = '__rows__'", (model,)).fetchone()
    return row[0] if row else None
