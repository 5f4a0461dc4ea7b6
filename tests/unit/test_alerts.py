"""Alert sinks against a real local HTTP server: the body a receiver gets, retries, give-ups, and a caller
that is never blocked by a failing, hanging or missing webhook."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import orjson
import pytest

from feedback.alerts import (
    Alert,
    AlertSink,
    FanOut,
    LogAlertSink,
    WebhookAlertSink,
    alert_id_for,
    alert_sink,
)
from feedback.store.ingest import Backoff

AT = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
FAST = Backoff(first_s=0.05, max_s=0.1)
HANG = "hang"
BOOM = "boom"


def make_alert(n: int = 1, **overrides: object) -> Alert:
    fields: dict[str, object] = {
        "model_name": "churn", "kind": "critical", "sentence": f"accuracy 0.71 < floor 0.80 (#{n})",
        "at": AT + timedelta(minutes=n), "details": {"observed": 0.71, "floor": 0.8, "window": [1, 2]},
    }
    fields.update(overrides)
    return Alert.create(**fields)  # type: ignore[arg-type]


@dataclass
class Receiver:
    """What the test server saw, and what it answers: scripted statuses, then `default`."""

    statuses: list[int | str] = field(default_factory=list)
    default: int | str = 200
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def count(self) -> int:
        with self.lock:
            return len(self.requests)

    def bodies(self) -> list[dict[str, object]]:
        with self.lock:
            return [orjson.loads(body) for _, _, body in self.requests]


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.01)


@pytest.fixture
def serve() -> Iterator[Callable[..., Receiver]]:
    """Starts ThreadingHTTPServers on 127.0.0.1 (port 0) answering as scripted; stops them after the test."""
    servers: list[tuple[ThreadingHTTPServer, Receiver]] = []

    def start(statuses: list[int | str] | None = None, default: int | str = 200) -> Receiver:
        receiver = Receiver(statuses=list(statuses or []), default=default)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                try:
                    if status == HANG:
                        receiver.release.wait(30)  # far past any client timeout; released at teardown
                        status = 200
                    assert isinstance(status, int)
                    self.send_response(status)
                    if 300 <= status < 400:
                        self.send_header("Location", "/elsewhere")
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the client gave up on us

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T0/secret"
        servers.append((server, receiver))
        return receiver

    yield start
    for server, receiver in servers:
        receiver.release.set()
        server.shutdown()
        server.server_close()


def timed_send(sink: AlertSink, alert: Alert) -> float:
    started = time.monotonic()
    sink.send(alert)
    return time.monotonic() - started


def test_webhook_body_is_json_with_every_field(serve: Callable[..., Receiver]) -> None:
    """The receiver gets one POST, Content-Type application/json: every field, RFC 3339 `at`, schema_version 1."""
    receiver = serve()
    sink = WebhookAlertSink(receiver.url, timeout_s=2.0, backoff=FAST)
    alert = make_alert(details={"observed": np.float64(0.71), "count": np.int64(3), "features": ["tenure"]})
    sink.send(alert)
    sink.close(timeout_s=5.0)
    assert receiver.count() == 1
    path, headers, body = receiver.requests[0]
    assert path == "/hooks/T0/secret"
    assert headers["Content-Type"] == "application/json"
    assert orjson.loads(body) == {
        "schema_version": 1,
        "alert_id": alert.alert_id,
        "model_name": "churn",
        "kind": "critical",
        "sentence": "accuracy 0.71 < floor 0.80 (#1)",
        "at": "2026-01-05T03:01:00+00:00",
        "details": {"observed": 0.71, "count": 3, "features": ["tenure"]},
    }
    assert datetime.fromisoformat(orjson.loads(body)["at"]) == alert.at


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_failures_are_retried_until_delivered(
    serve: Callable[..., Receiver], status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A server answering 5xx or 429 twice then 200 gets the alert on the third attempt, the same body each time."""
    receiver = serve([status, status, 200])
    sink = WebhookAlertSink(receiver.url, timeout_s=2.0, max_attempts=5, backoff=FAST)
    sink.send(make_alert())
    sink.close(timeout_s=5.0)
    assert receiver.count() == 3
    assert len({body for _, _, body in receiver.requests}) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_always_failing_server_gets_max_attempts_and_send_returns_at_once(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """An always-500 server gets exactly max_attempts requests; send() returned well inside the first backoff."""
    receiver = serve(default=500)
    backoff = Backoff(first_s=0.2, max_s=0.4)
    sink = WebhookAlertSink(receiver.url, timeout_s=2.0, max_attempts=4, backoff=backoff)
    alert = make_alert()
    assert timed_send(sink, alert) < backoff.first_s / 4
    sink.close(timeout_s=5.0)
    assert receiver.count() == 4
    gave_up = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(gave_up) == 1 and alert.alert_id in gave_up[0] and "after 4 attempts" in gave_up[0], gave_up
    assert "secret" not in gave_up[0]  # the URL path may be a token: logs name the host only


def test_hanging_server_does_not_block_send(serve: Callable[..., Receiver]) -> None:
    """With the server sleeping past timeout_s, every send() still returns at once and the request times out."""
    receiver = serve(default=HANG)
    sink = WebhookAlertSink(receiver.url, timeout_s=0.3, max_attempts=2, backoff=FAST)
    assert timed_send(sink, make_alert(1)) < 0.05
    wait_for(lambda: receiver.count() >= 1)
    assert max(timed_send(sink, make_alert(n)) for n in range(2, 6)) < 0.05
    wait_for(lambda: receiver.count() >= 2)  # the first request timed out and was retried
    sink.close(timeout_s=0.1)


def test_close_returns_within_its_timeout(serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    """close() with a hanging server and queued alerts returns near its timeout and says what was left behind."""
    receiver = serve(default=HANG)
    sink = WebhookAlertSink(receiver.url, timeout_s=5.0, max_attempts=3, backoff=Backoff(first_s=5.0, max_s=5.0))
    for n in range(5):
        sink.send(make_alert(n))
    wait_for(lambda: receiver.count() >= 1)
    started = time.monotonic()
    sink.close(timeout_s=0.3)
    assert time.monotonic() - started < 1.0
    left = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("4 queued alert(s) undelivered" in m for m in left), left


def test_close_after_delivery_returns_at_once_and_later_sends_are_dropped(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    """A drained sink closes at once; a send() after close() neither raises nor posts, and is logged."""
    receiver = serve()
    sink = WebhookAlertSink(receiver.url, timeout_s=2.0, backoff=FAST)
    sink.send(make_alert())
    wait_for(lambda: receiver.count() == 1)
    started = time.monotonic()
    sink.close(timeout_s=5.0)
    assert time.monotonic() - started < 1.0
    late = make_alert(2)
    sink.send(late)
    sink.close(timeout_s=1.0)
    assert receiver.count() == 1
    assert any(late.alert_id in r.getMessage() and "closed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("status", "reason"), [(400, "HTTP 400"), (404, "HTTP 404"), (302, "HTTP 302")])
def test_client_errors_and_redirects_are_not_retried(
    serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture, status: int, reason: str
) -> None:
    """A 4xx other than 429, or a redirect (which urllib would turn into a GET), is one request and an ERROR."""
    receiver = serve(default=status)
    sink = WebhookAlertSink(receiver.url, timeout_s=2.0, max_attempts=5, backoff=FAST)
    alert = make_alert()
    sink.send(alert)
    sink.close(timeout_s=5.0)
    assert receiver.count() == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and alert.alert_id in errors[0] and reason in errors[0], errors


def test_unreachable_url_does_not_raise(caplog: pytest.LogCaptureFixture) -> None:
    """A closed port refuses every attempt: send() returns, close() returns, and the give-up is logged."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = WebhookAlertSink(f"http://127.0.0.1:{port}/hook", timeout_s=1.0, max_attempts=3, backoff=FAST)
    alert = make_alert()
    assert timed_send(sink, alert) < 0.05
    sink.close(timeout_s=5.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and alert.alert_id in errors[0] and "after 3 attempts" in errors[0], errors


def test_full_queue_drops_the_oldest_alert(serve: Callable[..., Receiver], caplog: pytest.LogCaptureFixture) -> None:
    """With one alert in delivery and the queue full, a new alert pushes out the oldest queued one, with a log line."""
    receiver = serve([HANG])
    sink = WebhookAlertSink(receiver.url, timeout_s=5.0, max_queued=2, backoff=FAST)
    alerts = [make_alert(n) for n in range(4)]
    sink.send(alerts[0])
    wait_for(lambda: receiver.count() == 1)  # alerts[0] is now in delivery, not in the queue
    for alert in alerts[1:]:
        sink.send(alert)
    receiver.release.set()
    sink.close(timeout_s=5.0)
    assert [b["alert_id"] for b in receiver.bodies()] == [alerts[0].alert_id, alerts[2].alert_id, alerts[3].alert_id]
    dropped = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(dropped) == 1 and alerts[1].alert_id in dropped[0]


def test_log_sink_writes_one_warning_line_with_kind_model_and_sentence(caplog: pytest.LogCaptureFixture) -> None:
    """Each alert is one WARNING on logger pitstop.alerts naming its kind, model and sentence."""
    caplog.set_level(logging.WARNING, logger="pitstop.alerts")
    alert = make_alert(kind="unjudged_drift", sentence="drift in tenure\nnot judged: 12 labels < 200")
    LogAlertSink().send(alert)
    [record] = caplog.records
    assert (record.name, record.levelno) == ("pitstop.alerts", logging.WARNING)
    message = record.getMessage()
    assert "\n" not in message
    assert "unjudged_drift" in message and "model=churn" in message
    assert "drift in tenure not judged: 12 labels < 200" in message


def test_fan_out_reaches_every_sink_even_past_a_failing_one() -> None:
    """A sink that raises is logged and skipped; the others still get the alert and send() does not raise."""
    got: list[Alert] = []

    class Broken:
        def send(self, alert: Alert) -> None:
            raise RuntimeError(BOOM)

        def close(self, timeout_s: float = 5.0) -> None:
            raise RuntimeError(BOOM)

    class Recording:
        def send(self, alert: Alert) -> None:
            got.append(alert)

        def close(self, timeout_s: float = 5.0) -> None:
            pass

    fan = FanOut(Broken(), Recording())
    fan.send(make_alert())
    fan.close(timeout_s=1.0)
    assert got == [make_alert()]


def test_alert_sink_is_the_log_plus_the_webhook_when_configured(serve: Callable[..., Receiver]) -> None:
    """Without a URL the sink is the log alone; with one, the log and the webhook, which receives the alert."""
    assert isinstance(alert_sink(None), LogAlertSink)
    receiver = serve()
    sink = alert_sink(receiver.url)
    assert isinstance(sink, FanOut)
    assert [type(s) for s in sink.sinks] == [LogAlertSink, WebhookAlertSink]
    sink.send(make_alert())
    sink.close(timeout_s=5.0)
    assert receiver.count() == 1


def test_alert_id_is_deterministic_and_at_is_utc() -> None:
    """The same model, kind, instant and key give the same id; `at` in another offset is stored as UTC."""
    shifted = AT.astimezone(timezone(timedelta(hours=2)))
    a = Alert.create(model_name="eta", kind="circuit_breaker", sentence="s", at=shifted)
    assert a.alert_id == alert_id_for("eta", "circuit_breaker", AT)
    assert a.alert_id != alert_id_for("eta", "circuit_breaker", AT, key="decision-7")
    assert a.alert_id != alert_id_for("churn", "circuit_breaker", AT)
    assert a.at == AT and a.at.tzinfo is UTC
    assert len({a, Alert.create(model_name="eta", kind="circuit_breaker", sentence="s", at=AT)}) == 1


def test_alert_refuses_naive_time_and_unserialisable_details() -> None:
    """A naive `at` or details that are not JSON-able fail in the caller, not later in the delivery thread."""
    with pytest.raises(ValueError, match="timezone-aware"):
        make_alert(at=datetime(2026, 1, 5))  # noqa: DTZ001
    with pytest.raises(ValueError, match="not JSON-able"):
        make_alert(details={"features": {"tenure"}})


def test_webhook_url_must_be_http() -> None:
    """A URL that is not http(s) with a host is refused when the sink is built."""
    for url in ("ftp://example.com/hook", "hooks.example.com/x", "http://"):
        with pytest.raises(ValueError, match="http:// or https://"):
            WebhookAlertSink(url)


def test_slack_and_alertmanager_receive_their_own_shapes(serve: Callable[..., Receiver]) -> None:
    """PITSTOP_ALERT_FORMAT's bodies, each POSTed to a local server through the configured sink: Slack's incoming
    webhook payload (its markup escaped, so a sentence cannot inject a link or a mention) and Alertmanager's
    /api/v2/alerts list (labels to route on, the sentence and id as annotations, the event time as startsAt)."""
    alert = make_alert(sentence="accuracy <0.71> & falling <!channel>")
    slack, manager = serve(), serve()
    for receiver, body_format in ((slack, "slack"), (manager, "alertmanager")):
        sink = alert_sink(receiver.url, body_format)
        sink.send(alert)
        sink.close(timeout_s=5.0)
        assert receiver.count() == 1
        assert receiver.requests[0][1]["Content-Type"] == "application/json"
    [slack_body] = slack.bodies()
    assert set(slack_body) == {"text"}
    text = slack_body["text"]
    assert text.startswith("*critical* churn: accuracy &lt;0.71&gt; &amp; falling &lt;!channel&gt;\n")
    assert "<" not in text and alert.alert_id in text
    [alerts] = manager.bodies()
    assert alerts == [{
        "labels": {"alertname": "PitstopCritical", "model": "churn", "kind": "critical", "severity": "critical"},
        "annotations": {"summary": alert.sentence, "alert_id": alert.alert_id,
                        "details": '{"floor":0.8,"observed":0.71,"window":[1,2]}'},
        "startsAt": alert.at.isoformat(),
    }]
    assert datetime.fromisoformat(alerts[0]["startsAt"]) == alert.at


def test_every_kind_has_a_severity_and_an_alert_name() -> None:
    from feedback.alerts import KINDS, SEVERITY, alertmanager_body

    assert set(SEVERITY) == set(KINDS)
    for kind in KINDS:
        [body] = orjson.loads(alertmanager_body(make_alert(kind=kind)))
        assert body["labels"]["alertname"].startswith("Pitstop") and "_" not in body["labels"]["alertname"]
