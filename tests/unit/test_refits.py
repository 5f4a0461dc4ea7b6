"""After a drift or performance retrain: the refit ladder as post-change labels accumulate, and the check that a
version trained since the change recovered the level before it (a refit, then an alert after K tries)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from feedback.config import ModelConfig, parse_config
from feedback.monitoring.evaluate import Evaluation
from feedback.triggers.engine import Decider, Decision, alerts_for, live_evaluations
from feedback.triggers.replay import MemoryLedger
from feedback.triggers.rules import History, suppression

T0 = datetime(2026, 3, 2, tzinfo=UTC)
CHANGE = T0 + timedelta(hours=10)
CONFIG = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\nwindow = "1h"\n')
CHURN = CONFIG.models["churn"]


class Ledger(MemoryLedger):
    """The memory ledger with the labels since a time set by the test (the database ledger counts windows)."""

    def __init__(self) -> None:
        super().__init__(None, max_training_s={"churn": 3_600})
        self.labels = 0  # since CHANGE
        self.asked: list[datetime | None] = []

    def labels_since(self, model: ModelConfig, version: str | None, since: datetime | None, until: datetime) -> int:
        assert version is None  # every version's labels since the episode's change point
        self.asked.append(since)
        return self.labels if since == CHANGE else 0


def episode(ledger: Ledger, *, labels: int = 1_000, baseline: float = 0.95) -> Decision:
    """A drift retrain of v1 fired at ``labels`` labels since CHANGE, v1's baseline ``baseline``."""
    at = CHANGE + timedelta(hours=2)
    d = Decision(decision_id="churn/drift/v1/c", model_name="churn", model_version="v1", kind="drift",
                 urgency="elevated", status="fired", sentence="drift", decided_at=at, fired_at=at,
                 change_point=CHANGE, labels_since_change=labels, evidence={"baseline": baseline})
    ledger.save(d)
    return d


def look(decider: Decider, ledger: Ledger, hours: float, *, version: str = "v1", baseline: float | None = None,
         model: ModelConfig = CHURN) -> list[Decision]:
    """One look of the engine at event time CHANGE + ``hours`` with the live version's evaluation (no windows of
    its own to judge, so only the follow-up can decide) and its outcome recorded as a candidate."""
    now = CHANGE + timedelta(hours=hours)
    evaluation = Evaluation(model_name="churn", model_version=version, evaluated_at=now, baseline=baseline,
                            observed=baseline)
    found = decider.decide(ledger, model, evaluation, wall_now=now)
    return found


def test_the_ladder_refits_at_4x_and_16x_the_minimum_once_each() -> None:
    """Refits fire when the labels since the change reach 4,000 and 16,000 (min 1,000), each once, from the
    episode's change point; cooldown (6 h) and the daily cap (2) do not hold a rung back."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger)
    ledger.labels = 3_999
    assert look(decider, ledger, 3) == []
    ledger.labels = 4_000
    [rung] = look(decider, ledger, 3.5)
    assert (rung.kind, rung.status, rung.change_point, rung.labels_since_change) == ("refit", "fired", CHANGE, 4_000)
    assert rung.decision_id == "churn/refit/2026-03-02T10:00:00Z/x4"
    assert rung.sentence == ("refit ladder: 4,000 labels since the change (2026-03-02 10:00 UTC) >= 4 x 1,000; the "
                             "last training of this episode had 1,000")
    assert [e["trigger_id"] for e in ledger.events] == [rung.decision_id]
    assert look(decider, ledger, 8) == []  # the same rung: final, no second event
    ledger.labels = 16_000
    [top] = look(decider, ledger, 30)
    assert top.decision_id.endswith("/x16") and top.evidence["trained_on"] == 4_000
    ledger.labels = 60_000
    assert look(decider, ledger, 60) == []  # past the last rung
    assert len(ledger.events) == 2


def test_labels_past_two_rungs_fire_the_higher_one_only() -> None:
    """A worker that was down while labels passed 4x and 16x refits once, at 16x; 4x never fires later."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger)
    ledger.labels = 17_000
    [rung] = look(decider, ledger, 40)
    assert rung.decision_id.endswith("/x16")
    assert look(decider, ledger, 41) == []


