"""The rollout controller: takes a candidate that passed its shadow through the ramp to champion, or back out.

At each look, per model, in event time (the model's newest prediction), under a per-model advisory lock so that
any number of rollout workers may look:

- no rollout under way, a passed shadow waiting, no rollback latched: check that the champion (the rollback
  target) loads from the registry, plan the promotion test from the shadow's measured gain (abandon if the ramp
  cannot decide within its maximum duration), and start at the first step;
- ramping: roll back if a rule says so (feedback/rollout/rules.py); otherwise look at the promotion test, and
  advance a step once its dwell and each arm's requests are reached; the step to 100% needs the test's
  significant win; a test significant the other way, or the maximum duration, keeps the champion;
- holding (100%, no champion traffic left to compare with): the new champion is judged against the champion's
  figures frozen when the ramp reached 100%, for the hold period, then becomes champion in the registry;
- paused: rollback rules only.

Every change is one transaction: the rollout row, its event (with sentence and evidence), the registry stage,
the deployment row and its deployments-topic message in the outbox (message_version one higher), and the alert
after commit. So a crash anywhere leaves either all of it or none, and the routers see exactly the committed
deployments.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from feedback import topics
from feedback.alerts import Alert, AlertSink
from feedback.config import ModelConfig, MonitoringConfig, RolloutConfig
from feedback.monitoring.windows import segment_value
from feedback.outbox import enqueue
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout import arms
from feedback.rollout.arms import CUPED_MIN_COVERAGE, WHOLE
from feedback.rollout.rules import (
    ArmStats,
    Finding,
    Latch,
    PromotionTest,
    UnitStats,
    cuped_units,
    first_step,
    latch_holds,
    paired_gain,
    plan_test,
    rollback_findings,
    step_ready,
    users_within,
    with_adjusted,
)
from feedback.rollout.shadow import model_watermark
from feedback.rollout.urgency import answers_later_change, degradation, episode
from feedback.store.database import lock_key

log = logging.getLogger(__name__)

ACTIVE = ("ramping", "paused", "holding")
ENDED = ("promoted", "rolled_back", "kept_champion", "abandoned", "superseded")
_LOCK_SPACE = 0x524F4C4C  # "ROLL": one controller look per model at a time

_ACTIVE = f"SELECT * FROM rollouts WHERE model_name = %s AND state IN {ACTIVE!r} FOR UPDATE"
_PASSED_SHADOW = """
SELECT s.* FROM shadows s
WHERE s.model_name = %s AND s.status = 'passed'
  -- a version's earlier ramp (a former champion proposed again by the model pool) does not hold back its new one
  AND NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.model_name = s.model_name AND r.challenger = s.version
                  AND r.recorded_at >= s.updated_at)
ORDER BY s.decided_at DESC NULLS LAST LIMIT 1
"""
_APPROVAL = "SELECT verdict, actor, reason, recorded_at FROM approvals WHERE model_name = %s AND version = %s"
_RECORD_APPROVAL = """
INSERT INTO approvals (model_name, version, verdict, actor, reason) VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (model_name, version) DO UPDATE SET verdict = excluded.verdict, actor = excluded.actor,
    reason = excluded.reason, recorded_at = now()
"""
# who started a ramp: the actor of its first step (the controller, or a person's command such as a drill)
_STARTED_BY = "SELECT actor FROM rollout_events WHERE rollout_id = %s AND kind = 'step' ORDER BY event_id LIMIT 1"
_TRAFFIC = """
SELECT model_version, count(*) AS requests, count(*) FILTER (WHERE error IS NOT NULL) AS failures,
       count(latency_ms) AS latency_n, percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
FROM predictions
WHERE model_name = %s AND model_version = ANY(%s) AND predicted_at > %s AND predicted_at <= %s
GROUP BY model_version
"""
_LABELLED = """
SELECT p.model_version, coalesce(p.routing_key, p.prediction_id) AS unit, p.segment, p.prediction, l.label,
       s.prediction AS champion_prediction
FROM predictions p JOIN current_labels l USING (prediction_id)
LEFT JOIN shadow_predictions s ON s.model_name = p.model_name AND s.version = %s AND s.prediction_id = p.prediction_id
                              AND s.error IS NULL
WHERE p.model_name = %s AND p.model_version = ANY(%s) AND p.predicted_at > %s AND p.predicted_at <= %s
  AND p.error IS NULL
"""
_SHADOW_LABELLED = """
SELECT coalesce(f.routing_key, f.prediction_id) AS unit, f.served_prediction, f.shadow_prediction, f.label
FROM shadow_feedback f
WHERE f.model_name = %s AND f.shadow_version = %s AND f.label IS NOT NULL AND f.labeled_at > %s
  AND f.shadow_error IS NULL
"""
# the distinct users (the router's key, else the request) of a span: how many, seen once, seen twice, the first
_UNITS_SEEN = """
SELECT count(*) AS users, count(*) FILTER (WHERE visits = 1) AS once, count(*) FILTER (WHERE visits = 2) AS twice,
       min(first) AS first
FROM (SELECT count(*) AS visits, min(predicted_at) AS first FROM predictions
      WHERE model_name = %s AND predicted_at > %s AND predicted_at <= %s
      GROUP BY coalesce(routing_key, prediction_id)) u
"""
_DEPLOYMENT = "SELECT message_version FROM deployments WHERE model_name = %s FOR UPDATE"
_UPSERT_DEPLOYMENT = """
INSERT INTO deployments (model_name, message_version, champion, challenger, challenger_share, salt, state,
                         decided_at, reason)
VALUES (%(model_name)s, %(message_version)s, %(champion)s, %(challenger)s, %(challenger_share)s, %(salt)s, %(state)s,
        %(decided_at)s, %(reason)s)
ON CONFLICT (model_name) DO UPDATE SET message_version = excluded.message_version, champion = excluded.champion,
    challenger = excluded.challenger, challenger_share = excluded.challenger_share, salt = excluded.salt,
    state = excluded.state, decided_at = excluded.decided_at, reason = excluded.reason, updated_at = now()
"""
_EVENT = """
INSERT INTO rollout_events (rollout_id, model_name, version, kind, at, share, sentence, evidence, actor)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


class RolloutError(ValueError):
    """A manual command that cannot apply (no rollout under way, nothing to roll back to); says what to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LookResult:
    """What one look at one model did: its rollout's state and the sentence of what happened (or why not)."""

    model_name: str
    state: str | None
    sentence: str
    changed: bool


