"""`pitstop demo`: runs the simulated world (world.py) against a stack, serves it through the serving router
(server.py), plays the scenario's two acts (acts.py) and shows it all live (console.py).

Act one: the world drifts, a retrain fires, its candidate goes through shadow and ramp and becomes champion. Act
two: a deliberately bad candidate is rolled back by the controller. ``--fast`` stops once both acts have played
(or at :data:`FAST_HORIZON` of event time, saying where the scenario stood) and prints the run's timeline from the
database; without it the demo runs on until Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from types import FrameType
from typing import Any

import psycopg
from kafka import KafkaProducer

from feedback.alerts import LogAlertSink
from feedback.rollout.controller import Controller
from feedback.store import FeedbackStore
from pitstop import stack
from pitstop.client import PitstopProducer
from pitstop.demo.acts import Acts
from pitstop.demo.console import (
    _ACCURACY,
    _ACCURACY_BY_PHASE,
    _COLUMNS,
    _COVERAGE,
    _DEAD_LETTER_REASONS,
    _DECISIONS,
    _GATES,
    _MONITOR_DRIFT,
    _MONITOR_PERFORMANCE,
    _RAMP,
    _RETRAINS,
    _ROLLOUT_EVENTS,
    _TRAINING,
    ACCURACY_WINDOW,
    _clip,
    _coverage_lines,
    _hours,
    _say,
    _span,
    _table_row,
    console_width,
    deployment_sentence,
    read_counts,
    rollout_step,
    serving_cell,
    table_columns,
    timeline,
    timeline_lines,
    version_tag,
)
from pitstop.demo.server import RoutedServer, register_first_champion, start_serving
from pitstop.demo.world import (
    BAD_MESSAGE_SHARE,
    CORRECTED_OUTCOME_SHARE,
    DRIFT_RAMP_S,
    DRIFT_SHIFT_SD,
    DRIFT_STARTS_AFTER_S,
    DRIFTING_FEATURES,
    DUPLICATE_OUTCOME_SHARE,
    EARLY_OUTCOME_SHARE,
    LABEL_DELAY_MEDIAN_S,
    MODEL_NAME,
    NUMERIC_FEATURES,
    drift_fraction,
    event_clock,
    feed_for_run,
)
from pitstop.errors import ConfigError, StackError
from pitstop.outbox_relay import OutboxPublisher
from pitstop.settings import ENV_FILE_NAME, Settings
from schemas import EventKind

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# how the demo runs

PUBLISH_BATCH_SIZE = 200
TICK_S = 0.5
DISPLAY_EVERY_S = 1.0
HEADER_EVERY_LINES = 20
DRAIN_TIMEOUT_S = 15.0
MONITOR_EVERY_LINES = 5
#: the monitoring configuration of the demo's model (used unless PITSTOP_CONFIG names another)
DEMO_CONFIG = "demo.toml"
#: ``--fast`` gives up when the scenario has not played out by this much event time after the clock's start (20 days:
#: act one takes about 8, act two a few hours more; the clock catches up with the wall clock after 30)
FAST_HORIZON = timedelta(days=20)


class _StopRequest:
    """Counts SIGINT/SIGTERM; the loop checks it, so every stop goes through the clean-up."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1  # no printing here: the handler may run in the middle of a print

    def __bool__(self) -> bool:
        return self.count > 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


_Handler = Callable[[int, FrameType | None], Any] | int | None


