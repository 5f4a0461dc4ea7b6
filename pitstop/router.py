"""The serving router: which model version answers a request, from the deployments topic.

A model server asks ``router.route(model, routing_key)`` for every request and tags the prediction event with
the version it gets. The answer is a stable hash that any language can reproduce::

    bucket = int(sha256(f"{salt}:{routing_key}".encode("utf-8")).hexdigest()[:16], 16) % 10_000
    version = challenger if bucket < round(challenger_share * 10_000) else champion

so a key always gets the same version at a given share, and raising the share only moves keys from the
champion to the challenger (never back): a user does not flip between models as a ramp advances. The salt is
per rollout, so each rollout's first 5% are other users. Python's ``hash()`` is never used (it differs between
processes).

:class:`Router` follows ``pitstop.deployments`` in a background thread: it reads the topic from its start (the
topic is compacted on Kafka; the local broker does not compact, so reading everything and keeping the newest
message per model works on both), keeps per model the message with the highest ``message_version`` and
ignores a stale or invalid one (logged). A local kill switch sends every request to the champion without
Kafka: the environment variable ``PITSTOP_KILL_SWITCH`` (``all``, or a comma list of models), or the file
named by ``PITSTOP_KILL_SWITCH_FILE`` (each line ``all`` or a model name; its existence with no lines means
all), read at most once a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.validation import InvalidDocument, load_document, utc_time

log = logging.getLogger(__name__)

BUCKETS = 10_000
SCHEMA_VERSION = 1
KILL_SWITCH_ENV = "PITSTOP_KILL_SWITCH"
KILL_SWITCH_FILE_ENV = "PITSTOP_KILL_SWITCH_FILE"


def bucket(salt: str, routing_key: str) -> int:
    """The key's bucket in [0, 10,000): the first 64 bits of ``sha256("salt:key")`` (UTF-8), mod 10,000.

    >>> bucket("rollout-1", "user-42")
    9275
    """
    digest = hashlib.sha256(f"{salt}:{routing_key}".encode()).hexdigest()
    return int(digest[:16], 16) % BUCKETS


class DeploymentError(ValueError):
    """A deployments message that is not a valid deployment; ``str()`` says what is wrong in one line."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deployment:
    """One model's deployment (schemas/deployment.schema.json)."""

    model_name: str
    message_version: int
    champion: str
    challenger: str | None
    challenger_share: float
    salt: str
    state: str
    decided_at: datetime
    reason: str

    @property
    def threshold(self) -> int:
        """Buckets below this go to the challenger."""
        return round(self.challenger_share * BUCKETS) if self.challenger else 0

    def route(self, routing_key: str) -> str:
        """The version serving ``routing_key``."""
        if self.challenger is not None and bucket(self.salt, routing_key) < self.threshold:
            return self.challenger
        return self.champion

    def to_json(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "model_name": self.model_name,
                "message_version": self.message_version, "champion": self.champion, "challenger": self.challenger,
                "challenger_share": self.challenger_share, "salt": self.salt, "state": self.state,
                "decided_at": self.decided_at.isoformat(), "reason": self.reason}




def parse_deployment(value: bytes | None) -> Deployment:
    """The deployment in a message value, or :class:`DeploymentError` saying what is wrong."""
    try:
        doc = load_document(value, "deployment.schema.json")
        decided_at = utc_time(doc, "decided_at")
    except InvalidDocument as exc:
        raise DeploymentError(str(exc)) from None
    if doc["challenger"] is not None and doc["challenger"] == doc["champion"]:
        msg = f"challenger and champion are both {doc['champion']!r}"
        raise DeploymentError(msg)
    return Deployment(model_name=doc["model_name"], message_version=doc["message_version"],
                      champion=doc["champion"], challenger=doc["challenger"],
                      challenger_share=float(doc["challenger_share"]), salt=doc["salt"], state=doc["state"],
                      decided_at=decided_at, reason=doc["reason"])