class Controller:
    """The ramp controller over every model configured with ``promotion = "shadow"``."""

    def __init__(self, store: Any, config: MonitoringConfig, alerts: AlertSink, *,
                 registry: Registry | None = None) -> None:
        self.store = store
        self.config = config
        self.alerts = alerts
        self.registry = registry or Registry()

    def look(self, models: Iterable[str] | None = None) -> list[LookResult]:
        """One look at each model (or those named); a model another process is looking at is skipped."""
        results = []
        for name in models if models is not None else sorted(self.config.models):
            model = self.config.model(name)
            if model is None or not model.retrain.shadowed:
                continue
            pending: list[Alert] = []
            try:
                with (self.store.pool.connection() as conn, conn.transaction(),
                      conn.cursor(row_factory=dict_row) as cur, conn.cursor() as registry_cur):
                    if not _try_lock(cur, name):
                        continue
                    result = _Look(cur, registry_cur, model, self.registry, pending).run()
            except Exception:
                log.exception("rollout: the look at %s failed; the next look starts afresh", name)
                continue
            for alert in pending:
                self.alerts.send(alert)
            if result is not None:
                results.append(result)
                if result.changed:
                    log.info("rollout %s: %s", name, result.sentence)
        return results


    # -- a person's commands: each one transaction, its event naming who ran it ------------------------------

    def rollback(self, name: str, actor: str) -> str:
        """Back to the champion: a ramp under way ends rolled back; with none, the previous champion returns, in one
        deployment message. Either latches; while latched, the command changes nothing (run twice, it does not
        walk back one champion more)."""
        return self._command(name, actor, "rollback")

    def promote(self, name: str, actor: str) -> str:
        """The ramp's challenger becomes champion now, whatever its step."""
        return self._command(name, actor, "promote")

    def pause(self, name: str, actor: str, *, resume: bool = False) -> str:
        """Freeze the ramp at its share (rollback rules still apply), or resume it (its step's dwell restarts)."""
        return self._command(name, actor, "resume" if resume else "pause")

    def approve(self, name: str, actor: str, version: str) -> str:
        """A person lets ``version`` ramp once its shadow passed (``promotion = "approval"``); twice is harmless."""
        return self._command(name, actor, "approve", version=version)

    def reject(self, name: str, actor: str, version: str, reason: str) -> str:
        """A person ends ``version`` before its ramp, with a reason: it becomes ``rejected``; twice is harmless."""
        return self._command(name, actor, "reject", version=version, reason=reason)

    def deploy_version(self, name: str, actor: str, version: str) -> str:
        """A person makes ``version`` the champion now (a model's first deployment, or their hand), through the same
        versioned deployment message as a ramp; refused while a ramp is under way."""
        return self._command(name, actor, "deploy", version=version)

    def clear(self, name: str, actor: str) -> str:
        """Clear a latched rollback: ramps of the model may start again."""
        return self._command(name, actor, "clear")

    def drill(self, name: str, actor: str, version: str) -> str:
        """Start a ramp of ``version`` (registered as a candidate by the drill) at once, without a shadow."""
        return self._command(name, actor, "drill", version=version)

    def _command(self, name: str, actor: str, command: str, **kwargs: Any) -> str:
        model = self.config.model(name)
        if model is None:
            known = ", ".join(sorted(self.config.models)) or "none"
            msg = f"no model {name!r} in the configuration (configured: {known})"
            raise RolloutError(msg)
        with (self.store.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur,
              conn.cursor() as registry_cur):
            cur.execute(f"SELECT pg_advisory_xact_lock(%s, {lock_key()})", (_LOCK_SPACE, name))
            look = _Look(cur, registry_cur, model, self.registry, [])
            # event time; a model without traffic yet (a first deployment) has none: the command's own time
            look.now = watermark(cur, name) or datetime.now(UTC)
            sentence = getattr(look, f"by_{command}")(actor, **kwargs)
        log.info("rollout %s: %s", name, sentence)
        return sentence


def _try_lock(cur: psycopg.Cursor[Any], model: str) -> bool:
    row = cur.execute(f"SELECT pg_try_advisory_xact_lock(%s, {lock_key()}) AS locked", (_LOCK_SPACE, model)).fetchone()
    return bool(row and row["locked"])


