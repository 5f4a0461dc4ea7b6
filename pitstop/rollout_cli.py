"""`pitstop rollback | promote | pause | rollout clear | drill | approve | reject`: a person's hand on the ramp.

Each command is one transaction in the feedback store (feedback/rollout/controller.py) whose deployment message
goes out through the outbox; the command publishes it at once when a broker is configured (the outbox relay of
the running stack would within seconds otherwise).

The drill (`pitstop drill --model M`) rehearses the worst case on the real path: it registers a challenger that
fails every request, starts a ramp at the first step without a shadow, waits for the controller's automatic
rollback, then checks that every router switched: no request served by the drill version reaches the store later
than ``switch_s`` (30 s) after the rollback was committed. Times are the database's clock (wall time), since
they measure the routers' reaction, not the models' event time. It needs the stack running and traffic routed
through :class:`pitstop.serving.ServingRouter`; it clears its own latch at the end.
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from feedback.alerts import LogAlertSink
from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import Controller, RolloutError
from feedback.rollout.drill import FailingModel
from feedback.store import FeedbackStore
from pitstop.errors import PitstopError
from pitstop.outbox_relay import OutboxPublisher
from pitstop.output import Progress, reply
from pitstop.settings import Settings

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def run(settings: Settings, command: str, model: str, *, say: Say, by: str | None = None, as_json: bool = False,
        **kwargs: Any) -> int:
    """One command (``rollback``, ``promote``, ``pause``, ``resume``, ``clear``, ``approve``, ``reject``,
    ``deploy_version``) on ``model``, by ``by`` (the user running it by default); its sentence, or with ``as_json``
    one object: the command, its arguments, the sentence and the model's deployment and ramp after it."""
    who = by or actor()
    with _session(settings) as (store, controller):  # the database first, as every command
        settings.require_model(model)  # then the same one line as every command, naming the file and the models
        try:
            if command == "resume":
                sentence = controller.pause(model, who, resume=True)
            else:
                sentence = getattr(controller, command)(model, who, **kwargs)
        except RolloutError as exc:
            raise PitstopError(str(exc)) from None
        _publish(settings, store)
        after = _after(store, model) if as_json else {}
    reply(say, as_json, sentence, command=command.removesuffix("_version"), model=model, by=who, **kwargs, **after)
    return 0


_AFTER = """
SELECT d.message_version, d.champion, d.challenger, d.challenger_share, d.state,
       r.challenger, r.state, r.share, l.version
FROM (SELECT %(model)s AS model_name) m
LEFT JOIN deployments d USING (model_name)
LEFT JOIN rollouts r ON r.model_name = m.model_name AND r.state IN ('ramping', 'paused', 'holding')
LEFT JOIN rollback_latches l ON l.model_name = m.model_name
"""


def _after(store: FeedbackStore, model: str) -> dict[str, Any]:
    """The model's state after a command, for ``--json``: the deployment the routers follow, the ramp under way
    and the latch (each null when there is none)."""
    message, champion, challenger, share, state, ramp_version, ramp_state, ramp_share, latched = store.rows(
        _AFTER, {"model": model})[0]
    return {
        "deployment": None if message is None else {"message_version": message, "champion": champion,
                                                    "challenger": challenger, "challenger_share": share,
                                                    "state": state},
        "ramp": None if ramp_version is None else {"challenger": ramp_version, "state": ramp_state,
                                                   "share": ramp_share},
        "latched": latched,
    }