#: the signals that stop the demo through its clean-up: Ctrl-C, `kill`, and the terminal closing
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _set_handlers(handler: _Handler) -> dict[int, _Handler]:
    """Route SIGINT, SIGTERM and SIGHUP to ``handler``; returns the previous handlers (none off the
    main thread, where Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}


def _restore_handlers(previous: dict[int, _Handler]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, signal.SIG_DFL if handler is None else handler)


class _LiveDemo:
    """Publishes what the feed says against a running stack, serves it through the serving router, plays the acts,
    and shows the store filling up."""

    def __init__(self, settings: Settings, bootstrap: str, database_url: str, *, rate: float,
                 speed: float) -> None:
        self.settings = settings
        self.database_url = database_url
        self.rate = rate
        self.speed = speed
        self.wall_start = datetime.now(UTC)
        #: the wall instant the loop's clock started (event time ``clock_start``); set by :meth:`start_clock`
        self.loop_started_at = self.wall_start
        # Ids and a model version of its own: a reused store holds the earlier runs, at the same event times.
        self.feed = feed_for_run(self.wall_start)
        self.id_prefix = self.feed.id_prefix
        #: the run's own version: the built-in model, registered as the first champion
        self.first_version = self.feed.model_version
        #: every version the console has named, in order (v1, v2, ...): those that served, the candidates
        self.names = [self.first_version]
        self.drift_starts_at = self.clock_start + timedelta(seconds=DRIFT_STARTS_AFTER_S)
        self.drift_full_at = self.drift_starts_at + timedelta(seconds=DRIFT_RAMP_S)
        self.sent = dict.fromkeys(
            ("prediction", "late_prediction", "outcome", "duplicate", "correction", "malformed"), 0
        )
        self.caught_up = False
        self.lines = 0
        # the table and the timeline fit the terminal (whole when the output is not one), the timeline at most 118
        # wide
        self.width = console_width()
        self.columns = table_columns(self.width)
        self.recent: deque[tuple[float, int]] = deque(maxlen=4)
        self.decisions_seen: set[tuple[str, str]] = set()
        self.rollout_event_seen = 0
        self.deployment_seen = 0
        self.failed_loads_seen = 0
        self.acts: Acts | None = None
        self._acts_failing = False
        self._closers: list[Callable[[], None]] = []
        try:
            self.store = FeedbackStore(database_url, settings.db_schema, max_size=3)
            self.store.open()
            self._closers.append(self.store.close)
            self.baseline = read_counts(self.store)
            self.outbox = OutboxPublisher(bootstrap, settings.topics.prefix, client_id="pitstop-demo-outbox")
            self._closers.insert(0, self.outbox.close)
            self.first_sentence = register_first_champion(self.store, self.first_version, at=self.clock_start)
            self.publish_outbox()
            self.serving = start_serving(self.store, bootstrap, settings.topics.deployments,
                                         champion=self.first_version)
            self._closers.insert(0, self.serving.close)
            self.feed.serve(RoutedServer(self.serving))
            model = settings.monitoring.model(MODEL_NAME)
            if model is not None and model.retrain.shadowed:
                controller = Controller(self.store, settings.monitoring, LogAlertSink())
                self.acts = Acts(self.store, controller, wall_start=self.wall_start,
                                 drill_version=f"bad-{self.wall_start:%Y%m%dT%H%M%S}", publish=self.publish_outbox,
                                 say=_say, tag=self.tag)
            self.producer = PitstopProducer(bootstrap, topics=settings.topics,
                                            batch_size=PUBLISH_BATCH_SIZE, client_id="pitstop-demo")
            self._closers.insert(0, self.producer.close)
            # Malformed messages go around the client, which only ever sends valid events.
            self.raw_producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                              client_id="pitstop-demo-malformed")
            self._closers.insert(0, lambda: self.raw_producer.close(timeout=10))
        except BaseException:
            self.close()
            raise

    @property
    def clock_start(self) -> datetime:
        return self.feed.clock_start

    @property
    def event_now(self) -> datetime:
        return self.feed.event_now

    @property
    def versions(self) -> list[str]:
        """Every version that has served this run's predictions, the built-in model's first."""
        return self.feed.versions

    def tag(self, version: str) -> str:
        """The short name of a version: v1 for the run's own, then v2, v3 ... in the order the console met them."""
        for seen in (*self.versions, version):
            if seen not in self.names:
                self.names.append(seen)
        return version_tag(self.names, version)

    def event_time_of(self, wall: datetime) -> datetime:
        """The feed's event time at a wall instant of the run."""
        return event_clock(self.clock_start, (wall - self.loop_started_at).total_seconds(), self.speed, wall)

    @property
    def predictions_sent(self) -> int:
        return self.sent["prediction"] + self.sent["late_prediction"]

    @property
    def outcomes_sent(self) -> int:
        return self.sent["outcome"] + self.sent["duplicate"] + self.sent["correction"]

    def publish_outbox(self) -> None:
        """Publish the outbox now (the demo's deployment and drill messages); the stack's relay would within seconds."""
        try:
            self.outbox.publish(self.store)
        except Exception as exc:  # the outbox keeps the rows: the stack's relay publishes them later
            log.warning("outbox not published yet: %s", exc)

    # -- publishing ---------------------------------------------------------------------------

    def start_clock(self) -> None:
        self.loop_started_at = datetime.now(UTC)

    def tick(self, elapsed_s: float) -> None:
        """Move the clock to ``elapsed_s`` wall seconds in, publish what is due, and flush."""
        unbounded = self.clock_start + timedelta(seconds=elapsed_s * self.speed)
        event_now = event_clock(self.clock_start, elapsed_s, self.speed, datetime.now(UTC))
        if event_now < unbounded and not self.caught_up:
            self.caught_up = True
            _say(f"note      event time has caught up with the wall clock "
                 f"({event_now:%Y-%m-%d %H:%M} UTC); from now on it runs at 1x")
        step = self.feed.advance(event_now, int(self.rate * elapsed_s) - self.feed.generated)
        for delivery in step.deliveries:
            self.producer.publish(delivery.event)
            self.sent[delivery.kind] += 1
        topics = self.settings.topics
        for bad in step.malformed:
            topic = topics.predictions if bad.kind is EventKind.PREDICTION else topics.outcomes
            self.raw_producer.send(topic, key=bad.key, value=bad.value)
            self.sent["malformed"] += 1
        self.flush()

    def flush(self) -> None:
        self.producer.flush()
        self.raw_producer.flush(timeout=30)

    # -- the acts -----------------------------------------------------------------------------

    def play(self) -> None:
        """Move the scenario on (a store that does not answer is retried at the next call)."""
        if self.acts is None or self.acts.done:
            return
        try:
            self.acts.poll()
        except psycopg.Error as exc:
            if not self._acts_failing:
                _say(f"acts      the feedback store did not answer: {str(exc).strip().splitlines()[0]}")
            self._acts_failing = True
            return
        self._acts_failing = False

    @property
    def finished(self) -> bool:
        """Both acts have played (or the scenario cannot play: no rollout configured)."""
        return self.acts is None or self.acts.done

    # -- display ------------------------------------------------------------------------------

    def show_intro(self) -> None:
        window = _hours(ACCURACY_WINDOW)
        lines = (
            f"model     {MODEL_NAME} {self.first_version}: {len(NUMERIC_FEATURES)} numeric and 2 "
            f"categorical features, {self.rate:g} predictions per second",
            f"serving   {self.first_sentence};",
            "          every request is routed on its customer's id by the deployments topic's newest message",
            "          (pitstop/serving.py), served by the version it names and tagged with it",
            f"clock     event time from {self.clock_start:%Y-%m-%d %H:%M} UTC, "
            f"{_span(self.speed)} of it per second",
            f"drift     {', '.join(DRIFTING_FEATURES)} move +{DRIFT_SHIFT_SD:g} sd from "
            f"{self.drift_starts_at:%Y-%m-%d %H:%M} (fully by {self.drift_full_at:%H:%M});",
            "          what drives churn changes too, so accuracy falls once the late labels land",
            f"outcomes  {LABEL_DELAY_MEDIAN_S / 3600:g} h after their prediction (median), a tail "
            f"of days; {EARLY_OUTCOME_SHARE:.0%} arrive before it,",
            f"          {DUPLICATE_OUTCOME_SHARE:.0%} twice, {CORRECTED_OUTCOME_SHARE:.0%} "
            f"corrected later; {BAD_MESSAGE_SHARE:.1%} of all messages are malformed (dead "
            "letters)",
            "act one   the drift fires a retrain; its candidate is shadowed, ramped to 100% (from 25% when the",
            "          champion is confirmed degraded and the shadow showed the gain, 5% otherwise), held, and made",
            "          champion by the rollout worker (`rollout` lines say each step and why)",
            "act two   then the demo deploys a deliberately bad candidate (it fails every request) at 5%;",
            "          the controller must roll it back by itself",
            "not here  slower drift (README, 'Every kind of drift'): a slow fall no window shows alone is caught on",
            "          pooled windows; drift everywhere by a daily refresh that replaces the champion only when",
            "          significantly better; a concept that returns brings a former champion back without training,",
            "          and a new version is judged against the level it was tested at, never its first windows alone",
            "columns   sent p/o: predictions/outcomes published   stored: predictions in the "
            "store",
            "          joined: stored predictions with a label     cover: joined / stored",
            "          fixed: labels replaced by a correction      early: outcomes whose "
            "prediction is still to come",
            f"          dead: dead letters     acc{window}: accuracy of the labelled predictions "
            f"of the last {window} (event time)",
            f"          serving: the deployment the router applied: the champion (v1 = {self.first_version}),",
            "          and during a ramp the challenger and its share (v1+v2 5%); v2, v3 ... in order of appearance",
            "          in/s: rows stored per second (wall time)",
            "          Ctrl-C stops",
        )
        if self.acts is None:
            lines = (*lines, f"note      {MODEL_NAME} is not configured with promotion = \"shadow\" here: the acts "
                             "do not play (start the stack with the demo's configuration)")
        for line in lines:
            _say(line)

    def display(self, elapsed_s: float) -> None:
        """One line of live figures, all of this run (the store may hold earlier runs too)."""
        try:
            counts = read_counts(self.store) - self.baseline
            accuracy = self._recent_accuracy()
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            _say(f"{elapsed_s:>4.0f}s  the feedback store did not answer: {first_line}")
            return
        # The workers write in batches: a rate over a few seconds reads steadier.
        self.recent.append((elapsed_s, counts.rows))
        then, rows_then = self.recent[0]
        rate = (counts.rows - rows_then) / (elapsed_s - then) if elapsed_s > then else 0.0
        if self.lines % HEADER_EVERY_LINES == 0:
            _say(_table_row([title for title, _ in _COLUMNS], self.columns))
        self.lines += 1
        drift = float(drift_fraction((self.event_now - self.clock_start).total_seconds()))
        _say(_table_row([
            f"{elapsed_s:.0f}s",
            f"{self.event_now:%m-%d %Hh}",
            f"{drift:.0%}",
            serving_cell(self.serving.deployment(MODEL_NAME), self.tag),
            f"{self.predictions_sent:,}",
            f"{self.outcomes_sent:,}",
            f"{counts.predictions:,}",
            f"{counts.joined:,}",
            f"{counts.joined / counts.predictions:.1%}" if counts.predictions else "-",
            f"{counts.corrected:,}",
            f"{counts.waiting:,}",
            f"{counts.dead_letters:,}",
            "-" if accuracy is None else f"{accuracy:.1%}",
            f"{rate:,.0f}",
        ], self.columns))
        if self.lines % MONITOR_EVERY_LINES == 0:
            self._monitor_line()
            self._ramp_line()
        self._deployment_lines()
        self._decision_lines()
        self._rollout_lines()

    def _deployment_lines(self) -> None:
        """The deployment the router applied, when it changes, and any version it could not load."""
        if self.serving.failed_loads > self.failed_loads_seen:
            for failure in list(self.serving.failures)[self.failed_loads_seen - self.serving.failed_loads:]:
                _say(f"serving   {failure.role} {self.tag(failure.version)} of message {failure.message_version} did "
                     f"not load: {failure.reason}")
            self.failed_loads_seen = self.serving.failed_loads
        deployment = self.serving.deployment(MODEL_NAME)
        if deployment is None or deployment.message_version == self.deployment_seen:
            return
        self.deployment_seen = deployment.message_version
        _say(f"deploy    {deployment_sentence(deployment, self.tag)} (router applied it at "
             f"{self.event_now:%m-%d %H:%M})")

    def _rollout_lines(self) -> None:
        """Each rollout event of the run as it is recorded: shadow verdicts, ramp steps, promotion, rollback."""
        for event_id, kind, version, share, sentence, actor in self.store.rows(
                _ROLLOUT_EVENTS, (MODEL_NAME, self.wall_start, self.rollout_event_seen)):
            self.rollout_event_seen = event_id
            by = "" if actor in ("controller", "shadow") else f" (by {actor})"
            _say(f"rollout   {rollout_step(kind, share)} {self.tag(version) if version else ''}: {sentence}{by}")

    def _ramp_line(self) -> None:
        """The ramp under way and its controller's latest sentence."""
        for champion, challenger, state, share, sentence in self.store.rows(_RAMP, (MODEL_NAME,)):
            _say(f"ramp      {self.tag(challenger)} {state} at {100 * share:g}% against {self.tag(champion)}: "
                 f"{sentence}")

    def _decision_lines(self) -> None:
        """Each retrain decision of this run as its status changes: watch, pending, fired, suppressed."""
        for decision_id, status, kind, urgency, sentence, why in self.store.rows(
                _DECISIONS, (MODEL_NAME, self.versions, self.wall_start)):
            if (decision_id, status) in self.decisions_seen:
                continue
            self.decisions_seen.add((decision_id, status))
            held = f" ({why})" if why else ""
            _say(f"decision  {status.upper()} {kind} retrain, {urgency}{held}: {sentence}")
        for trigger_id, outcome, sentence, version, _stage in self._retrains():
            if ("retrain", trigger_id) in self.decisions_seen:
                continue
            self.decisions_seen.add(("retrain", trigger_id))
            _say(f"retrain   {outcome.upper()}: {sentence}")
            if version is not None:
                _say(f"          {self.tag(version)} = {MODEL_NAME} {version}; its offline gates "
                     f"(`pitstop models show {MODEL_NAME} {version}`):")
                self._gate_lines(version)

    def _retrains(self) -> list[tuple[Any, ...]]:
        return self.store.rows(_RETRAINS, (MODEL_NAME, MODEL_NAME, self.versions, self.wall_start))

    def _gate_lines(self, version: str) -> None:
        for passed, gate in self.store.rows(_GATES, (MODEL_NAME, version)):
            mark = "pass" if passed else ("FAIL" if passed is False else "info")
            _say(f"            {mark}  {gate}")

    def _monitor_line(self) -> None:
        """The monitor's verdict on the newest judged window of the deployed champion (else of the newest version it
        has judged), as the workers last stored it."""
        deployment = self.serving.deployment(MODEL_NAME)
        first = [deployment.champion] if deployment is not None else []
        for version in dict.fromkeys([*first, *reversed(self.versions)]):
            drift = self.store.rows(_MONITOR_DRIFT, (MODEL_NAME, version))
            perf = self.store.rows(_MONITOR_PERFORMANCE, (MODEL_NAME, version))
            if drift or perf:
                break
        else:
            return
        parts = []
        if drift:
            start, flagged, judged = drift[0]
            flagged_text = ", ".join(flagged) if flagged else "none"
            parts.append(f"window {start:%m-%d %Hh}: drifting features: {flagged_text} (of {judged})")
        if perf:
            start, metric, value, low, high, status = perf[0]
            parts.append(f"{metric} {value:.3f} [{low:.3f}, {high:.3f}] {status} (window {start:%m-%d %Hh})")
        served_by = f"{self.tag(version)} " if len(self.versions) > 1 else ""
        _say(f"monitor   {served_by}" + "; ".join(parts))

    def _recent_accuracy(self) -> float | None:
        since = self.event_now - ACCURACY_WINDOW
        n, accuracy = self.store.rows(
            _ACCURACY, (MODEL_NAME, self.versions, since, self.event_now, f"{self.id_prefix}%")
        )[0]
        return float(accuracy) if n >= 50 else None

    # -- the end ------------------------------------------------------------------------------

    def drain(self, stop: _StopRequest, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait (briefly) until the workers have stored what was published and a training under way has its
        outcome, saying each decision and outcome as it lands (a retrain fired near the end is shown whole); a
        second Ctrl-C stops waiting."""
        deadline = time.monotonic() + timeout_s
        previous, stable, training = None, 0, 0
        while time.monotonic() < deadline and stop.count < 2 and (stable < 3 or training):
            try:
                counts = read_counts(self.store)
                training = self.store.scalar(_TRAINING, (MODEL_NAME, self.versions, self.wall_start))
                self._decision_lines()
            except psycopg.Error:
                return
            stable = stable + 1 if counts == previous else 0
            previous = counts
            time.sleep(0.3)

    def summary(self, elapsed_s: float) -> None:
        """What was published, what the store made of it, and where to look further."""
        try:
            self._summary(elapsed_s)
        except psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0]
            _say(f"summary   the feedback store did not answer: {first_line}")

    def _summary(self, elapsed_s: float) -> None:
        counts = read_counts(self.store) - self.baseline
        sent = self.sent
        cover = f" ({counts.joined / counts.predictions:.1%})" if counts.predictions else ""
        lines = [
            "",
            f"published {self.predictions_sent:,} predictions ({sent['late_prediction']:,} of them "
            f"after their outcome) and {self.outcomes_sent:,} outcomes",
            f"          ({sent['duplicate']:,} duplicates, {sent['correction']:,} corrections), "
            f"plus {sent['malformed']:,} malformed messages, in {elapsed_s:.0f} s",
            f"          event time {self.clock_start:%Y-%m-%d %H:%M} -> "
            f"{self.event_now:%Y-%m-%d %H:%M} UTC",
            f"stored    {counts.predictions:,} predictions; {counts.joined:,} with a label{cover}; "
            f"{counts.corrected:,} labels corrected;",
            f"          {counts.waiting:,} outcomes still waiting for their prediction; "
            f"{counts.dead_letters:,} dead letters",
        ]
        phases = self.store.rows(_ACCURACY_BY_PHASE, {
            "first": self.first_version, "drift_starts": self.drift_starts_at, "drift_full": self.drift_full_at,
            "model": MODEL_NAME, "versions": self.versions, "prefix": f"{self.id_prefix}%",
        })
        if phases:
            lines.append("accuracy  of the labelled predictions, by when they were made (and by whom):")
            own = [(phase, n, acc) for phase, n, acc, _, _, _ in phases if phase not in self.versions]
            lines.append("          v1 " + ", ".join(f"{phase} {float(acc):.1%} (n={n:,})" for phase, n, acc in own))
            for phase, n, acc, first, last, failed in phases:
                if phase in self.versions:
                    failures = f", {failed:,} failed (wrong)" if failed else ""
                    lines.append(f"          {self.tag(phase)} {phase} {float(acc):.1%} (n={n:,}{failures}), made "
                                 f"{first:%m-%d %H:%M} -> {last:%m-%d %H:%M}")
        lines += [
            "",
            f"{self.settings.db_schema}.label_coverage (the whole store: each demo run is a version of its own):",
            *_coverage_lines(self.store.rows(_COVERAGE), self.versions),
        ]
        reasons = self.store.rows(_DEAD_LETTER_REASONS, (self.wall_start,))
        if reasons:
            lines += ["", "dead letters of this run, by reason (one example each):"]
            lines += [f"  {n:>5,} x {_clip(example, 88)}" for n, example in reasons]
        for line in lines:
            _say(line)

    def monitor_report(self) -> None:
        """The monitor's tables of this run's version, as `pitstop monitor --model churn --version V` prints them."""
        if self.settings.monitoring.model(MODEL_NAME) is None:
            return
        from pitstop.monitoring_cli import monitor_report

        for version in self.versions:
            _say()
            _say(f"pitstop monitor --model {MODEL_NAME} --version {version}   ({self.tag(version)}):")
            try:
                monitor_report(self.settings, MODEL_NAME, version=version, segment="*", windows=12,
                               as_json=False, say=lambda line: _say(f"  {line}"), database_url=self.database_url)
            except psycopg.Error as exc:
                _say(f"  the feedback store did not answer: {str(exc).strip().splitlines()[0]}")

    def decisions_report(self) -> None:
        """This run's retrain decisions, where each ended (the worker's trigger events are in the outbox)."""
        try:
            rows = self.store.rows(_DECISIONS, (MODEL_NAME, self.versions, self.wall_start))
            published = {r[0] for r in self.store.rows("SELECT event_id FROM outbox WHERE sent_at IS NOT NULL")}
        except psycopg.Error as exc:
            _say(f"decisions the feedback store did not answer: {str(exc).strip().splitlines()[0]}")
            return
        _say()
        if not rows:
            _say("decisions none: nothing in this run called for a retrain")
            return
        _say(f"retrain decisions of this run (`pitstop triggers list --model {MODEL_NAME}` shows them all):")
        for decision_id, status, kind, urgency, sentence, why in rows:
            event = "; trigger event published" if decision_id in published else ""
            held = f" ({why})" if why else ""
            _say(f"  {status:<10} {kind} {urgency}{held}{event}: {decision_id}")
            _say(f"             {sentence}")
        for _trigger, outcome, sentence, version, stage in self._retrains():
            _say(f"retrain   {outcome}: {sentence}")
            if version is None:
                continue
            served = f", served as {self.tag(version)}" if version in self.versions else ""
            _say(f"          {MODEL_NAME} {version} is {stage}{served}; its offline gates (`pitstop models show "
                 f"{MODEL_NAME} {version}`):")
            self._gate_lines(version)

    def scenario_outcome(self) -> str:
        """How far the acts got, in one sentence."""
        if self.acts is None:
            return (f"not played: {MODEL_NAME} is not configured with promotion = \"shadow\" in the stack's "
                    "configuration")
        try:
            if self.acts.succeeded:
                return (f"played as written: {self.tag(self.acts.champion or '')} became champion through shadow and "
                        f"ramp; the bad candidate {self.tag(self.acts.drill_version)} was rolled back automatically")
            return f"not played out: {self.acts.where()}"
        except psycopg.Error as exc:
            return f"unknown: the feedback store did not answer: {str(exc).strip().splitlines()[0]}"

    def timeline_report(self) -> None:
        """Every decision of the run and its sentence, in event time order, as the database holds them."""
        try:
            entries = timeline(self.store, model=MODEL_NAME, versions=self.names, since=self.wall_start,
                               event_time_of=self.event_time_of)
        except psycopg.Error as exc:
            _say(f"timeline  the feedback store did not answer: {str(exc).strip().splitlines()[0]}")
            return
        _say()
        _say(f"timeline of this run: every decision and its sentence, from the database, at the event time (UTC) the "
             f"feed's clock read when it was recorded (`pitstop models trail {MODEL_NAME} V` shows one version's):")
        for version in self.names:
            _say(f"  {self.tag(version):<4} {MODEL_NAME} {version}")
        for line in timeline_lines(entries, self.tag, min(self.width or 119, 119) - 1):
            _say(line)

    def close(self) -> None:
        for close in self._closers:
            try:
                close()
            except Exception:  # a clean-up failure must not hide the original error
                log.exception("demo clean-up failed")


def demo_config_path() -> str:
    """The demo model's pitstop.toml, shipped with the package."""
    return str(resources.files("pitstop.demo") / DEMO_CONFIG)