class _Look:
    """One look at one model inside its transaction."""

    def __init__(self, cur: psycopg.Cursor[Any], registry_cur: psycopg.Cursor[Any], model: ModelConfig,
                 registry: Registry, alerts: list[Alert]) -> None:
        self.cur = cur  # rows as dicts
        self.rcur = registry_cur  # the registry's cursor (rows as tuples), same transaction
        self.model = model
        self.cfg: RolloutConfig = model.rollout
        self.registry = registry
        self.alerts = alerts
        self.now: datetime | None = None

    def run(self) -> LookResult | None:
        self.now = watermark(self.cur, self.model.name)
        if self.now is None:
            return None
        rollout = self.cur.execute(_ACTIVE, (self.model.name,)).fetchone()
        if rollout is None:
            return self.maybe_start()
        if rollout["period_starts"] is None:
            self.build_figures(rollout)
        arms.tidy(self.cur)
        if rollout["state"] == "holding":
            return self.hold(rollout)
        return self.ramp(rollout)

    # -- starting ---------------------------------------------------------------------------------------------

    def maybe_start(self) -> LookResult | None:
        shadow = self.cur.execute(_PASSED_SHADOW, (self.model.name,)).fetchone()
        if shadow is None:
            return None
        name, version, now = self.model.name, shadow["version"], self.now
        assert now is not None
        row = self.cur.execute("SELECT version, reason, change_point, automatic FROM rollback_latches"
                               " WHERE model_name = %s", (name,)).fetchone()
        latch = Latch(**row) if row is not None else None
        held = latch_holds(latch, version, self.episode(version), self.cfg.latch)
        if held is not None:
            return LookResult(model_name=name, state=None, changed=False, sentence=(
                f"{version} passed its shadow but waits: {held}; `pitstop rollout clear --model {name}` lets "
                "ramps start again"))
        if self.model.retrain.promotion == "approval":
            waiting = self.approval(version)
            if waiting is not None:
                return waiting
        champion = self.champion_version(shadow)
        earlier = self.cur.execute("SELECT count(*) AS n FROM rollouts WHERE model_name = %s AND challenger = %s",
                                   (name, version)).fetchone()["n"]
        rollout_id = f"{name}/{version}" + (f"#{earlier + 1}" if earlier else "")
        if champion is None or champion == version:
            self.registry.move(self.rcur, name, version, "canary", reason="no champion to ramp against")
            self.registry.move(self.rcur, name, version, "champion", reason="no champion to ramp against")
            sentence = f"{version} becomes champion at once: {name} has no champion to ramp against"
            self.insert_rollout(rollout_id, shadow, champion or version, state="promoted", step=len(self.cfg.steps) - 1,
                                share=1.0, test={}, sentence=sentence, ended=True)
            self.deploy(champion=version, challenger=None, share=0.0, salt=rollout_id, state="promoted",
                        reason=sentence)
            self.event(rollout_id, version, "promoted", 1.0, sentence, {})
            return LookResult(model_name=name, state="promoted", sentence=sentence, changed=True)
        refusal = self.rollback_target_refusal(champion)
        per_user, shadow_units = self.shadow_per_user(shadow)  # once: the plan, the ratio and the paired test
        if refusal is None:
            before = self.champion_units(champion, shadow, per_user)
            ratio = shadow_ratio(per_user, shadow_units)
            test, plan = plan_test(before, ratio, self.units_available(), self.cfg,
                                   adjusted_var=adjusted_variance(per_user))
        else:
            test, plan = None, refusal
        if test is None:
            sentence = f"the ramp of {version} against {champion} is abandoned: {plan}"
            self.insert_rollout(rollout_id, shadow, champion, state="abandoned", step=-1, share=0.0, test={},
                                sentence=sentence, ended=True)
            self.registry.move(self.rcur, name, version, "archived", reason=sentence)
            self.event(rollout_id, version, "abandoned", 0.0, sentence, {"plan": plan})
            self.alert("rollout_abandoned", sentence, version)
            return LookResult(model_name=name, state="abandoned", sentence=sentence, changed=True)
        degraded = self.degraded(version, champion)
        gain_p = _gain_p(per_user) if degraded else None
        step, urgency = first_step(self.cfg.steps, degraded, gain_p, self.cfg.alpha)
        urgent = degraded if gain_p is not None and gain_p < self.cfg.alpha else None
        share = self.cfg.steps[step]
        measured = "no labelled shadow rows" if ratio is None else (
            f"shadow error ratio {ratio:.3f} on {shadow_units:,} labelled requests")
        sentence = (f"ramp of {version} against {champion} starts: {version} serves {_pct(share)}; {measured}; "
                    f"{plan}{f'; {urgency}' if urgency else ''}")
        self.insert_rollout(rollout_id, shadow, champion, state="ramping", step=step, share=share, test=test.to_json(),
                            sentence=sentence, ended=False, urgency=urgent)
        self.registry.move(self.rcur, name, version, "canary", reason=sentence)
        self.deploy(champion=champion, challenger=version, share=share, salt=rollout_id, state="canary",
                    reason=sentence)
        self.event(rollout_id, version, "step", share, sentence, {"plan": plan, "champion_before": before.n})
        return LookResult(model_name=name, state="ramping", sentence=sentence, changed=True)

    def approval(self, version: str) -> LookResult | None:
        """None when a person approved ``version``'s ramp; else why it waits (said once: an event of its trail and
        an alert), or nothing to start when it was rejected."""
        name = self.model.name
        row = self.cur.execute(_APPROVAL, (name, version)).fetchone()
        if row is not None and row["verdict"] == "approved":
            return None
        if row is not None:  # rejected (its stage too, unless a person moved it since)
            return LookResult(model_name=name, state=None, changed=False,
                              sentence=f"{version} was rejected by {row['actor']}: it does not ramp")
        sentence = (f"{version} passed its shadow and waits for a person: `pitstop approve --model {name} --version "
                    f"{version}` starts its ramp, `pitstop reject --model {name} --version {version} --reason ...` "
                    "ends it")
        said = self.cur.execute("SELECT 1 FROM rollout_events WHERE model_name = %s AND version = %s AND kind = "
                                "'waiting' AND evidence ? 'approval'", (name, version)).fetchone()
        if said is None:
            self.event(None, version, "waiting", None, sentence, {"approval": "waiting"})
            self.alert("approval_waiting", sentence, version)
        return LookResult(model_name=name, state=None, changed=said is None, sentence=sentence)

    def champion_version(self, shadow: Mapping[str, Any]) -> str | None:
        deployed = self.cur.execute("SELECT champion FROM deployments WHERE model_name = %s",
                                    (self.model.name,)).fetchone()
        if deployed is not None:
            return deployed["champion"]
        registered = self.registry.champion(self.rcur, self.model.name)
        return registered.version if registered is not None else shadow["champion"]

    def rollback_target_refusal(self, champion: str) -> str | None:
        """Why the champion cannot be the ramp's rollback target (None: it loads, or serves outside the registry)."""
        failure = self.load_failure(champion)
        return None if failure is None else f"the champion {champion}, the rollback target, does not load: {failure}"

    def load_failure(self, version_name: str) -> str | None:
        """Why ``version_name`` does not load from the registry (None: it loads, or serves outside the registry:
        the model's own servers serve it)."""
        version = self.registry.get(self.rcur, self.model.name, version_name)
        if version is None or version.artifact is None:
            return None
        try:
            self.registry.load(self.rcur, version)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def champion_units(self, champion: str, shadow: Mapping[str, Any], per_user: pd.DataFrame) -> UnitStats:
        """The champion's per-user errors, the test's planning figures: on its requests since the shadow started,
        or on the shadow's labelled rows (the requests it served that the shadow was judged on) when those hold
        more users. A shadow that passed early (the champion degraded) ends before the requests since its start
        have labels; planned from none, the test's prior was nil and the ramp never promoted (found by
        bench/loop_quality.py: S1 and S2 ramps open at 50% for 18,000 samples)."""
        since = arm_stats(self.cur, self.model, [champion], shadow["started_at"], self.now)[champion].units
        served = per_user["served"].dropna().to_numpy()
        if len(served) <= since.n:
            return since
        return UnitStats(n=len(served), mean=float(served.mean()),
                         var=float(served.var(ddof=1)) if len(served) > 1 else 0.0)

    def shadow_per_user(self, shadow: Mapping[str, Any]) -> tuple[pd.DataFrame, int]:
        """The champion's (``served``) and the challenger's (``shadow``) mean error per user on the labelled shadow
        rows (labels after its cutoff, the same requests), and the rows' count."""
        rows = self.cur.execute(_SHADOW_LABELLED, (self.model.name, shadow["version"], shadow["cutoff"])).fetchall()
        frame = pd.DataFrame({"unit": [r["unit"] for r in rows],
                              "served": row_errors(self.model, [r["served_prediction"] for r in rows],
                                                   [r["label"] for r in rows]),
                              "shadow": row_errors(self.model, [r["shadow_prediction"] for r in rows],
                                                   [r["label"] for r in rows])})
        return frame.groupby("unit")[["served", "shadow"]].mean(), len(rows)

    def shadow_gain_p(self, shadow: Mapping[str, Any]) -> float | None:
        """One-sided paired t-test of the challenger's per-user error below the champion's on the labelled shadow
        rows (the same requests); None with fewer than 20 users or no spread."""
        return _gain_p(self.shadow_per_user(shadow)[0])

    def degraded(self, version: str, champion: str) -> str | None:
        """The champion confirmed degraded in the episode the candidate answers (feedback/rollout/urgency.py)."""
        return degradation(self.rcur, self.registry, self.model.name, version, champion)

    def units_available(self) -> float:
        """Users each arm can expect within the ramp's maximum duration at its last step below 100%: the distinct
        users of the last ``max_duration`` (when the history is shorter, as many as its rate and its returning
        users say: ``users_within``) x that share."""
        assert self.now is not None
        span_start = self.now - timedelta(seconds=self.cfg.max_duration_s)
        row = self.cur.execute(_UNITS_SEEN, (self.model.name, span_start, self.now)).fetchone()
        if not row["users"] or row["first"] is None:
            return 0.0
        seen_s = max((self.now - row["first"]).total_seconds(), 3_600.0)
        users = users_within(row["users"], row["once"], row["twice"], seen_s, self.cfg.max_duration_s)
        below_full = [s for s in self.cfg.steps if s < 1.0]
        return users * (below_full[-1] if below_full else 0.5)

    # -- ramping ----------------------------------------------------------------------------------------------

    def ramp(self, rollout: dict[str, Any]) -> LookResult:
        name, champion, challenger = self.model.name, rollout["champion"], rollout["challenger"]
        assert self.now is not None
        figures = arms.read(self.cur, rollout["rollout_id"])
        stats = figures.arms(WHOLE, [champion, challenger])
        strata = [(s[challenger], s[champion]) for s in (
            figures.arms(k, [champion, challenger], covariate=(challenger, champion))
            for k in range(len(rollout["period_starts"])))]
        findings = rollback_findings(stats[challenger], stats[champion], self.cfg, strata)
        if findings:
            return self.roll_back(rollout, findings, stats)
        newer = self.later_episode(rollout)
        if newer is not None and rollout["state"] == "ramping":
            return self.supersede(rollout, newer)
        if rollout["state"] == "paused":
            return LookResult(model_name=name, state="paused", changed=False,
                              sentence=f"paused at {_pct(rollout['share'])}; no rollback rule broken")
        test = PromotionTest.from_json(rollout["test"])
        decision = test.look_strata(strata)
        evidence = {"arms": {v: s.to_json() for v, s in stats.items()}, "p_value": decision.p_value}
        if decision.kind == "keep":
            return self.end(rollout, "kept_champion", decision.sentence, evidence, test)
        if self.now - rollout["started_at"] >= timedelta(seconds=self.cfg.max_duration_s):
            sentence = (f"no significant gain after {_days(self.cfg.max_duration_s)} ({decision.sentence}): "
                        f"keep the champion {champion}")
            return self.end(rollout, "kept_champion", sentence, evidence, test)
        step = rollout["step"]
        step_requests = figures.requests(len(rollout["period_starts"]) - 1, [champion, challenger])
        waiting = step_ready(dwell_s=(self.now - rollout["step_started_at"]).total_seconds(),
                             dwell_needed_s=self.cfg.dwell_s[step], urgent=rollout.get("urgency") is not None,
                             step_requests=step_requests,
                             challenger=stats[challenger], champion=stats[champion], config=self.cfg,
                             to_full=self.cfg.steps[step + 1] >= 1.0)
        next_share = self.cfg.steps[step + 1]
        if waiting is None and next_share >= 1.0 and decision.kind != "promote":
            waiting = decision.sentence
        if waiting is not None:
            self.update(rollout, sentence=f"at {_pct(rollout['share'])}: {waiting}", test=test)
            return LookResult(model_name=name, state=rollout["state"], changed=False, sentence=waiting)
        if next_share >= 1.0:
            sentence = (f"{challenger} serves 100% and is held for {_days(self.cfg.hold_s)} against the champion "
                        f"{champion}'s frozen figures: {decision.sentence}")
            # the champion's figures in the ramp's last period, its users' included (the hold's error rule compares
            # users; over the whole ramp they are not kept): the most recent, as the steps compare within each
            baseline = figures.arm(len(rollout["period_starts"]) - 1, champion).to_json()
            self.new_period(rollout)
            self.update(rollout, state="holding", step=step + 1, share=1.0, step_started_at=self.now,
                        baseline=baseline, sentence=sentence, test=test)
            self.deploy(champion=champion, challenger=challenger, share=1.0, salt=rollout["salt"], state="hold",
                        reason=sentence)
            self.event(rollout["rollout_id"], challenger, "holding", 1.0, sentence, {**evidence, "baseline": baseline})
            return LookResult(model_name=name, state="holding", sentence=sentence, changed=True)
        sentence = (f"{challenger} serves {_pct(next_share)} (from {_pct(rollout['share'])}): dwell and requests "
                    f"reached, no rollback rule broken; {decision.sentence}")
        self.new_period(rollout)
        self.update(rollout, step=step + 1, share=next_share, step_started_at=self.now, sentence=sentence, test=test)
        self.deploy(champion=champion, challenger=challenger, share=next_share, salt=rollout["salt"], state="ramp",
                    reason=sentence)
        self.event(rollout["rollout_id"], challenger, "step", next_share, sentence, evidence)
        return LookResult(model_name=name, state="ramping", sentence=sentence, changed=True)

    def new_period(self, rollout: dict[str, Any]) -> None:
        """A period of the ramp begins (a step, the hold, a resume): under the model's counting lock, at the watermark
        read under it, which becomes the look's clock (feedback/rollout/arms.py)."""
        self.cut()
        arms.begin(self.cur, rollout["rollout_id"], self.now)

    def cut(self) -> None:
        arms.cut(self.cur, self.model.name)
        self.now = max(self.now, watermark(self.cur, self.model.name) or self.now)  # type: ignore[type-var]

    def build_figures(self, rollout: dict[str, Any]) -> None:
        """Build the figures of a ramp that has none yet (under way before they were kept): its periods from its
        events (each later step, resume and the hold), its rows counted once."""
        self.cut()
        starts = [rollout["started_at"]]
        events = self.cur.execute(
            "SELECT kind, at FROM rollout_events WHERE rollout_id = %s AND kind IN ('step', 'resumed', 'holding')"
            " ORDER BY event_id", (rollout["rollout_id"],)).fetchall()
        for i, event in enumerate(events):
            if (i > 0 or event["kind"] != "step") and event["at"] > starts[-1]:
                starts.append(event["at"])
        arms.build(self.cur, rollout["rollout_id"], starts, self.model.task, self.model.segments)
        rollout["period_starts"] = starts

    def hold(self, rollout: dict[str, Any]) -> LookResult:
        name, challenger = self.model.name, rollout["challenger"]
        assert self.now is not None
        since = rollout["step_started_at"]
        hold_period = len(rollout["period_starts"]) - 1
        stats = arms.read(self.cur, rollout["rollout_id"], [hold_period]).arms(hold_period, [challenger])
        baseline = _arm_from_json(rollout["baseline"])
        findings = rollback_findings(stats[challenger], baseline, self.cfg)
        if findings:
            return self.roll_back(rollout, findings, {**stats, baseline.version: baseline})
        later = self.later_episode(rollout)
        newer = f"{later} answers a later change" if later is not None else self.better_in_hold(challenger)
        if self.now - since < timedelta(seconds=self.cfg.hold_s) and newer is None:
            return LookResult(model_name=name, state="holding", changed=False, sentence=(
                f"holding: {(self.now - since).total_seconds() / 3600:.1f} h of {self.cfg.hold_s / 3600:.0f} h"))
        held = (f"it held {_days(self.cfg.hold_s)} at 100%" if newer is None else
                f"it held {(self.now - since).total_seconds() / 3600:.1f} h at 100% and {newer}: its hold ends "
                "early, so the newer candidate ramps against it")
        sentence = (f"{challenger} is champion: {held} within every rule against {rollout['champion']}'s frozen "
                    f"figures ({_figures(stats[challenger])})")
        self.registry.move(self.rcur, name, challenger, "champion", reason=sentence)
        self.retire_old_champions()
        self.update(rollout, state="promoted", ended_at=self.now, sentence=sentence)
        self.deploy(champion=challenger, challenger=None, share=0.0, salt=rollout["salt"], state="promoted",
                    reason=sentence)
        self.event(rollout["rollout_id"], challenger, "promoted", 1.0, sentence,
                   {"hold": stats[challenger].to_json(), "baseline": rollout["baseline"]})
        return LookResult(model_name=name, state="promoted", sentence=sentence, changed=True)

    # -- endings ----------------------------------------------------------------------------------------------

    def later_episode(self, rollout: Mapping[str, Any]) -> str | None:
        """A candidate that passed its shadow and answers a later change than the ramp's challenger (one episode,
        one ramp: the world changed again, and the ramp's challenger was trained for the world before). Never
        for a ramp a person started (a drill): automation does not end what a person began; the candidate waits
        (`pitstop demo --fast` found it: a refit that passed its shadow superseded act two's failing drill before
        its failures could roll it back)."""
        challenger = rollout["challenger"]
        shadow = self.cur.execute(_PASSED_SHADOW, (self.model.name,)).fetchone()
        if shadow is None or shadow["version"] == challenger:
            return None
        started_by = self.cur.execute(_STARTED_BY, (rollout["rollout_id"],)).fetchone()
        if started_by is not None and started_by["actor"] != "controller":
            return None
        return shadow["version"] if answers_later_change(self.rcur, self.registry, self.model.name,
                                                         shadow["version"], challenger) else None


    def better_in_hold(self, challenger: str) -> str | None:
        """A newer candidate (a refit of the same episode) whose shadow passed in the hold, while ``challenger``
        served every request, and showed it better on those same requests (paired, one-sided, p < alpha): it takes
        over (one sentence naming it), else None."""
        shadow = self.cur.execute(_PASSED_SHADOW, (self.model.name,)).fetchone()
        if shadow is None or shadow["version"] == challenger:
            return None
        p = self.shadow_gain_p(shadow)
        if p is None or not p < self.cfg.alpha:
            return None
        return f"{shadow['version']} passed its shadow against it, better on the same requests (paired p = {p:.2g})"

    def supersede(self, rollout: dict[str, Any], newer: str) -> LookResult:
        """End a ramp whose challenger answers an earlier change than ``newer``: back to the champion, the
        challenger archived (nothing showed it harmful), no latch; the next look starts ``newer``'s ramp."""
        challenger = rollout["challenger"]
        sentence = (f"the ramp of {challenger} at {_pct(rollout['share'])} is superseded: {newer} passed its shadow "
                    "and answers a later change; all traffic back to the champion "
                    f"{rollout['champion']} until {newer}'s ramp starts")
        self.update(rollout, state="superseded", share=0.0, ended_at=self.now, sentence=sentence)
        self.registry.move(self.rcur, self.model.name, challenger, "archived", reason=sentence)
        self.deploy(champion=rollout["champion"], challenger=None, share=0.0, salt=rollout["salt"], state="steady",
                    reason=sentence)
        self.event(rollout["rollout_id"], challenger, "superseded", 0.0, sentence, {"by": newer})
        return LookResult(model_name=self.model.name, state="superseded", sentence=sentence, changed=True)

    def episode(self, version: str) -> datetime | None:
        """The change point of the trigger the version answered (None: none, or a version registered by hand)."""
        return episode(self.rcur, self.registry, self.model.name, version)

    def roll_back(self, rollout: dict[str, Any], findings: Sequence[Finding],
                  stats: Mapping[str, ArmStats]) -> LookResult:
        sentence = "; ".join(f.sentence for f in findings)
        result = self.end(rollout, "rolled_back", sentence,
                          {"findings": [f.cause for f in findings], "arms": {v: s.to_json() for v, s in stats.items()}},
                          None)
        self.cur.execute("INSERT INTO rollback_latches (model_name, version, reason, change_point, automatic)"
                         " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model_name) DO UPDATE SET version ="
                         " excluded.version, reason = excluded.reason, change_point = excluded.change_point,"
                         " automatic = excluded.automatic, latched_at = now()",
                         (self.model.name, rollout["challenger"], sentence, self.episode(rollout["challenger"]),
                          all(f.cause != "manual" for f in findings)))
        self.alert("rollback", sentence, rollout["challenger"])
        return result

    def end(self, rollout: dict[str, Any], state: str, sentence: str, evidence: Mapping[str, Any],
            test: PromotionTest | None) -> LookResult:
        """The challenger goes back to 0% and is rejected (rolled back, or the champion kept)."""
        challenger = rollout["challenger"]
        self.update(rollout, state=state, share=0.0, ended_at=self.now, sentence=sentence, test=test)
        self.registry.move(self.rcur, self.model.name, challenger, "rejected", reason=sentence)
        self.deploy(champion=rollout["champion"], challenger=None, share=0.0, salt=rollout["salt"],
                    state="rolled_back" if state == "rolled_back" else "steady", reason=sentence)
        self.event(rollout["rollout_id"], challenger, state, 0.0, sentence, evidence)
        return LookResult(model_name=self.model.name, state=state, sentence=sentence, changed=True)

    def retire_old_champions(self) -> None:
        """Former champions beyond the last ``keep_champions`` are archived (they stop being loadable targets)."""
        keep = self.cfg.keep_champions - 1  # the champion itself is one of them
        for old in self.registry.past_champions(self.rcur, self.model.name, limit=1_000)[keep:]:
            self.registry.move(self.rcur, self.model.name, old.version, "archived",
                               reason=f"beyond the last {self.cfg.keep_champions} champions")

    # -- commands ---------------------------------------------------------------------------------------------

    def active(self, verb: str) -> dict[str, Any]:
        rollout = self.cur.execute(_ACTIVE, (self.model.name,)).fetchone()
        if rollout is None:
            msg = f"{self.model.name} has no ramp under way to {verb}; `pitstop models show {self.model.name}` shows it"
            raise RolloutError(msg)
        return rollout

    def by_rollback(self, actor: str) -> str:
        name = self.model.name
        rollout = self.cur.execute(_ACTIVE, (name,)).fetchone()
        if rollout is not None:
            sentence = f"{actor} rolled back {rollout['challenger']} at {_pct(rollout['share'])}"
            self.roll_back(rollout, [Finding(cause="manual", observed=0, threshold=0, sentence=sentence)], {})
            return f"{sentence}; all traffic to {rollout['champion']} (latched: `pitstop rollout clear` to undo)"
        latch = self.cur.execute("SELECT version, reason FROM rollback_latches WHERE model_name = %s",
                                 (name,)).fetchone()
        if latch is not None:  # the same command twice must not walk back one champion more each time
            return (f"{name} is already rolled back ({latch['version']}: {latch['reason']}); nothing changed; "
                    f"`pitstop rollout clear --model {name}` lifts the latch, then rollback goes one champion back")
        current = self.registry.champion(self.rcur, name)
        previous = self.registry.past_champions(self.rcur, name, limit=1)
        if not previous:
            msg = (f"{name} has no previous champion to return to"
                   f"{f' (champion {current.version})' if current else ''}")
            raise RolloutError(msg)
        back = previous[0].version
        sentence = f"{actor} returned {name} to the previous champion {back}" + (
            f" (from {current.version})" if current else "")
        self.registry.move(self.rcur, name, back, "champion", reason=sentence)
        self.deploy(champion=back, challenger=None, share=0.0, salt=f"{name}/{back}", state="rolled_back",
                    reason=sentence)
        self.event(None, back, "rolled_back", 0.0, sentence, {}, actor=actor)
        if current is not None:
            self.cur.execute("INSERT INTO rollback_latches (model_name, version, reason) VALUES (%s, %s, %s)",
                             (name, current.version, sentence))
        return f"{sentence} (latched: `pitstop rollout clear` to undo)"

    def by_promote(self, actor: str) -> str:
        rollout = self.active("promote")
        challenger = rollout["challenger"]
        sentence = f"{actor} promoted {challenger} at {_pct(rollout['share'])}, skipping the rest of the ramp"
        self.registry.move(self.rcur, self.model.name, challenger, "champion", reason=sentence)
        self.retire_old_champions()
        self.update(rollout, state="promoted", share=1.0, ended_at=self.now, sentence=sentence)
        self.deploy(champion=challenger, challenger=None, share=0.0, salt=rollout["salt"], state="promoted",
                    reason=sentence)
        self.event(rollout["rollout_id"], challenger, "promoted", 1.0, sentence, {}, actor=actor)
        return sentence

    def by_pause(self, actor: str) -> str:
        rollout = self.active("pause")
        if rollout["state"] == "paused":
            return f"{rollout['challenger']} is already paused at {_pct(rollout['share'])}"
        sentence = f"{actor} paused the ramp of {rollout['challenger']} at {_pct(rollout['share'])}"
        self.update(rollout, state="paused", sentence=sentence)
        self.event(rollout["rollout_id"], rollout["challenger"], "paused", rollout["share"], sentence, {}, actor=actor)
        return sentence

    def by_resume(self, actor: str) -> str:
        rollout = self.active("resume")
        if rollout["state"] != "paused":
            return f"{rollout['challenger']} is not paused ({rollout['state']} at {_pct(rollout['share'])})"
        sentence = (f"{actor} resumed the ramp of {rollout['challenger']} at {_pct(rollout['share'])}; "
                    "its dwell restarts")
        self.new_period(rollout)
        self.update(rollout, state="ramping", step_started_at=self.now, sentence=sentence)
        self.event(rollout["rollout_id"], rollout["challenger"], "resumed", rollout["share"], sentence, {},
                   actor=actor)
        return sentence

    def by_drill(self, actor: str, version: str) -> str:
        name = self.model.name
        if self.cur.execute(_ACTIVE, (name,)).fetchone() is not None:
            msg = f"{name} has a ramp under way; a drill starts only between ramps (`pitstop models show {name}`)"
            raise RolloutError(msg)
        champion = self.champion_version({"champion": None})
        if champion is None:
            msg = f"{name} has no champion to fall back to; a drill needs one"
            raise RolloutError(msg)
        rollout_id = f"{name}/{version}"
        share = self.cfg.steps[0]
        sentence = f"{actor} started a rollback drill: {version}, which fails every request, serves {_pct(share)}"
        for stage in ("shadow", "canary"):
            self.registry.move(self.rcur, name, version, stage, reason=sentence)  # type: ignore[arg-type]
        self.insert_rollout(rollout_id, {"version": version}, champion, state="ramping", step=0, share=share,
                            test=PromotionTest(tau2=1.0, ratio=self.cfg.promote_ratio, alpha=self.cfg.alpha).to_json(),
                            sentence=sentence, ended=False)
        self.deploy(champion=champion, challenger=version, share=share, salt=rollout_id, state="canary",
                    reason=sentence)
        self.event(rollout_id, version, "step", share, sentence, {"drill": True}, actor=actor)
        return sentence

    def by_approve(self, actor: str, version: str) -> str:
        name = self.model.name
        stage = self.awaiting(version, "approved")
        row = self.cur.execute(_APPROVAL, (name, version)).fetchone()
        if row is not None:
            return f"{name} {version} was already approved by {row['actor']} at {row['recorded_at']:%Y-%m-%d %H:%M} UTC"
        self.cur.execute(_RECORD_APPROVAL, (name, version, "approved", actor, None))
        passed = self.cur.execute("SELECT 1 FROM shadows WHERE model_name = %s AND version = %s AND status = 'passed'",
                                  (name, version)).fetchone()
        when = "at the rollout worker's next look" if passed else "once its shadow passes"
        sentence = f"{actor} approved {version} ({stage}): its ramp starts {when}"
        self.event(None, version, "approved", None, sentence, {}, actor=actor)
        return sentence

    def by_reject(self, actor: str, version: str, reason: str) -> str:
        name = self.model.name
        stage = self.awaiting(version, "rejected")
        row = self.cur.execute(_APPROVAL, (name, version)).fetchone()
        if row is not None and row["verdict"] == "rejected":
            return f"{name} {version} was already rejected by {row['actor']}: {row['reason']}"
        sentence = f"{actor} rejected {version} ({stage}): {reason}"
        self.cur.execute(_RECORD_APPROVAL, (name, version, "rejected", actor, reason))
        self.registry.move(self.rcur, name, version, "rejected", reason=sentence)
        self.event(None, version, "rejected", None, sentence, {"reason": reason}, actor=actor)
        return sentence

    def registered(self, version: str) -> ModelVersion:
        """``version`` of this model in the registry, or the command's one-line refusal."""
        found = self.registry.get(self.rcur, self.model.name, version)
        if found is None:
            name = self.model.name
            msg = f"{name} {version} is not in the registry (`pitstop models list --model {name}`)"
            raise RolloutError(msg)
        return found

    def awaiting(self, version: str, verdict: str) -> str:
        """The stage of ``version``, which waits for a person's verdict: a candidate (shadow under way or to come,
        or passed); else why no verdict is asked of it."""
        name = self.model.name
        if self.model.retrain.promotion != "approval":
            msg = (f"{name} promotes {self.model.retrain.promotion!r}: no candidate waits for a person; set "
                   f"retrain.promotion = \"approval\" for {name} to ask for one")
            raise RolloutError(msg)
        found = self.registered(version)
        row = self.cur.execute(_APPROVAL, (name, version)).fetchone()
        if row is not None and row["verdict"] == verdict:
            return found.stage  # the same verdict again: said, not refused
        if row is not None and row["verdict"] == "rejected":
            msg = (f"{name} {version} was rejected by {row['actor']} ({row['reason']}): a rejected version never "
                   "ramps; the next retrain trains a new candidate")
            raise RolloutError(msg)
        if found.stage not in ("candidate", "shadow"):
            msg = (f"{name} {version} is at stage {found.stage}: only a candidate before its ramp can be "
                   f"{verdict}" + (f" (`pitstop rollback --model {name}` ends a ramp)" if found.stage == "canary"
                                   else ""))
            raise RolloutError(msg)
        return found.stage

    def by_deploy(self, actor: str, version: str) -> str:
        name = self.model.name
        active = self.cur.execute(_ACTIVE, (name,)).fetchone()
        if active is not None:
            msg = (f"{name} has a ramp of {active['challenger']} under way: `pitstop promote --model {name}` or "
                   f"`pitstop rollback --model {name}` ends it first")
            raise RolloutError(msg)
        found = self.registered(version)
        deployed = self.cur.execute("SELECT champion FROM deployments WHERE model_name = %s", (name,)).fetchone()
        if found.stage == "champion" and deployed is not None and deployed["champion"] == version:
            return f"{name} {version} is already the champion; nothing changed"
        if found.stage not in ("candidate", "shadow", "previous", "champion"):
            msg = f"{name} {version} is {found.stage}: only a candidate or a former champion can be deployed"
            raise RolloutError(msg)
        failure = self.load_failure(version)
        if failure is not None:
            msg = f"{name} {version} does not load, so it is not deployed: {failure}"
            raise RolloutError(msg)
        current = self.registry.champion(self.rcur, name)
        sentence = f"{actor} deployed {version} as champion of {name}" + (
            f" (in place of {current.version})" if current is not None and current.version != version else "")
        for stage in ("canary", "champion") if found.stage == "shadow" else ("champion",):
            if found.stage != "champion":
                self.registry.move(self.rcur, name, version, stage, reason=sentence)  # type: ignore[arg-type]
        self.retire_old_champions()
        self.deploy(champion=version, challenger=None, share=0.0, salt=f"{name}/{version}", state="steady",
                    reason=sentence)
        self.event(None, version, "promoted", 1.0, sentence, {"deployed_by": actor}, actor=actor)
        return sentence

    def by_clear(self, actor: str) -> str:
        latch = self.cur.execute("DELETE FROM rollback_latches WHERE model_name = %s RETURNING version, reason",
                                 (self.model.name,)).fetchone()
        if latch is None:
            return f"{self.model.name} has no latched rollback"
        sentence = f"{actor} cleared the latched rollback of {latch['version']} ({latch['reason']})"
        self.event(None, latch["version"], "latch_cleared", None, sentence, {}, actor=actor)
        return sentence

    # -- writes -----------------------------------------------------------------------------------------------

    def insert_rollout(self, rollout_id: str, shadow: Mapping[str, Any], champion: str, *, state: str, step: int,
                       share: float, test: Mapping[str, Any], sentence: str, ended: bool,
                       urgency: str | None = None) -> None:
        if not ended:  # its first period begins: under the counting lock (feedback/rollout/arms.py)
            self.cut()
        self.cur.execute(
            "INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
            " step_started_at, started_at, ended_at, test, sentence, urgency, period_starts, task, segments) VALUES"
            " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (rollout_id, self.model.name, champion, shadow["version"], rollout_id, state, step, share, self.now,
             self.now, self.now if ended else None, Jsonb(dict(test)), sentence, urgency, [self.now], self.model.task,
             list(self.model.segments)))

    def update(self, rollout: dict[str, Any], *, test: PromotionTest | None = None, **changes: Any) -> None:
        if test is not None:
            changes["test"] = test.to_json()
        if changes.get("state") in ENDED:  # its per-request rows go; the per-arm figures stay
            arms.cut(self.cur, self.model.name)
            arms.forget(self.cur, rollout["rollout_id"])
        sets = ", ".join(f"{k} = %({k})s" for k in changes)
        values = {k: Jsonb(v) if isinstance(v, dict) else v for k, v in changes.items()}
        self.cur.execute(f"UPDATE rollouts SET {sets}, updated_at = now() WHERE rollout_id = %(rollout_id)s",
                         {**values, "rollout_id": rollout["rollout_id"]})

    def deploy(self, *, champion: str, challenger: str | None, share: float, salt: str, state: str,
               reason: str) -> None:
        publish_deployment(self.cur, self.model.name, champion=champion, challenger=challenger, share=share,
                           salt=salt, state=state, reason=reason, at=self.now)

    def event(self, rollout_id: str | None, version: str | None, kind: str, share: float | None, sentence: str,
              evidence: Mapping[str, Any], actor: str = "controller") -> None:
        record_event(self.cur, rollout_id, self.model.name, version, kind, self.now, share, sentence, evidence, actor)

    def alert(self, kind: str, sentence: str, version: str) -> None:
        assert self.now is not None
        self.alerts.append(Alert.create(model_name=self.model.name, kind=kind, sentence=sentence, at=self.now,
                                        key=version))


