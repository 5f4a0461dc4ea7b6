"""The scheduled refresh: a period after the last training a candidate of the current concept is trained, and it
replaces the champion only when significantly better; it yields to a pending change, starts no cooldown and counts
toward no cap."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from feedback.config import ModelConfig, parse_config
from feedback.monitoring.evaluate import Evaluation
from feedback.triggers.engine import Decider, Decision
from feedback.triggers.replay import MemoryLedger
from feedback.triggers.rules import suppression

T0 = datetime(2026, 3, 2, tzinfo=UTC)
CONFIG = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\nwindow = "1h"\n'
                      '[models.churn.triggers]\nrefit_ladder = [1]\n')
CHURN = CONFIG.models["churn"]


class Ledger(MemoryLedger):
    """The memory ledger with 250 labels an hour since any time (the database ledger counts windows)."""

    def __init__(self) -> None:
        super().__init__(None, max_training_s={"churn": 3_600})
        self.first_window = T0
        self.labelled = True

    def labels_since(self, model: ModelConfig, version: str | None, since: datetime | None, until: datetime) -> int:
        if not self.labelled:
            return 0
        return int((until - (since or T0)).total_seconds() / 3600 * 250)


def look(decider: Decider, ledger: Ledger, hours: float) -> list[Decision]:
    now = T0 + timedelta(hours=hours)
    return decider.decide(ledger, CHURN, Evaluation(model_name="churn", model_version="v1", evaluated_at=now),
                          wall_now=now)


def fired(ledger: Ledger, kind: str, hours: float, *, change: float | None = None, status: str = "fired") -> Decision:
    at = T0 + timedelta(hours=hours)
    d = Decision(decision_id=f"churn/{kind}/{hours}", model_name="churn", model_version="v1", kind=kind,
                 urgency="elevated", status=status, sentence=kind, decided_at=at,
                 fired_at=at if status == "fired" else None,
                 change_point=None if change is None else T0 + timedelta(hours=change),
                 labels_since_change=None if change is None else 100_000)  # past the ladder's last rung
    ledger.save(d)
    return d


def test_a_refresh_fires_a_day_after_the_first_window_then_a_day_after_each_training() -> None:
    """With no training yet the clock starts at the first labelled window; each refresh (and any other training)
    restarts it; the decision id is stable, so repeated looks publish one event."""
    ledger, decider = Ledger(), Decider(CONFIG)
    assert look(decider, ledger, 23.9) == []
    [first] = look(decider, ledger, 24)
    assert (first.kind, first.status, first.urgency, first.change_point) == ("refresh", "fired", "routine", None)
    assert first.decision_id == "churn/refresh/2026-03-02T00:00:00Z"
    assert first.sentence == ("refresh: 24.0 h since the last training (2026-03-02 00:00 UTC) >= 24.0 h, 6,000 new "
                              "labels: a candidate on recent rows replaces the champion only if significantly better "
                              "on the newest labels")
    assert look(decider, ledger, 30) == []  # a day after the refresh, not before
    fired(ledger, "manual", 40)
    assert look(decider, ledger, 60) == []  # the manual training at 40 h restarted the clock
    [second] = look(decider, ledger, 64)
    assert second.decision_id == "churn/refresh/2026-03-03T16:00:00Z"
    assert [e["kind"] for e in ledger.events] == ["refresh", "refresh"]


def test_a_refresh_trains_on_the_episode_and_yields_to_a_pending_change() -> None:
    """After a drift retrain, the refresh carries the episode's change point (it trains on the rows since); while a
    newer change waits for its labels, no refresh fires (that change's own retrain is coming)."""
    ledger, decider = Ledger(), Decider(CONFIG)
    fired(ledger, "drift", 10, change=8)
    [refresh] = look(decider, ledger, 34)
    assert refresh.change_point == T0 + timedelta(hours=8)
    assert "a candidate on the rows since the change (2026-03-02 08:00 UTC)" in refresh.sentence
    fired(ledger, "performance", 50, change=49, status="pending")
    assert look(decider, ledger, 59) == []


def test_a_refresh_starts_no_cooldown_and_counts_toward_no_cap() -> None:
    """A drift retrain an hour after a refresh fires (cooldown 6 h, daily cap 2 are for detections); a refresh is
    held by a running training and a tripped breaker like any automatic retrain."""
    ledger = Ledger()
    fired(ledger, "refresh", 24)
    fired(ledger, "refresh", 24.5)
    history = ledger.history("churn", T0 + timedelta(hours=25))
    assert (history.last_fired_at, history.fired_last_day) == (None, 0)
    assert history.last_trained_at == T0 + timedelta(hours=24.5)
    assert history.running == "churn/refresh/24.5"  # a refresh is a training: the next retrain waits for it
    assert suppression("drift", T0 + timedelta(hours=25.5), replace(history, running=None), CHURN.triggers) is None
    assert suppression("refresh", T0, replace(history, running=None, rejected_in_row=3), CHURN.triggers) \
        .startswith("circuit breaker")


def test_no_refresh_when_off_or_without_new_labels() -> None:
    """refresh = false turns it off; a model with no new labels since its last training is not refreshed."""
    off = parse_config('[models.churn]\ntask = "classification"\npositive_class = 1\n[models.churn.triggers]\n'
                       "refresh = false\n")
    ledger = Ledger()
    assert Decider(off).decide(ledger, off.models["churn"], Evaluation(
        model_name="churn", model_version="v1", evaluated_at=T0 + timedelta(days=9)), wall_now=T0) == []
    ledger.labelled = False
    assert look(Decider(CONFIG), ledger, 48) == []
