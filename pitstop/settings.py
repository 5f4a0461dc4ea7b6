"""Configuration, read once from the environment (and `.pitstop/env`) into a frozen Settings."""

from __future__ import annotations

import math
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from feedback.alerts import FORMATS as ALERT_FORMATS
from feedback.config import EMPTY, ModelConfig, MonitoringConfig, load_config
from feedback.errors import ModelConfigError
from feedback.topics import Topics
from pitstop.errors import ConfigError, ConfigFileError, PitstopError
from schemas import Limits

T = TypeVar("T")

ENV_FILE_NAME = "env"
#: written into `.pitstop/env` with the local stack's addresses: exported with them, it says they are that stack's
#: (read afresh from its env file), not external services
STACK_DIR_VAR = "PITSTOP_STACK_DIR"
DEFAULT_CONFIG = "pitstop.toml"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a Pitstop process needs to know, validated.

    ``kafka_bootstrap`` / ``database_url`` are None when no external service is configured and
    no local stack has written `.pitstop/env`; ``external`` says the environment named them.

    >>> s = Settings.from_env({"PITSTOP_PARTITIONS": "8"})
    >>> s.partitions, s.topics.predictions
    (8, 'pitstop.predictions')
    """

    kafka_bootstrap: str | None = None
    database_url: str | None = None
    external_kafka: bool = False
    external_database: bool = False
    db_schema: str = "pitstop"
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4
    app_id: str = "pitstop-ingest"
    state_dir: Path = Path(".pitstop")
    limits: Limits = field(default_factory=Limits)
    batch_messages: int = 5000
    #: a take ends at this many bytes of keys and values too (the message crossing it included)
    batch_bytes: int = 16 * 1024 * 1024
    batch_within_s: float = 0.2
    max_events_per_txn: int = 5000
    fetch_max_wait_ms: int = 100
    #: how long a consumer group waits on a silent worker before moving its partitions (a worker killed without
    #: leaving is noticed this late); workers send a heartbeat every second, so at least 3
    kafka_session_timeout_s: float = 6.0
    log_level: str = "INFO"
    #: the models to monitor, from PITSTOP_CONFIG (default ./pitstop.toml when it exists)
    monitoring: MonitoringConfig = EMPTY
    monitor_interval_s: float = 10.0
    #: monitor worker processes `pitstop up` starts; they share the models (more models, more monitor workers)
    monitor_workers: int = 1
    #: seconds between the rollout worker's rounds (shadow scoring, the ramp's look); shadows are judged every 5
    rollout_interval_s: float = 2.0
    #: where alerts are POSTed as JSON, besides the log (PITSTOP_ALERT_WEBHOOK); None: the log only
    alert_webhook: str | None = None
    #: the webhook's body: Pitstop's JSON, a Slack incoming webhook's or Alertmanager's (PITSTOP_ALERT_FORMAT)
    alert_format: str = "pitstop"
    #: where this worker process serves its Prometheus metrics (PITSTOP_METRICS_PORT; 0: a free port; None: not
    #: served), on PITSTOP_METRICS_ADDRESS, written as a file_sd target to PITSTOP_METRICS_FILE when set
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    metrics_file: Path | None = None
    #: the port of the dashboard `pitstop up` starts (PITSTOP_DASHBOARD_PORT; taken: a free one; 0: any free one)
    dashboard_port: int = 8765
    #: the analysts' role's password, set by `pitstop migrate` and carried by `pitstop analyst-url` (None: none)
    analyst_password: str | None = field(default=None, repr=False)
    #: where ``monitoring`` came from, in words, for messages ("" when from PITSTOP_CONFIG or ./pitstop.toml)
    config_origin: str = ""
    #: the sentence refusing a PITSTOP_CONFIG that differs from the running stack's (None: no difference); the
    #: commands that use the models' configuration raise it
    config_conflict: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read PITSTOP_* variables; the local stack's `.pitstop/env` fills in the services, and without
        PITSTOP_CONFIG the configuration a running stack recorded is the one used."""
        env = dict(os.environ if environ is None else environ)
        stack_dir = env.get(STACK_DIR_VAR) or None
        state_dir = Path(env.get("PITSTOP_STATE_DIR") or stack_dir or ".pitstop")
        local = read_env_file(state_dir / ENV_FILE_NAME)
        # `.pitstop/env` exported (`set -a; . .pitstop/env`): its addresses are the local stack's, not external
        # services, and the env file has the current ones (none once the stack is down)
        own = stack_dir is not None and Path(stack_dir).resolve() == state_dir.resolve()
        kafka = None if own else env.get("PITSTOP_KAFKA_BOOTSTRAP") or None
        database = None if own else env.get("PITSTOP_DATABASE_URL") or None
        if kafka is not None and not re.fullmatch(r"[^\s,]+:\d+(,[^\s,]+:\d+)*", kafka):
            msg = "PITSTOP_KAFKA_BOOTSTRAP"
            raise ConfigError(msg, kafka, "host:port[,host:port...]")
        if database is not None and not database.startswith(("postgresql://", "postgres://")):
            msg = "PITSTOP_DATABASE_URL"
            raise ConfigError(msg, database, "a postgresql:// URL")
        limits = Limits(
            max_event_bytes=_read(env, "PITSTOP_MAX_EVENT_BYTES", int, 64 * 1024, "an integer > 0", _positive),
            max_message_bytes=_read(
                env, "PITSTOP_MAX_MESSAGE_BYTES", int, 8 * 1024 * 1024, "an integer > 0", _positive
            ),
            max_future_skew_s=_read(
                env, "PITSTOP_MAX_FUTURE_SKEW_S", _finite, 86_400.0, "finite seconds >= 0", lambda v: v >= 0
            ),
        )
        schema = env.get("PITSTOP_DB_SCHEMA", "pitstop")
        if not _SCHEMA.fullmatch(schema):
            msg = "PITSTOP_DB_SCHEMA"
            raise ConfigError(msg, schema, "a lower-case SQL identifier ([a-z_][a-z0-9_]*)")
        prefix = env.get("PITSTOP_TOPIC_PREFIX", "pitstop.")
        if prefix and not _NAME.fullmatch(prefix):
            msg = "PITSTOP_TOPIC_PREFIX"
            raise ConfigError(msg, prefix, "letters, digits, '.', '_' or '-'")
        app_id = env.get("PITSTOP_APP_ID", "pitstop-ingest")
        if not _NAME.fullmatch(app_id):
            msg = "PITSTOP_APP_ID"
            raise ConfigError(msg, app_id, "letters, digits, '.', '_' or '-'")
        level = env.get("PITSTOP_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            msg = "PITSTOP_LOG_LEVEL"
            raise ConfigError(msg, level, "DEBUG, INFO, WARNING or ERROR")
        webhook = env.get("PITSTOP_ALERT_WEBHOOK") or None
        if webhook is not None and not _is_http_url(webhook):
            msg = "PITSTOP_ALERT_WEBHOOK"
            raise ConfigError(msg, webhook, "an http:// or https:// URL")
        alert_format = env.get("PITSTOP_ALERT_FORMAT", "pitstop")
        if alert_format not in ALERT_FORMATS:
            msg = "PITSTOP_ALERT_FORMAT"
            raise ConfigError(msg, alert_format, " or ".join(ALERT_FORMATS))
        monitoring, origin, conflict = _monitoring(env.get("PITSTOP_CONFIG") or None,
                                                   _running_config(state_dir))
        return cls(
            monitoring=monitoring,
            config_origin=origin,
            config_conflict=conflict,
            monitor_interval_s=_read(env, "PITSTOP_MONITOR_INTERVAL_S", _finite, 10.0, _SECONDS, _a_day_at_most),
            monitor_workers=_read(env, "PITSTOP_MONITOR_WORKERS", int, 1, "an integer between 1 and 64",
                                  lambda v: 1 <= v <= 64),
            rollout_interval_s=_read(env, "PITSTOP_ROLLOUT_INTERVAL_S", _finite, 2.0, _SECONDS, _a_day_at_most),
            kafka_bootstrap=kafka or local.get("PITSTOP_KAFKA_BOOTSTRAP"),
            database_url=database or local.get("PITSTOP_DATABASE_URL"),
            external_kafka=kafka is not None,
            external_database=database is not None,
            db_schema=schema,
            topics=Topics(prefix=prefix),
            partitions=_read(env, "PITSTOP_PARTITIONS", int, 4, "an integer between 1 and 1000",
                             lambda v: 1 <= v <= 1000),
            app_id=app_id,
            state_dir=state_dir,
            limits=limits,
            batch_messages=_read(env, "PITSTOP_BATCH_MESSAGES", int, 5000, "an integer > 0", _positive),
            batch_bytes=_read(env, "PITSTOP_BATCH_BYTES", int, 16 * 1024 * 1024, "an integer > 0", _positive),
            batch_within_s=_read(env, "PITSTOP_BATCH_WITHIN_S", _finite, 0.2, _SECONDS, _a_day_at_most),
            max_events_per_txn=_read(env, "PITSTOP_MAX_EVENTS_PER_TXN", int, 5000, "an integer > 0", _positive),
            fetch_max_wait_ms=_read(env, "PITSTOP_FETCH_MAX_WAIT_MS", int, 100, "milliseconds between 1 and 10000",
                                    lambda v: 1 <= v <= 10_000),
            kafka_session_timeout_s=_read(env, "PITSTOP_KAFKA_SESSION_TIMEOUT_S", _finite, 6.0,
                                          "seconds between 3 and 300", lambda v: 3 <= v <= 300),
            log_level=level,
            alert_webhook=webhook,
            alert_format=alert_format,
            metrics_port=_read(env, "PITSTOP_METRICS_PORT", int, None, "a port between 0 and 65535 (0: any free one)",
                               lambda v: v is not None and 0 <= v <= 65_535),
            metrics_address=env.get("PITSTOP_METRICS_ADDRESS") or "127.0.0.1",
            metrics_file=Path(env["PITSTOP_METRICS_FILE"]) if env.get("PITSTOP_METRICS_FILE") else None,
            analyst_password=env.get("PITSTOP_ANALYST_PASSWORD") or None,
            dashboard_port=_read(env, "PITSTOP_DASHBOARD_PORT", int, 8765, "a port between 0 and 65535",
                                 lambda v: 0 <= v <= 65_535),
        )

    def serve_metrics(self, worker: str) -> str | None:
        """Serve this worker process's metrics when PITSTOP_METRICS_PORT is set (`pitstop up` sets it for each
        worker); ``host:port``, or None."""
        from feedback.metrics import serve

        try:
            return serve(self.metrics_port, address=self.metrics_address, target_file=self.metrics_file,
                         worker=worker)
        except OSError as exc:
            msg = "PITSTOP_METRICS_PORT"
            raise ConfigError(msg, str(self.metrics_port), f"a free port on {self.metrics_address} ({exc})") from None

    def require_model(self, model: str) -> ModelConfig:
        """A configured model's settings, or the one line naming the configured models."""
        config = self.monitoring.model(model)
        if config is None:
            where = self.config_origin or self.monitoring.path or "no pitstop.toml (set PITSTOP_CONFIG)"
            known = ", ".join(sorted(self.monitoring.models)) or "none"
            msg = f"model {model!r} is not configured in {where}; configured models: {known}"
            raise PitstopError(msg)
        return config

    def require_database(self) -> str:
        """The database address, or a ConfigError saying how to get one."""
        if self.database_url is None:
            msg = "PITSTOP_DATABASE_URL"
            raise ConfigError(msg, None, "a postgresql:// URL; run `pitstop up --detach` or set it")
        return self.database_url

    def require_reachable_database(self) -> str:
        """The database address once it answered a connection: a command's pool would wait 30 s for one that does
        not, logging every retry."""
        import psycopg

        database_url = self.require_database()
        try:
            psycopg.connect(database_url, connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            raise PitstopError(unreachable_database(database_url, exc)) from None
        return database_url

    def require_kafka(self) -> str:
        """The broker's address, or a ConfigError saying how to get one."""
        if self.kafka_bootstrap is None:
            msg = "PITSTOP_KAFKA_BOOTSTRAP"
            raise ConfigError(msg, None, "host:port; run `pitstop up --detach` or set it")
        return self.kafka_bootstrap

    def require_reachable_kafka(self) -> str:
        """The broker's address once one of its hosts accepted a connection: the Kafka client would retry for
        a minute, logging every attempt."""
        bootstrap = self.require_kafka()
        errors = []
        for address in bootstrap.split(","):
            host, _, port = address.rpartition(":")
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
            except OSError as exc:
                errors.append(exc)
                continue
            return bootstrap
        raise PitstopError(unreachable_broker(bootstrap, errors[-1]))

    def require_services(self) -> tuple[str, str]:
        """The broker and database addresses, or a ConfigError saying how to get them."""
        if self.kafka_bootstrap is None:
            msg = "PITSTOP_KAFKA_BOOTSTRAP"
            raise ConfigError(
                msg, None, "host:port; run `pitstop up --detach` or set it"
            )
        if self.database_url is None:
            msg = "PITSTOP_DATABASE_URL"
            raise ConfigError(
                msg, None, "a postgresql:// URL; run `pitstop up --detach` or set it"
            )
        return self.kafka_bootstrap, self.database_url


def _running_config(state_dir: Path) -> tuple[str, str] | None:
    from pitstop.stack import StackRecord

    try:
        return StackRecord.load(state_dir).running_config()
    except (ValueError, KeyError, TypeError):  # a record being replaced, or of another version
        return None


def _load(path: str) -> MonitoringConfig:
    try:
        return load_config(path)
    except ModelConfigError as exc:
        raise ConfigFileError(str(exc)) from None


def _monitoring(given: str | None, running: tuple[str, str] | None) -> tuple[MonitoringConfig, str, str | None]:
    """The models' configuration, where it came from, and why a given one is refused.

    PITSTOP_CONFIG when given; else the one the running stack's workers use (its copy in the state dir); else
    ./pitstop.toml when present. A given one that configures the models otherwise than the running stack is
    refused by the commands that use it: their decisions would not be the workers'."""
    if running is not None:
        copy, source = running
        origin = f"the running stack's configuration ({copy}, copied from {source or '(none)'})"
        if given is None:
            return _load(copy), origin, None
        mine = _load(given)
        theirs = _load(copy)
        if mine.models == theirs.models:
            return mine, "", None
        differ = sorted(set(mine.models) ^ set(theirs.models)
                        | {m for m in set(mine.models) & set(theirs.models) if mine.models[m] != theirs.models[m]})
        conflict = (f"PITSTOP_CONFIG={given} differs from the configuration the running stack's workers use "
                    f"({source or 'none'}, copied to {copy}) for {', '.join(differ)}; unset PITSTOP_CONFIG to use "
                    "the stack's, or restart the stack with this one (`pitstop down`, then `pitstop up`)")
        return mine, "", conflict
    path = given or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    return (_load(path) if path else EMPTY), "", None


def unreachable_database(database_url: str, exc: BaseException) -> str:
    """The one line for a database that does not answer: where, why, and what to do."""
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"cannot reach the database at {redact(database_url)} ({cause}); start the local stack with "
            "`pitstop up --detach`, or set PITSTOP_DATABASE_URL to a PostgreSQL that runs")


def unreachable_broker(bootstrap: str, exc: BaseException) -> str:
    """The one line for a broker that does not answer: where, why, and what to do."""
    cause = str(exc).strip() or type(exc).__name__
    return (f"cannot reach the broker at {bootstrap} ({cause}); start the local stack with `pitstop up --detach`, "
            "or set PITSTOP_KAFKA_BOOTSTRAP to a Kafka that runs")


def redact(url: str) -> str:
    """A database URL fit to print: the password, if any, replaced.

    >>> redact("postgresql://pitstop:secret@db:5432/pitstop"), redact("postgresql://postgres@127.0.0.1:5/postgres")
    ('postgresql://pitstop:***@db:5432/pitstop', 'postgresql://postgres@127.0.0.1:5/postgres')
    """
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, userinfo = head.partition("//")
    return f"{scheme}//{userinfo.split(':', 1)[0]}:***@{tail}"


def _is_http_url(value: str) -> bool:
    """An http:// or https:// URL with a host.

    >>> _is_http_url("https://hooks.example.com/x"), _is_http_url("hooks.example.com/x"), _is_http_url("http://")
    (True, False, False)
    """
    parts = urllib.parse.urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c.isspace() for c in value)


def _positive(value: float) -> bool:
    return value > 0


#: what an interval or a wait must be: inf (or 1e999) would silently never run a round, and a wait past a day
#: overflows the timers it is given to
_SECONDS = "seconds > 0, at most 86400"


def _a_day_at_most(value: float) -> bool:
    return 0 < value <= 86_400


def _finite(raw: str) -> float:
    """A finite float; ``inf``, ``nan`` and overflowing spellings are ValueErrors like any other non-number.

    >>> _finite("0.5"), _finite(" 2 ")
    (0.5, 2.0)
    >>> _finite("inf")
    Traceback (most recent call last):
    ...
    ValueError: not a finite number: 'inf'
    """
    value = float(raw)
    if not math.isfinite(value):
        msg = f"not a finite number: {raw!r}"
        raise ValueError(msg)
    return value


def _read(
    env: Mapping[str, str], key: str, parse: Callable[[str], T], default: T, expected: str,
    valid: Callable[[T], bool],
) -> T:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(key, raw, expected) from None
    if not valid(value):
        raise ConfigError(key, raw, expected)
    return value


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (as `pitstop up` writes it); empty when there is none.

    >>> read_env_file(Path("/nonexistent/env"))
    {}
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}