# -- shared by the controller and the manual commands -------------------------------------------------------------

def watermark(cur: psycopg.Cursor[Any], model: str) -> datetime | None:
    """The model's event time: its newest prediction (an index probe per version, never a table scan: 293 ms a
    look at 1M rows when it scanned)."""
    return model_watermark(cur, model)


def publish_deployment(cur: psycopg.Cursor[Any], model: str, *, champion: str, challenger: str | None, share: float,
                       salt: str, state: str, reason: str, at: datetime | None) -> int:
    """Write the model's next deployment and its message (one message_version higher) to the outbox; returns
    the message version."""
    row = cur.execute(_DEPLOYMENT, (model,)).fetchone()  # a tuple or a dict, by the caller's cursor
    current = 0 if row is None else int(row["message_version"] if isinstance(row, dict) else row[0])
    doc = {"model_name": model, "message_version": current + 1, "champion": champion, "challenger": challenger,
           "challenger_share": share if challenger else 0.0, "salt": salt, "state": state, "decided_at": at,
           "reason": reason[:2000]}
    cur.execute(_UPSERT_DEPLOYMENT, doc)
    payload = {"schema_version": 1, **doc, "decided_at": at.isoformat() if at else None}
    enqueue(cur, f"deployment/{model}/{current + 1}", topics.DEPLOYMENTS, model, payload)
    return current + 1


