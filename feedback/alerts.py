"""The alert sink: critical retrain decisions, unjudged drift and a tripped circuit breaker, to the log and a webhook
(Pitstop's own JSON, a Slack incoming webhook's payload, or Alertmanager's API shape).

A sink's ``send`` never blocks its caller and never raises: the webhook is POSTed from a daemon thread
fed by a bounded queue, so a slow, failing or hanging receiver costs alerts, never the engine's loop.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

import orjson

from feedback.store.ingest import Backoff

log = logging.getLogger("pitstop.alerts")

SCHEMA_VERSION = 1
#: what an alert is about; others may be added, a receiver should pass unknown kinds through
KINDS = ("critical", "unjudged_drift", "circuit_breaker", "not_recovered", "holdout_stale", "shadow_failed",
         "shadow_escalated", "rollout_abandoned", "rollback", "approval_waiting")
_JSON_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
#: 0.5, 1, 2, 4, 8, 16, 30 s between the 8 attempts of the default: about a minute, plus the requests
WEBHOOK_BACKOFF = Backoff(first_s=0.5, max_s=30.0)


def alert_id_for(model_name: str, kind: str, at: datetime, key: str = "") -> str:
    """The deterministic id of an alert: the same model, kind, event time and key give the same id.

    ``key`` tells apart alerts of one kind for one model at one instant (a decision id, a feature).

    >>> a = alert_id_for("churn", "critical", datetime(2026, 1, 5, 3, 0, tzinfo=UTC))
    >>> a, a == alert_id_for("churn", "critical", datetime(2026, 1, 5, 3, 0, tzinfo=UTC))
    ('critical-86ef3ecdc70105f4553462a6', True)
    >>> a == alert_id_for("churn", "critical", datetime(2026, 1, 5, 3, 0, tzinfo=UTC), key="d-2")
    False
    """
    at = _utc(at)
    digest = hashlib.sha256("\x1f".join((model_name, kind, at.isoformat(), key)).encode()).hexdigest()
    return f"{kind}-{digest[:24]}"


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None or at.utcoffset() is None:
        msg = f"alert time must be timezone-aware (UTC), got naive {at}"
        raise ValueError(msg)
    return at.astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert, as a webhook receives it (:meth:`to_json`); ``at`` is event time, ``details`` JSON-able.

    ``details`` is copied into a read-only mapping and checked for JSON at construction, so a bad
    value fails in the caller rather than in the delivery thread.

    Examples
    --------
    >>> alert = Alert.create(model_name="churn", kind="critical", sentence="accuracy 0.71 < floor 0.80",
    ...                      at=datetime(2026, 1, 5, 3, 0, tzinfo=UTC), details={"observed": 0.71})
    >>> alert.alert_id
    'critical-86ef3ecdc70105f4553462a6'
    >>> alert.to_json()[:60]
    b'{"alert_id":"critical-86ef3ecdc70105f4553462a6","at":"2026-0'
    """

    alert_id: str
    model_name: str
    kind: str
    sentence: str
    at: datetime
    #: left out of the hash (a mapping has none); still compared
    details: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", _utc(self.at))
        details = dict(self.details)
        try:
            orjson.dumps(details, option=_JSON_OPTIONS)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            msg = f"alert {self.alert_id} details are not JSON-able: {exc}"
            raise ValueError(msg) from None
        object.__setattr__(self, "details", MappingProxyType(details))

    @classmethod
    def create(
        cls, *, model_name: str, kind: str, sentence: str, at: datetime,
        details: Mapping[str, Any] | None = None, key: str = "",
    ) -> Alert:
        """An alert whose id is :func:`alert_id_for` (model_name, kind, at, key)."""
        return cls(alert_id=alert_id_for(model_name, kind, at, key), model_name=model_name, kind=kind,
                   sentence=sentence, at=at, details=details or {})

    def to_json(self) -> bytes:
        """The webhook body: every field, ``at`` in RFC 3339 with its offset, and ``schema_version``: 1.

        >>> orjson.loads(Alert(alert_id="a-1", model_name="eta", kind="circuit_breaker", sentence="3 failures",
        ...                    at=datetime(2026, 1, 5, 3, 0, tzinfo=UTC)).to_json())
        {'alert_id': 'a-1', 'at': '2026-01-05T03:00:00+00:00', 'details': {}, 'kind': 'circuit_breaker', \
'model_name': 'eta', 'schema_version': 1, 'sentence': '3 failures'}
        """
        body = {
            "schema_version": SCHEMA_VERSION,
            "alert_id": self.alert_id,
            "model_name": self.model_name,
            "kind": self.kind,
            "sentence": self.sentence,
            "at": self.at.isoformat(),
            "details": dict(self.details),
        }
        return orjson.dumps(body, option=_JSON_OPTIONS)