def with_demo_monitoring(settings: Settings) -> Settings:
    """Settings whose workers monitor the demo model: PITSTOP_CONFIG unless one is set, rounds every 3 s."""
    if settings.monitoring.model(MODEL_NAME) is not None:
        return settings
    os.environ["PITSTOP_CONFIG"] = demo_config_path()
    os.environ.setdefault("PITSTOP_MONITOR_INTERVAL_S", "3")
    return Settings.from_env()


def with_run_schema(settings: Settings, now: datetime | None = None) -> Settings:
    """Settings whose stack keeps this run in a schema of its own (``demo_<UTC start>``), unless
    PITSTOP_DB_SCHEMA names one: every run tells its own story. Runs replay the same stretch of event time, so
    in a shared schema a run's retrain decisions would meet the cooldown and the running training of the run
    before it (a model has one timeline); nothing is deleted, earlier runs stay in their schemas.

    >>> with_run_schema(Settings(), datetime(2026, 11, 30, 11, 53, 8, tzinfo=UTC)).db_schema
    'demo_20261130_115308'
    """
    if "PITSTOP_DB_SCHEMA" in os.environ:
        return settings
    schema = f"demo_{(now or datetime.now(UTC)):%Y%m%d_%H%M%S}"
    os.environ["PITSTOP_DB_SCHEMA"] = schema
    return replace(settings, db_schema=schema)


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _check_args(duration_s: float | None, rate: float, speed: float, workers: int) -> None:
    checks = (
        ("--duration", duration_s, duration_s is None or _finite_positive(duration_s), "finite seconds > 0"),
        ("--rate", rate, _finite_positive(rate), "predictions per wall second, finite and > 0"),
        ("--speed", speed, _finite_positive(speed), "event-time seconds per wall second, finite and > 0"),
        ("--workers", workers, workers >= 1, "an integer >= 1"),
    )
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(key, value, expected)