def record_event(cur: psycopg.Cursor[Any], rollout_id: str | None, model: str, version: str | None, kind: str,
                 at: datetime | None, share: float | None, sentence: str, evidence: Mapping[str, Any],
                 actor: str = "controller") -> None:
    cur.execute(_EVENT, (rollout_id, model, version, kind, at, share, sentence, Jsonb(_jsonable(evidence)), actor))


def arm_stats(cur: psycopg.Cursor[Any], model: ModelConfig, versions: Sequence[str], since: datetime,
              until: datetime | None, *, covariate: tuple[str, str] | None = None) -> dict[str, ArmStats]:
    """Each version's requests, failures, latency and labelled errors (per user and per declared segment value)
    among the model's predictions served by it in (since, until], read from the raw rows: the planner's figures
    before a ramp starts, and the reference the figures a look reads (feedback/rollout/arms.py) are held equal to.

    ``covariate`` (challenger, champion): the users' errors of both arms, overall and per segment value, are
    CUPED-adjusted (:func:`~feedback.rollout.rules.cuped_units`) with the champion's error on each request as
    covariate: on the challenger's requests, the champion's shadow-scored prediction (feedback/rollout/shadow.py
    scores it during the ramp). Where fewer than ``CUPED_MIN_COVERAGE`` of the challenger's labelled requests have
    one, or the rule declines, the figures stay as they are."""
    stats = {v: ArmStats(version=v) for v in versions}
    for row in cur.execute(_TRAFFIC, (model.name, list(versions), since, until)).fetchall():
        v, requests, failures, latency_n, p95, p99 = _values(row)
        stats[v] = replace(stats[v], requests=requests, failures=failures, latency_n=latency_n,
                           latency_p95_ms=p95, latency_p99_ms=p99)
    champion = covariate[1] if covariate is not None else None
    rows = [_values(r) for r in cur.execute(_LABELLED, (champion, model.name, list(versions), since, until)).fetchall()]
    if not rows:
        return stats
    labels = [r[4] for r in rows]
    frame = pd.DataFrame({"version": [r[0] for r in rows], "unit": [r[1] for r in rows],
                          "error": row_errors(model, [r[3] for r in rows], labels)})
    for attribute in model.segments:
        frame[attribute] = [segment_value(str((r[2] or {}).get(attribute))) for r in rows]
    if covariate is not None:
        frame["covariate"] = np.where(frame["version"] == champion, frame["error"],
                                      row_errors(model, [r[5] for r in rows], labels))
    frame = frame[frame["error"].notna()]  # a labelled request counts where its error does (the kept figures too)
    for v, part in frame.groupby("version"):
        segments = {}
        for attribute in model.segments:
            for value, seg in part.groupby(attribute):
                segments[f"{attribute}={value}"] = unit_stats(seg)
        stats[str(v)] = replace(stats[str(v)], labelled=len(part), error=float(part["error"].mean()),
                                units=unit_stats(part), segments=segments)
    if covariate is not None:
        _adjust(stats, frame, model, *covariate)
    return stats