#: the webhook bodies Pitstop speaks (PITSTOP_ALERT_FORMAT)
FORMATS = ("pitstop", "slack", "alertmanager")
#: an alert kind's severity, for receivers that route on it (Alertmanager's ``severity`` label)
SEVERITY = {"critical": "critical", "unjudged_drift": "warning", "circuit_breaker": "warning",
            "not_recovered": "warning", "holdout_stale": "info", "shadow_failed": "warning",
            "shadow_escalated": "warning", "rollout_abandoned": "warning", "rollback": "critical",
            "approval_waiting": "info"}


def slack_body(alert: Alert) -> bytes:
    r"""A Slack incoming webhook's payload: one ``text`` in Slack's markup (``&``, ``<`` and ``>`` escaped, as Slack
    asks, so a sentence can never become a link or a mention).

    >>> orjson.loads(slack_body(Alert(alert_id="a-1", model_name="churn", kind="critical", sentence="acc < 0.8",
    ...                               at=datetime(2026, 1, 5, 3, 0, tzinfo=UTC))))["text"]
    '*critical* churn: acc &lt; 0.8\n_2026-01-05 03:00 UTC, alert a-1_'
    """
    def escape(text: str) -> str:
        return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    text = (f"*{escape(alert.kind)}* {escape(alert.model_name)}: {escape(alert.sentence)}\n"
            f"_{alert.at:%Y-%m-%d %H:%M} UTC, alert {escape(alert.alert_id)}_")
    return orjson.dumps({"text": text})


def alertmanager_body(alert: Alert) -> bytes:
    """Alertmanager's API shape (``POST /api/v2/alerts``): a list of one alert, labelled by name, model, kind and
    severity (so Alertmanager groups and routes on them), the sentence and id as annotations, ``startsAt`` the event
    time. Alertmanager resolves it after its ``resolve_timeout``: an alert is an event here, not a standing state.

    >>> orjson.loads(alertmanager_body(Alert(alert_id="a-1", model_name="churn", kind="critical", sentence="s",
    ...                                      at=datetime(2026, 1, 5, 3, 0, tzinfo=UTC))))[0]["labels"]
    {'alertname': 'PitstopCritical', 'kind': 'critical', 'model': 'churn', 'severity': 'critical'}
    """
    name = "Pitstop" + "".join(part.capitalize() for part in alert.kind.split("_"))
    return orjson.dumps([{
        "labels": {"alertname": name, "model": alert.model_name, "kind": alert.kind,
                   "severity": SEVERITY.get(alert.kind, "warning")},
        "annotations": {"summary": alert.sentence, "alert_id": alert.alert_id,
                        "details": orjson.dumps(dict(alert.details), option=_JSON_OPTIONS).decode()},
        "startsAt": alert.at.isoformat(),
    }], option=_JSON_OPTIONS)


BODIES: Mapping[str, Callable[[Alert], bytes]] = MappingProxyType({
    "pitstop": Alert.to_json, "slack": slack_body, "alertmanager": alertmanager_body})


class AlertSink(Protocol):
    """Where alerts go. ``send`` returns at once and never raises; ``close`` waits at most ``timeout_s``."""

    def send(self, alert: Alert) -> None: ...

    def close(self, timeout_s: float = 5.0) -> None: ...


