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
from pitstop.settings import Settings

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


def run(settings: Settings, command: str, model: str, *, say: Say, by: str | None = None, **kwargs: Any) -> int:
    """One command (``rollback``, ``promote``, ``pause``, ``resume``, ``clear``, ``approve``, ``reject``) on
    ``model``, by ``by`` (the user running it by default); its sentence."""
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
    say(sentence)
    return 0


def drill(settings: Settings, model: str, *, switch_s: float = 30.0, wait_s: float = 300.0, settle_s: float = 5.0,
          say: Say, clock: Callable[[], float] = time.monotonic) -> int:
    """Rehearse an automatic rollback; 0 when it fired and every router switched within ``switch_s``
    (``settle_s`` more are given to the model servers' producers and the ingest to store the last requests)."""
    config = settings.require_model(model)
    if not config.retrain.shadowed:
        msg = (f"the rollout worker ramps only models with promotion = \"shadow\" or \"approval\"; {model} has "
               f"promotion = {config.retrain.promotion!r} in {settings.monitoring.path}, so nothing would roll the "
               "drill back; "
               f"set retrain.promotion = \"shadow\" for {model} and restart the stack")
        raise PitstopError(msg)
    with _session(settings) as (store, controller):
        version = f"drill-{datetime.now(UTC):%Y%m%dT%H%M%S}"
        registry = Registry()
        _refuse_drill(store, registry, model)  # every refusal before the first write
        with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            registry.register(cur, ModelVersion(model_name=model, version=version, stage="candidate",
                                                trainer="feedback.rollout.drill:FailingModel",
                                                lineage={"drill": True}),
                              serialise(FailingModel(), "pickle"), reason="rollback drill: fails every request")
        try:
            say(controller.drill(model, actor(), version))
        except RolloutError as exc:
            raise PitstopError(str(exc)) from None
        _publish(settings, store)
        rollout_id = f"{model}/{version}"
        deadline = clock() + wait_s
        rolled_back = None
        while clock() < deadline:
            rolled_back = store.rows("SELECT recorded_at, sentence FROM rollout_events WHERE rollout_id = %s AND "
                                     "kind = 'rolled_back'", (rollout_id,))
            if rolled_back:
                break
            _publish(settings, store)
            time.sleep(0.5)
        served = store.scalar("SELECT count(*) FROM predictions WHERE model_name = %s AND model_version = %s",
                              (model, version))
        if not rolled_back:
            controller.rollback(model, actor())
            controller.clear(model, actor())
            _publish(settings, store)
            say(f"drill FAILED: no automatic rollback within {wait_s:g} s; {served:,} requests reached {version} "
                "(the failure rule needs 30); is the rollout worker running and traffic routed through the router? "
                "The drill version was rolled back by hand.")
            return 1
        at, sentence = rolled_back[0]
        say(f"rollback fired: {sentence}")
        wait_until = clock() + switch_s + settle_s  # the routers' switch, then the ingest's batching
        while clock() < wait_until:
            time.sleep(0.5)
        last = store.scalar("SELECT max(ingested_at) FROM predictions WHERE model_name = %s AND model_version = %s",
                            (model, version))
        controller.clear(model, actor())
        lag = None if last is None else (last - at).total_seconds()
        if lag is not None and lag > switch_s:
            say(f"drill FAILED: a request served by {version} reached the store {lag:.1f} s after the rollback "
                f"(limit {switch_s:g} s): a router did not switch in time")
            return 1
        after = "none after it" if lag is None or lag <= 0 else f"the last {lag:.1f} s after it"
        say(f"drill passed: {served:,} requests reached {version} before the rollback, {after}; every router "
            f"switched within {switch_s:g} s. The drill's latch is cleared.")
        return 0


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