def _adjust(stats: dict[str, ArmStats], frame: pd.DataFrame, model: ModelConfig, challenger: str,
            champion: str) -> None:
    """Replace both arms' user figures, overall and per segment value, with their CUPED-adjusted ones where the
    rule applies (see :func:`arm_stats`)."""
    b, a = frame[frame["version"] == challenger], frame[frame["version"] == champion]
    if b.empty or a.empty or b["covariate"].notna().mean() < CUPED_MIN_COVERAGE:
        return
    b = b[b["covariate"].notna()]
    pairs = {"": (b, a)}
    for attribute in model.segments:
        for value, seg in b.groupby(attribute):
            pairs[f"{attribute}={value}"] = (seg, a[a[attribute] == value])
    adjusted = {name: pair for name, (pb, pa) in pairs.items()
                if len(pa) and (pair := cuped_units(pb, pa)) is not None}
    with_adjusted(stats, challenger, champion, adjusted)


def shadow_ratio(per_user: pd.DataFrame, rows: int) -> float | None:
    """The challenger's per-user error over the champion's on the labelled shadow rows (None: no rows)."""
    if not rows:
        return None
    served, shadow_error = float(per_user["served"].mean()), float(per_user["shadow"].mean())
    if not served > 0:  # a champion without an error on these requests: nothing to gain
        return math.inf if shadow_error > 0 else 1.0
    return shadow_error / served