def drill(settings: Settings, model: str, *, switch_s: float = 30.0, wait_s: float = 300.0, settle_s: float = 5.0,
          say: Say, as_json: bool = False, clock: Callable[[], float] = time.monotonic) -> int:
    """Rehearse an automatic rollback; 0 when it fired and every router switched within ``switch_s``
    (``settle_s`` more are given to the model servers' producers and the ingest to store the last requests).

    Its lines are said as it goes, with a progress line on a terminal while it waits; with ``as_json``, one object
    at the end instead."""
    config = settings.require_model(model)
    if not config.retrain.shadowed:
        msg = (f"the rollout worker ramps only models with promotion = \"shadow\" or \"approval\"; {model} has "
               f"promotion = {config.retrain.promotion!r} in {settings.monitoring.path}, so nothing would roll the "
               "drill back; "
               f"set retrain.promotion = \"shadow\" for {model} and restart the stack")
        raise PitstopError(msg)
    report: dict[str, Any] = {"model": model, "switch_s": switch_s, "wait_s": wait_s}

    def finish(passed: bool, sentence: str) -> int:
        reply(say, as_json, sentence, **report, passed=passed)
        return 0 if passed else 1

    with _session(settings) as (store, controller):
        version = f"drill-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        report["version"] = version
        registry = Registry()
        _refuse_drill(store, registry, model)  # every refusal before the first write
        with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            registry.register(cur, ModelVersion(model_name=model, version=version, stage="candidate",
                                                trainer="feedback.rollout.drill:FailingModel",
                                                lineage={"drill": True}),
                              serialise(FailingModel(), "pickle"), reason="rollback drill: fails every request")
        try:
            report["started"] = controller.drill(model, actor(), version)
        except RolloutError as exc:
            raise PitstopError(str(exc)) from None
        if not as_json:
            say(report["started"])
        _publish(settings, store)
        rollout_id = f"{model}/{version}"
        served_sql = "SELECT count(*) FROM predictions WHERE model_name = %s AND model_version = %s"
        started = clock()
        deadline = started + wait_s
        rolled_back = None
        bar = Progress(f"drill {model}")
        try:
            while clock() < deadline:
                rolled_back = store.rows("SELECT recorded_at, sentence FROM rollout_events WHERE rollout_id = %s AND "
                                         "kind = 'rolled_back'", (rollout_id,))
                if rolled_back:
                    break
                _publish(settings, store)
                if bar.on:
                    bar.status(f"waiting for the automatic rollback, {clock() - started:.0f} of {wait_s:g} s; "
                               f"{store.scalar(served_sql, (model, version)):,} requests reached {version}")
                time.sleep(0.5)
        finally:
            bar.close()
        served = store.scalar(served_sql, (model, version))
        report["served"] = served
        if not rolled_back:
            controller.rollback(model, actor())
            controller.clear(model, actor())
            _publish(settings, store)
            return finish(False, f"drill FAILED: no automatic rollback within {wait_s:g} s; {served:,} requests "
                          f"reached {version} (the failure rule needs 30); is the rollout worker running and traffic "
                          "routed through the router? The drill version was rolled back by hand.")
        at, sentence = rolled_back[0]
        report["rolled_back_at"], report["rolled_back"] = at, sentence
        if not as_json:
            say(f"rollback fired: {sentence}")
        watched = clock()
        wait_until = watched + switch_s + settle_s  # the routers' switch, then the ingest's batching
        try:
            while clock() < wait_until:
                bar.status(f"watching every router switch: {clock() - watched:.0f} of {switch_s + settle_s:g} s")
                time.sleep(0.5)
        finally:
            bar.close()
        last = store.scalar("SELECT max(ingested_at) FROM predictions WHERE model_name = %s AND model_version = %s",
                            (model, version))
        # the requests that reached the store by the rollback, and those served before the routers switched that
        # reached it after (the switch may take switch_s)
        served, after_it = store.rows(
            "SELECT count(*) FILTER (WHERE ingested_at <= %s), count(*) FILTER (WHERE ingested_at > %s)"
            " FROM predictions WHERE model_name = %s AND model_version = %s", (at, at, model, version))[0]
        report["served"], report["served_after"] = served, after_it
        controller.clear(model, actor())
        lag = None if last is None else (last - at).total_seconds()
        report["last_request_after_s"] = lag
        if lag is not None and lag > switch_s:
            return finish(False, f"drill FAILED: a request served by {version} reached the store {lag:.1f} s after "
                          f"the rollback (limit {switch_s:g} s): a router did not switch in time")
        after = "none after it" if lag is None or lag <= 0 else f"{after_it:,} after it, the last {lag:.1f} s after"
        return finish(True, f"drill passed: {served:,} requests reached {version} before the rollback, {after}; "
                      f"every router switched within {switch_s:g} s. The drill's latch is cleared.")


_ACTIVE_RAMP = "SELECT challenger, state, share FROM rollouts WHERE model_name = %s AND state IN ('ramping', " \
    "'paused', 'holding')"


def _refuse_drill(store: FeedbackStore, registry: Registry, model: str) -> None:
    """The controller's refusals of a drill (a ramp under way, no champion), asked before the drill registers its
    version: a refusal after would leave a failing version in the registry."""
    with store.pool.connection() as conn, conn.cursor() as cur:
        active = cur.execute(_ACTIVE_RAMP, (model,)).fetchone()
        deployed = cur.execute("SELECT champion FROM deployments WHERE model_name = %s", (model,)).fetchone()
        champion = registry.champion(cur, model)
    if active is not None:
        challenger, state, share = active
        msg = (f"{model} has a ramp under way ({challenger} {state} at {100 * share:g}%); a drill starts only between "
               f"ramps: wait for it to end, or end it with `pitstop rollback --model {model}` / `pitstop promote`")
        raise PitstopError(msg)
    if deployed is None and champion is None:
        msg = (f"{model} has no champion to fall back to, and a drill needs one: register and deploy a champion "
               f"first (`pitstop models list --model {model}` shows its versions)")
        raise PitstopError(msg)


class _session:  # noqa: N801 - used as a context manager, reads as one
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __enter__(self) -> tuple[FeedbackStore, Controller]:
        database_url = self.settings.require_reachable_database()
        self.store = FeedbackStore(database_url, self.settings.db_schema, max_size=2).open()
        return self.store, Controller(self.store, self.settings.monitoring, LogAlertSink())

    def __exit__(self, *exc: object) -> None:
        self.store.close()


def _publish(settings: Settings, store: FeedbackStore) -> None:
    """Publish the command's deployment message now if a broker is configured (the stack's relay would too)."""
    if not settings.kafka_bootstrap:
        return
    publisher = OutboxPublisher(settings.kafka_bootstrap, settings.topics.prefix, client_id="pitstop-cli")
    try:
        publisher.publish(store)
    except Exception as exc:  # the relay of the running stack publishes it later
        log.warning("deployment message not published yet (the outbox keeps it): %s", exc)
    finally:
        publisher.close()