class KillSwitch:
    """Sends a model's traffic to its champion when the environment or a file says so; the file is read at
    most once every ``every_s`` seconds (a missing file is no switch)."""

    def __init__(self, environ: Mapping[str, str] | None = None, *, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.environ = os.environ if environ is None else environ
        self.every_s = every_s
        self.clock = clock
        self._next_read = -float("inf")
        self._from_file: frozenset[str] = frozenset()

    def engaged(self, model: str) -> bool:
        named = {m.strip() for m in self.environ.get(KILL_SWITCH_ENV, "").split(",") if m.strip()}
        return bool(named & {"all", model}) or bool(self._file() & {"all", model})

    def _file(self) -> frozenset[str]:
        path = self.environ.get(KILL_SWITCH_FILE_ENV)
        if not path:
            return frozenset()
        now = self.clock()
        if now >= self._next_read:
            self._next_read = now + self.every_s
            try:
                with open(path, encoding="utf-8") as f:
                    lines = {line.strip() for line in f if line.strip() and not line.startswith("#")}
                self._from_file = frozenset(lines or {"all"})
            except FileNotFoundError:
                self._from_file = frozenset()
            except OSError as exc:  # unreadable: fail safe, to the champion
                log.warning("kill switch file %s unreadable (%s): every model to its champion", path, exc)
                self._from_file = frozenset({"all"})
        return self._from_file


class RouteTable:
    """The newest deployment per model; a message not newer than the one held is ignored."""

    def __init__(self, kill_switch: KillSwitch | None = None) -> None:
        self._by_model: dict[str, Deployment] = {}
        self._lock = threading.Lock()
        self.kill_switch = kill_switch or KillSwitch()
        self.ignored = 0

    def apply(self, deployment: Deployment) -> bool:
        """Keep ``deployment`` if it is newer than the model's; returns whether it was kept."""
        with self._lock:
            held = self._by_model.get(deployment.model_name)
            if held is not None and deployment.message_version <= held.message_version:
                self.ignored += 1
                log.info("deployments: %s message %d ignored (have %d)", deployment.model_name,
                         deployment.message_version, held.message_version)
                return False
            self._by_model[deployment.model_name] = deployment
            return True

    def deployment(self, model: str) -> Deployment | None:
        with self._lock:
            return self._by_model.get(model)

    def route(self, model: str, routing_key: str) -> str:
        """The version serving ``routing_key``; :class:`LookupError` for a model with no deployment yet."""
        d = self.deployment(model)
        if d is None:
            msg = f"no deployment of model {model!r} on the deployments topic yet"
            raise LookupError(msg)
        if self.kill_switch.engaged(model):
            return d.champion
        return d.route(routing_key)


class Router(RouteTable):
    """A :class:`RouteTable` kept up to date from the deployments topic by a background thread.

    ``consumer_factory()`` returns a kafka-python ``KafkaConsumer`` with no group (the router assigns every
    partition itself and reads from the start). ``apply_with``, when set, takes each valid message in the
    router's thread instead of :meth:`apply` (``pitstop.serving.ServingRouter`` loads the versions a message
    names there, then applies it); it must not raise, or the router stops following the topic.
    """

    def __init__(self, consumer_factory: Callable[[], Any], topic: str, *,
                 kill_switch: KillSwitch | None = None, poll_ms: int = 200,
                 apply_with: Callable[[Deployment], object] | None = None) -> None:
        super().__init__(kill_switch)
        self.consumer_factory = consumer_factory
        self.topic = topic
        self.poll_ms = poll_ms
        self.apply_with = apply_with
        self.invalid = 0
        self._stop = threading.Event()
        self._caught_up = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pitstop-router {topic}", daemon=True)

    def start(self) -> Router:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """Whether the background thread follows the topic."""
        return self._thread.is_alive()

    def wait_caught_up(self, timeout_s: float) -> bool:
        """Whether the router has read the topic up to where it ended when the router started."""
        return self._caught_up.wait(timeout_s)

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        from kafka import TopicPartition

        consumer = self.consumer_factory()
        try:
            partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
            assigned = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(assigned)
            consumer.seek_to_beginning(*assigned)
            ends = consumer.end_offsets(assigned) if assigned else {}
            if not assigned or all(offset == 0 for offset in ends.values()):
                self._caught_up.set()
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=self.poll_ms).values():
                    for record in records:
                        self._take(record.value)
                if not self._caught_up.is_set() and all(consumer.position(tp) >= ends[tp] for tp in assigned):
                    self._caught_up.set()
        except Exception:  # the router must never take the model server down: it keeps the last table
            log.exception("deployments: the router stopped following %s; routing on the last deployments",
                          self.topic)
        finally:
            consumer.close()

    def _take(self, value: bytes | None) -> None:
        try:
            deployment = parse_deployment(value)
        except DeploymentError as exc:
            self.invalid += 1
            log.warning("deployments: a message ignored: %s", exc)
            return
        (self.apply_with or self.apply)(deployment)