def adjusted_variance(per_user: pd.DataFrame) -> float | None:
    """The variance of the challenger's per-user errors once adjusted with the champion's on the same requests
    (``shadow - theta served``, theta the regression slope): what the ramp's CUPED-adjusted test will see, on the
    shadow's rows (None: fewer than 20 users, or no spread in the champion's errors)."""
    both = per_user[["served", "shadow"]].dropna()
    if len(both) < 20 or not both["served"].var(ddof=1) > 0:
        return None
    theta = both["served"].cov(both["shadow"]) / both["served"].var(ddof=1)
    return float((both["shadow"] - theta * both["served"]).var(ddof=1))


def _gain_p(per_user: pd.DataFrame) -> float | None:
    return paired_gain(per_user["shadow"].to_numpy(), per_user["served"].to_numpy(), per_user.index)[0]


def unit_stats(rows: pd.DataFrame) -> UnitStats:
    """Mean error per user, then the count, mean and (unbiased) variance of those means."""
    per_user = rows.groupby("unit")["error"].mean().to_numpy()
    n = len(per_user)
    return UnitStats(n=n, mean=float(per_user.mean()) if n else 0.0,
                     var=float(per_user.var(ddof=1)) if n > 1 else 0.0)


#: a regression error past this is none (NaN), as the ramp's kept figures count it (migration 019's ``ramp_error``):
#: their sums hold squares of the errors
MAX_ERROR = 1e150