def test_the_first_rung_refits_a_critical_retrain_fired_before_the_minimum() -> None:
    """A critical drop that fired at once (critical_waits = false) on 250 labels is refitted at 1x."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger, labels=250)
    ledger.labels = 1_000
    [rung] = look(decider, ledger, 4)
    assert rung.decision_id.endswith("/x1")


def test_a_newer_episode_takes_over_the_ladder() -> None:
    """A later change (a new drift retrain) starts its own ladder; the old one's rungs no longer fire."""
    ledger, decider = Ledger(), Decider(CONFIG)
    old = episode(ledger)
    later = CHANGE + timedelta(hours=5)
    ledger.save(replace(old, decision_id="churn/drift/v2/c2", model_version="v2", change_point=later,
                        decided_at=later, fired_at=later))
    ledger.labels = 4_000  # since the old change; none yet since the later one
    assert look(decider, ledger, 6) == []
    assert ledger.asked == [later]


def test_an_unrecovered_version_is_refitted_then_alerted_after_recovery_tries() -> None:
    """A version trained since the change whose baseline stays 5% or more below the level before it (0.95) is
    refitted; after recovery_tries (2) refits, the next one is held back with a "not recovered" alert."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger, baseline=0.95)
    ledger.labels = 2_000
    assert look(decider, ledger, 5, version="v2", baseline=0.91) == []  # 4.2% below: recovered enough
    assert look(decider, ledger, 5, version="v2", baseline=None) == []  # no baseline yet: nothing to judge
    [first] = look(decider, ledger, 6, version="v2", baseline=0.85)
    assert (first.kind, first.status, first.urgency) == ("refit", "fired", "elevated")
    assert first.sentence == ("not recovered: v2's accuracy baseline 0.85 is 10.5% worse than 0.95 before the "
                              "change (2026-03-02 10:00 UTC)")
    [second] = look(decider, ledger, 9, version="v3", baseline=0.86)
    assert second.status == "fired" and second.decision_id.endswith("unrecovered-v3")
    [held] = look(decider, ledger, 12, version="v4", baseline=0.86)
    assert (held.status, held.suppressed_by) == ("suppressed", "not recovered after 2 refit(s) (recovery_tries 2): "
                                                               "a person should look at the model and its data")
    [alert] = alerts_for(held)
    assert alert.kind == "not_recovered" and alert.sentence.startswith("not recovered: v4's accuracy baseline 0.86")
    assert len(ledger.events) == 2


def test_the_episode_version_and_far_later_versions_are_not_judged_against_the_old_level() -> None:
    """The version live at the change is judged by its windows, not here; and past twice the ladder's last rung
    of labels (32,000) the level before the change is history."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger, labels=16_000)
    ledger.labels = 16_000
    assert look(decider, ledger, 5, version="v1", baseline=0.5) == []
    ledger.labels = 32_001
    assert look(decider, ledger, 90, version="v9", baseline=0.5) == []


def test_regression_levels_follow_the_metric_direction() -> None:
    """For MAE a higher baseline is worse: 4.6 against 4.0 before the change (15% worse) refits."""
    config = parse_config('[models.churn]\ntask = "regression"\nmetric = "mae"\nwindow = "1h"\n')
    ledger, decider = Ledger(), Decider(config)
    episode(ledger, baseline=4.0)
    ledger.labels = 2_000
    assert look(decider, ledger, 5, version="v2", baseline=4.1, model=config.models["churn"]) == []
    [refit] = look(decider, ledger, 6, version="v2", baseline=4.6, model=config.models["churn"])
    assert "15.0% worse than 4 before the change" in refit.sentence


def test_a_refit_passes_cooldown_and_cap_but_not_the_breaker_or_a_running_training() -> None:
    t = CHURN.triggers
    assert suppression("refit", T0, History(last_fired_at=T0 - timedelta(minutes=5), fired_last_day=9), t) is None
    assert suppression("refit", T0, History(rejected_in_row=3), t).startswith("circuit breaker")
    assert suppression("refit", T0, History(running="churn/drift/v1/c"), t).startswith("a training")