def _detached_stack_running(settings: Settings) -> bool:
    """True when `pitstop up --detach` runs a stack for this state dir.

    Another demo's stack is not borrowed: it goes away when that demo ends.
    """
    record = stack.StackRecord.load(settings.state_dir)
    running = record.supervisor
    if running is None or not record.ready or not stack.is_ours(running):
        return False
    if " demo" in running.marker:
        msg = (f"another `pitstop demo` (pid {running.pid}) runs a stack in {settings.state_dir}; "
               "stop it, or set PITSTOP_STATE_DIR to another folder")
        raise StackError(msg)
    return True


def _loop(demo: _LiveDemo, stop: _StopRequest, duration_s: float | None, *, fast: bool = False) -> tuple[float, str]:
    """Tick, display and play the acts until ``duration_s``, a stop request, or with ``fast`` the scenario's end
    or :data:`FAST_HORIZON`; returns the wall seconds run and why the loop ended."""
    started = time.monotonic()
    demo.start_clock()
    next_tick = started
    next_display = started + DISPLAY_EVERY_S
    elapsed = 0.0
    horizon = demo.clock_start + FAST_HORIZON
    while not stop:
        elapsed = time.monotonic() - started
        if duration_s is not None and elapsed >= duration_s:
            return elapsed, f"--duration {duration_s:g} s reached"
        if fast and demo.finished:
            return elapsed, "the scenario has played out"
        if fast and demo.event_now >= horizon:
            return elapsed, (f"timeout: {_span(FAST_HORIZON.total_seconds())} of event time, and the scenario has "
                             "not played out")
        demo.tick(elapsed)
        if time.monotonic() >= next_display:
            demo.display(elapsed)
            demo.play()
            next_display += DISPLAY_EVERY_S
        next_tick += TICK_S
        while not stop and (left := next_tick - time.monotonic()) > 0:
            time.sleep(min(0.05, left))
    return elapsed, "stopped (Ctrl-C or SIGTERM)"