def row_errors(model: ModelConfig, predictions: Sequence[Any], labels: Sequence[Any]) -> np.ndarray:
    """Per request: misclassified (0/1) for classification, absolute error for regression; NaN where the
    prediction is missing or the error is past ``MAX_ERROR``."""
    if model.task == "classification":
        return np.array([math.nan if p is None else float(p != y) for p, y in zip(predictions, labels, strict=True)])
    errors = np.array([math.nan if p is None or y is None else abs(float(p) - float(y))
                       for p, y in zip(predictions, labels, strict=True)])
    return np.where(errors <= MAX_ERROR, errors, math.nan)


def _values(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)


def _arm_from_json(doc: Mapping[str, Any]) -> ArmStats:
    return ArmStats(version=doc["version"], requests=doc["requests"], failures=doc["failures"],
                    latency_n=doc["latency_n"], latency_p95_ms=doc["latency_p95_ms"],
                    latency_p99_ms=doc["latency_p99_ms"], labelled=doc["labelled"], error=doc["error"],
                    units=UnitStats(n=doc.get("units", 0), mean=doc.get("unit_mean", 0.0), var=doc.get("unit_var", 0.0))
                    if "unit_var" in doc else UnitStats())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _figures(s: ArmStats) -> str:
    error = "no labels" if s.error is None else f"error {s.error:.4g} on {s.labelled:,} labelled"
    return f"{s.requests:,} requests, {s.failures:,} failed, {error}"


def _pct(share: float) -> str:
    return f"{100 * share:g}%"


def _days(seconds: float) -> str:
    return f"{seconds / 86_400:g} d" if seconds >= 86_400 else f"{seconds / 3_600:g} h"