class LogAlertSink:
    """Every alert as one WARNING line on logger ``pitstop.alerts``: kind, model, sentence and id."""

    def send(self, alert: Alert) -> None:
        try:
            sentence = " ".join(alert.sentence.split())  # one line, whatever the sentence holds
            log.warning("alert %s model=%s: %s (%s)", alert.kind, alert.model_name, sentence, alert.alert_id)
        except Exception:  # a sink never raises into the engine
            pass

    def close(self, timeout_s: float = 5.0) -> None:
        """Nothing to flush: logging is synchronous."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is: urllib would turn a redirected POST into a body-less GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


def _where(url: str) -> str:
    """The scheme and host of a URL, for logs: webhook paths often hold a secret token.

    >>> _where("https://hooks.example.com/services/T000/B000/XXXX")
    'https://hooks.example.com'
    """
    parts = urllib.parse.urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a port out of range
        port = ":?"
    return f"{parts.scheme}://{parts.hostname}{port}"


class WebhookAlertSink:
    """POSTs each alert's JSON body to ``url`` from a background daemon thread, retrying what may pass.

    :meth:`send` appends to a queue of at most ``max_queued`` alerts and returns; when the queue
    is full the OLDEST queued alert is dropped, with a WARNING naming it (every alert is also in
    the log when this sink sits behind :func:`alert_sink`). Alerts go out one at a time, in order.

    A connection error, a timeout (``timeout_s`` per request), HTTP 5xx or 429 is retried after
    ``backoff.delay_s(attempt)``, up to ``max_attempts`` requests in all, then given up with an
    ERROR naming the alert id. Any other answer that is not 2xx (a 4xx, a redirect) is not retried,
    and logged as an ERROR. Logs name only the scheme and host of ``url``: its path may be a secret.

    :meth:`close` lets the thread drain the queue for up to ``timeout_s``, then abandons what is
    left (an ERROR says how many) and returns; the daemon thread never holds up process exit.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff: Backoff = WEBHOOK_BACKOFF,
        max_queued: int = 1000,
        body: Callable[[Alert], bytes] = Alert.to_json,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            msg = f"webhook URL must be http:// or https:// with a host, got {_where(url)!r}"
            raise ValueError(msg)
        if timeout_s <= 0 or max_attempts < 1 or max_queued < 1:
            msg = f"need timeout_s > 0, max_attempts >= 1, max_queued >= 1; got {timeout_s}, {max_attempts}, " \
                  f"{max_queued}"
            raise ValueError(msg)
        self.url = url
        self.body = body
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_queued = max_queued
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._queue: deque[Alert] = deque()
        self._ready = threading.Condition()
        self._closing = False
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pitstop-alert-webhook", daemon=True)
        self._thread.start()

    def send(self, alert: Alert) -> None:
        dropped: Alert | None = None
        try:
            with self._ready:
                if self._closing:
                    dropped = alert
                else:
                    if len(self._queue) >= self.max_queued:
                        dropped = self._queue.popleft()
                    self._queue.append(alert)
                    self._ready.notify()
            if dropped is alert:
                log.warning("webhook %s closed: alert %s not sent", _where(self.url), alert.alert_id)
            elif dropped is not None:
                log.warning("webhook %s queue full (%d): dropped the oldest alert %s (%s, model=%s)",
                            _where(self.url), self.max_queued, dropped.alert_id, dropped.kind, dropped.model_name)
        except Exception:  # a sink never raises into the engine
            pass

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout_s``, then stop; later sends are dropped."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._ready:
            self._closing = True
            self._ready.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._abandon.set()
            with self._ready:
                left = len(self._queue)
                self._queue.clear()
            log.error("webhook %s: closed after %.1f s; %d queued alert(s) undelivered, the one in delivery abandoned",
                      _where(self.url), timeout_s, left)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue or self._abandon.is_set():
                    return
                alert = self._queue.popleft()
            try:
                self._deliver(alert)
            except Exception:  # a bug here must not end the thread and silently swallow later alerts
                log.exception("webhook %s: alert %s not delivered", _where(self.url), alert.alert_id)

    def _deliver(self, alert: Alert) -> None:
        body = self.body(alert)
        for attempt in range(1, self.max_attempts + 1):
            failure = self._post(body)
            if failure is None:
                return
            reason, retry = failure
            if not retry:
                log.error("webhook %s refused alert %s (%s): not retried", _where(self.url), alert.alert_id, reason)
                return
            if attempt == self.max_attempts:
                break
            log.info("webhook %s: alert %s attempt %d failed (%s)", _where(self.url), alert.alert_id, attempt, reason)
            if self._abandon.wait(self.backoff.delay_s(attempt)):
                return
        log.error("webhook %s: gave up on alert %s after %d attempts (last: %s)",
                  _where(self.url), alert.alert_id, self.max_attempts, reason)

    def _post(self, body: bytes) -> tuple[str, bool] | None:
        """None when delivered, else the reason and whether to retry."""
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "pitstop-alerts"},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                response.read()
            return None
        except urllib.error.HTTPError as exc:
            exc.close()
            return f"HTTP {exc.code}", exc.code == 429 or exc.code >= 500
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            # refused, reset, DNS, TLS, timeout (TimeoutError is an OSError), a malformed answer
            reason = getattr(exc, "reason", None) or exc
            return f"{type(exc).__name__}: {reason}", True


class FanOut:
    """Sends each alert to every sink; one failing sink neither stops the others nor reaches the caller."""

    def __init__(self, *sinks: AlertSink) -> None:
        self.sinks = sinks

    def send(self, alert: Alert) -> None:
        for sink in self.sinks:
            try:
                sink.send(alert)
            except Exception:  # a sink never raises into the engine
                log.exception("alert sink %s failed on alert %s", type(sink).__name__, alert.alert_id)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close every sink, sharing ``timeout_s`` between them."""
        deadline = time.monotonic() + timeout_s
        for sink in self.sinks:
            try:
                sink.close(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("alert sink %s failed to close", type(sink).__name__)


def alert_sink(webhook_url: str | None, body_format: str = "pitstop") -> AlertSink:
    """The configured sink: the log always, and the webhook too when a URL is given (PITSTOP_ALERT_WEBHOOK), its
    bodies in ``body_format`` (PITSTOP_ALERT_FORMAT: one of :data:`FORMATS`).

    >>> type(alert_sink(None)).__name__
    'LogAlertSink'
    """
    if webhook_url is None:
        return LogAlertSink()
    return FanOut(LogAlertSink(), WebhookAlertSink(webhook_url, body=BODIES[body_format]))