def run(
    settings: Settings,
    *,
    duration_s: float | None = None,
    rate: float = 200.0,
    speed: float = 3600.0,
    workers: int = 1,
    fast: bool = False,
) -> int:
    """Run the demo for ``duration_s`` wall seconds, or until Ctrl-C/SIGTERM; returns 0.

    With ``fast``, run until both acts have played (or :data:`FAST_HORIZON` of event time has passed), print the
    run's timeline and return 0 if the scenario played as written, 1 (with the reason) otherwise.

    Uses the stack `pitstop up --detach` runs, and leaves it running; otherwise starts one
    (``workers`` ingest workers) and stops it at the end.
    """
    from pitstop import supervisor

    _check_args(duration_s, rate, speed, workers)
    code = 0
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        logging.getLogger("kafka").setLevel(logging.WARNING)  # its chatter would break the table
        # the selector's "task ran for 0.12 s" says the demo's thread held the GIL (serving); the console's
        # `deploy` and `serving` lines say what the router did
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        logging.getLogger("pitstop.serving").setLevel(logging.WARNING)
        logging.getLogger("feedback.rollout").setLevel(logging.WARNING)  # the demo's own commands: `act` lines
    previous = _set_handlers(_raise_interrupt)  # while starting, SIGTERM interrupts as Ctrl-C does
    running = None
    try:
        if _detached_stack_running(settings):
            bootstrap, database_url = settings.require_services()
            _say(f"stack     using the running stack (broker {bootstrap}); it stays up afterwards")
            url = supervisor.dashboard_url(settings.state_dir)
            if url is not None:
                _say(f"dashboard {url}")
            if settings.monitoring.model(MODEL_NAME) is None:
                _say(f"note      no monitoring configuration for {MODEL_NAME}: start the stack with "
                     f"PITSTOP_CONFIG={demo_config_path()} to see drift")
        else:
            settings = with_run_schema(with_demo_monitoring(settings))
            running = supervisor.start_stack(settings, workers, on_step=_say)
            bootstrap, database_url = running.kafka_bootstrap, running.database_url
        stop = _StopRequest()
        _set_handlers(stop)
        demo = _LiveDemo(settings, bootstrap, database_url, rate=rate, speed=speed)
        try:
            demo.show_intro()
            elapsed, ended = _loop(demo, stop, duration_s, fast=fast)
            _say()
            _say(f"stopping  {ended}; flushing the producer, letting the workers catch up ...")
            demo.flush()
            demo.drain(stop)
            demo.summary(elapsed)
            if not fast:
                demo.monitor_report()
                demo.decisions_report()
            demo.timeline_report()
            outcome = demo.scenario_outcome()
            _say()
            _say(f"scenario  {outcome}")
            if fast and not outcome.startswith("played"):
                code = 1
            _say()
            view = f"{settings.db_schema}.label_coverage"
            query = f"psql \"$PITSTOP_DATABASE_URL\" -c 'select * from {view}'"
            env_file = settings.state_dir / ENV_FILE_NAME
            if running is None:
                _say(f"query it  {query}")
                _say(f"          (PITSTOP_DATABASE_URL is in {env_file})")
            else:
                _say(f"query it  the data stays in {settings.state_dir / 'pgdata'}: after "
                     "`pitstop up --detach`,")
                _say(f"          {query}")
                _say(f"          (PITSTOP_DATABASE_URL is then in {env_file})")
        finally:
            demo.close()
    finally:
        if running is not None:
            _set_handlers(_StopRequest())  # another Ctrl-C must not cut the stop short
            try:
                _say("stopping  the stack this demo started ...")  # may be the first line to find the reader gone
            finally:
                supervisor.stop_stack(running)
            _say("stopped")
        _restore_handlers(previous)
    return code