def test_a_newer_change_still_pending_ends_the_old_episodes_ladder() -> None:
    """Once a later change is seen (its decision pending), the old episode's rungs and recovery checks stop:
    they would train across both changes."""
    ledger, decider = Ledger(), Decider(CONFIG)
    old = episode(ledger)
    later = CHANGE + timedelta(hours=20)
    ledger.save(replace(old, decision_id="churn/performance/v2/c2", kind="performance", model_version="v2",
                        status="pending", change_point=later, decided_at=later, fired_at=None))
    ledger.labels = 16_000
    assert look(decider, ledger, 21) == []


def test_the_pool_look_fires_once_when_a_pending_change_has_pool_labels() -> None:
    """A pending drift or performance decision with 200 or more labels since its change makes one "pool"
    decision (score former champions on them, no training); it starts no cooldown and is no running training,
    so the retrain itself still fires at 1,000 labels."""
    from feedback.triggers.engine import _pool_look

    at = CHANGE + timedelta(hours=1)
    pending = Decision(decision_id="churn/drift/v1/c", model_name="churn", model_version="v1", kind="drift",
                       urgency="elevated", status="pending", sentence="drift", decided_at=at, change_point=CHANGE,
                       labels_since_change=199)
    assert _pool_look(CHURN, pending, at) is None  # 199 < pool_labels 200
    look_ = _pool_look(CHURN, replace(pending, labels_since_change=250), at)
    assert look_ is not None and (look_.kind, look_.status, look_.change_point) == ("pool", "fired", CHANGE)
    critical = _pool_look(CHURN, replace(pending, labels_since_change=250, urgency="critical"), at)
    assert critical is not None and critical.urgency == "routine" and alerts_for(critical) == []  # paged once
    assert look_.decision_id == "churn/pool/v1/2026-03-02T10:00:00Z"
    assert look_.sentence == ("model pool: 250 labels since the change (2026-03-02 10:00 UTC), before the retrain's "
                              "1,000: a former champion that beats the champion on them is proposed now")
    assert _pool_look(CHURN, replace(pending, status="fired", labels_since_change=1_000), at) is None
    off = replace(CHURN, triggers=replace(CHURN.triggers, pool_labels=0))
    assert _pool_look(off, replace(pending, labels_since_change=250), at) is None
    ledger = Ledger()
    ledger.save(replace(look_, fired_at=at))
    history = ledger.history("churn", at + timedelta(minutes=5))
    assert (history.last_fired_at, history.fired_last_day, history.running) == (None, 0, None)


def test_the_live_version_is_the_newest_and_between_equals_the_deployed_champion() -> None:
    """A 5% canary serves the same windows as its champion: the champion's evaluation decides, not the canary's
    (whose name sorts later); a version with newer traffic still wins (after a promotion, or with no deployment)."""
    now = datetime(2026, 3, 2, tzinfo=UTC)
    champion, canary = (Evaluation(model_name="churn", model_version=v, evaluated_at=now) for v in ("v1", "v2"))
    assert live_evaluations([champion, canary])["churn"].model_version == "v2"
    assert live_evaluations([champion, canary], {"churn": "v1"})["churn"].model_version == "v1"
    later = Evaluation(model_name="churn", model_version="v2", evaluated_at=now + timedelta(hours=6))
    assert live_evaluations([champion, later], {"churn": "v1"})["churn"].model_version == "v2"



def test_a_tested_level_alone_never_decides_recovery() -> None:
    """A new version's baseline can be its tested level before any window of its own is judged; whether it
    recovered the level before the change is judged on its own windows only (``observed``): a refit of an
    unrecovered version fired 250 samples after the version started, with a few hundred labels more, burnt the
    episode's recovery tries and left S6's second transition on a worse model (bench/loop_quality.py)."""
    ledger, decider = Ledger(), Decider(CONFIG)
    episode(ledger, baseline=0.95)
    ledger.labels = 2_000
    now = CHANGE + timedelta(hours=6)
    tested_only = Evaluation(model_name="churn", model_version="v2", evaluated_at=now, baseline=0.85, observed=None)
    assert decider.decide(ledger, CHURN, tested_only, wall_now=now) == []
    seen = replace(tested_only, observed=0.85)
    assert [d.evidence.get("unrecovered") for d in decider.decide(ledger, CHURN, seen, wall_now=now)] == ["v2"]
