"""The dashboard's server against a real store: its JSON documents say what the stored rows say (checked with SQL),
an unknown model or version is a 404 with one sentence, a database that does not answer a 503 with one sentence,
nothing changes state, and the page and its charting library are served from this process (no CDN)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from feedback.alerts import LogAlertSink
from feedback.config import MonitoringConfig, parse_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import publish_deployment
from feedback.store import FeedbackStore, drop_store, migrate
from feedback.triggers.engine import TriggerEngine
from pitstop.dashboard import app
from pitstop.dashboard.app import Served, build_app
from tests.factories import DRIFT_TOML, T0, drifting_hour

CONFIG = DRIFT_TOML.replace("[models.churn.triggers]", '[models.churn.triggers]\ncalendar = "0 3 * * *"')


def get(url: str, method: str = "GET") -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            body = answer.read()
            status, kind = answer.status, answer.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body, status, kind = exc.read(), exc.code, exc.headers.get("Content-Type", "")
    return status, json.loads(body) if kind.startswith("application/json") else body.decode()


@pytest.fixture
def config() -> MonitoringConfig:
    return parse_config(CONFIG)


@contextlib.contextmanager
def _serving(database_url: str, schema: str, config: MonitoringConfig) -> Iterator[tuple[str, FeedbackStore]]:
    """Eight hours of a drifting workload judged and decided in ``schema``, a champion deployed, and the dashboard
    serving it."""
    with FeedbackStore(database_url, schema, windows=WindowUpdater(config)) as store:
        with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression().fit([[0.0], [1.0]], [0, 1])
            Registry().register(cur, ModelVersion(model_name="churn", version="v1", stage="champion"),
                                serialise(model), reason="first deployment")
            publish_deployment(cur, "churn", champion="v1", challenger=None, share=0.0, salt="churn/v1",
                               state="steady", reason="first deployment", at=T0)
        monitor, engine = Monitor(store, store.windows), TriggerEngine(config, LogAlertSink())
        for hour in range(8):
            store.write_batch(*drifting_hour(hour, drift=True))
            monitor.run_once(after=lambda conn, evs, at=T0 + timedelta(hours=hour + 1): engine.run(conn, evs,
                                                                                                 wall_now=at))
        dashboard = Served(build_app(database_url, schema, config))
        try:
            yield dashboard.url, store
        finally:
            dashboard.stop()


@pytest.fixture(scope="module")
def served(services) -> Iterator[tuple[str, FeedbackStore]]:
    """The served store, built once for the tests that only read it (a schema of this module's own)."""
    schema = f"t_dashboard_{uuid.uuid4().hex[:8]}"
    migrate(services.database_url, schema)
    try:
        with _serving(services.database_url, schema, parse_config(CONFIG)) as served:
            yield served
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            drop_store(conn, schema)


@pytest.fixture
def served_to_change(services, db_schema, config,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, FeedbackStore]]:
    """The same in this test's own schema, for a test that writes to it; its pages refresh every 2 s instead of 5 s
    (the same refresh in place: the test waits less for the next one)."""
    monkeypatch.setattr(app, "REFRESH_S", 2)
    with _serving(services.database_url, db_schema, config) as served:
        yield served


def test_the_documents_say_what_the_store_holds(served: tuple[str, FeedbackStore]) -> None:
    url, store = served
    status, fleet = get(f"{url}/api/fleet")
    assert status == 200
    [churn] = fleet["models"]
    assert (churn["model"], churn["champion"], churn["challenger"], churn["stage"]) == ("churn", "v1", None, "steady")
    [(newest_judged,)] = store.rows(
        "SELECT max(window_start) FROM monitor_results WHERE model_name = 'churn' AND model_version = 'v1'"
        " AND segment = '*' AND kind = 'drift' AND metric = 'drift' AND status <> 'unjudged'")
    drifting, judged = store.rows(
        "SELECT count(*) FILTER (WHERE status = 'drift'), count(*) FROM monitor_results WHERE model_name = 'churn'"
        " AND model_version = 'v1' AND segment = '*' AND kind = 'drift' AND metric = 'drift'"
        " AND left(feature, 2) <> '__' AND window_start = %s", (newest_judged,))[0]
    assert (churn["features_drifting"], churn["features_judged"]) == (drifting, judged) and drifting >= 2
    [(value, start)] = store.rows(
        "SELECT value, window_start FROM performance_by_window WHERE model_name = 'churn' AND model_version = 'v1'"
        " AND segment = '*' AND metric = 'accuracy' AND status <> 'unjudged' ORDER BY window_start DESC LIMIT 1")
    assert churn["performance"]["value"] == pytest.approx(value) and churn["performance"]["window_start"].startswith(
        start.strftime("%Y-%m-%dT%H:%M"))
    assert churn["next_calendar_slot"].startswith("2026-03-02T03:00")  # after the newest window's end
    assert fleet["dead_letters_last_hour"] == 0

    status, page = get(f"{url}/api/models/churn")
    assert status == 200
    [(decision_id, sentence)] = store.rows(
        "SELECT decision_id, sentence FROM retrain_decisions ORDER BY updated_at DESC LIMIT 1")
    assert (page["latest_decision"]["decision_id"], page["latest_decision"]["sentence"]) == (decision_id, sentence)
    newest = max(c["window_start"] for c in page["drift"])
    assert {c["feature"] for c in page["drift"] if c["window_start"] == newest and c["status"] == "drift"} == {
        "age", "tenure"}
    cells = store.rows("SELECT count(*) FROM drift_by_window WHERE model_name = 'churn' AND model_version = 'v1'"
                       " AND segment = '*' AND metric = 'drift' AND left(feature, 2) <> '__'")[0][0]
    assert len(page["drift"]) == cells  # 8 windows: all within the heat map's 24
    stored = store.rows("SELECT value FROM performance_by_window WHERE model_name = 'churn' AND segment = '*'"
                        " AND metric = 'accuracy' ORDER BY window_start")
    assert [p["value"] for p in page["performance"]["v1"]] == pytest.approx([v for (v,) in stored], nan_ok=True)
    assert sorted(e["step"] for e in page["timeline"]) == ["decision", "stage"], page["timeline"]
    decided = [e["sentence"] for e in page["timeline"] if e["step"] == "decision"]
    assert decided == [f"drift (elevated, fired): {sentence}"]
    assert page["versions"][0]["version"] == "v1"
    status, trail = get(f"{url}/api/models/churn/versions/v1/trail")
    assert status == 200 and trail[0]["sentence"].startswith("registered -> champion")


def test_unknown_names_are_404_writes_are_refused_and_the_page_needs_no_cdn(
        served: tuple[str, FeedbackStore]) -> None:
    url, store = served
    for path in ("/api/models/eta", "/api/models/churn/versions/v9/trail"):
        status, doc = get(url + path)
        assert status == 404 and set(doc) == {"error"} and doc["error"].count("\n") == 0, (path, doc)
    assert "no model 'eta' in the configuration (configured: churn)" in get(f"{url}/api/models/eta")[1]["error"]
    status, html = get(f"{url}/models/eta")
    assert status == 404 and "No model eta in the configuration" in html
    before = store.rows("SELECT count(*) FROM retrain_decisions")
    for path in ("/api/fleet", "/api/models/churn", "/"):
        assert get(url + path, method="POST")[0] == 405
    assert store.rows("SELECT count(*) FROM retrain_decisions") == before
    status, html = get(url + "/models/churn")
    assert status == 200 and '<script src="/static/plotly.min.js">' in html and "http" not in html.split("<body>")[1]
    status, js = get(url + "/static/plotly.min.js")
    assert status == 200 and len(js) > 1_000_000 and "plotly" in js[:2000].lower()
    assert url.startswith("http://127.0.0.1:")


def test_a_database_that_does_not_answer_is_a_503_in_one_sentence(config: MonitoringConfig) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dashboard = Served(build_app(f"postgresql://postgres@127.0.0.1:{port}/postgres", "pitstop", config, wait_s=0.5))
    try:
        for path in ("/api/fleet", "/api/models/churn"):
            status, doc = get(dashboard.url + path)
            assert status == 503 and doc["error"].startswith("the feedback store does not answer"), doc
            assert doc["error"].count("\n") == 0
        assert get(dashboard.url + "/")[0] == 200  # the page itself, which says so
    finally:
        dashboard.stop()


def test_the_pages_in_a_real_browser_show_the_model_and_follow_a_new_decision(
        served_to_change: tuple[str, FeedbackStore], config: MonitoringConfig, tmp_path) -> None:
    """Headless Chromium (Debian's, driven by Playwright; `make test` installs it): the fleet page lists the champion,
    the model page shows it, a drifting cell and a timeline entry, then a decision and a candidate landing in the
    store show without a reload. Screenshots are kept in test-output/dashboard."""
    from playwright.sync_api import sync_playwright

    url, store = served_to_change
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/")
            page.wait_for_selector("tr[data-model=churn] .champion:text('v1')", timeout=15_000)
            page.screenshot(path=tmp_path / "fleet.png", full_page=True)

            page.goto(url + "/models/churn")
            page.wait_for_selector("#champion:text('v1')", timeout=15_000)
            page.wait_for_selector("#drifting [data-feature=age]", timeout=15_000)
            page.wait_for_selector("#heat .main-svg", timeout=15_000)  # Plotly drew the heat map
            assert page.locator("#timeline li[data-step=stage]").count() >= 1
            page.screenshot(path=tmp_path / "model.png", full_page=True)

            engine = TriggerEngine(config, LogAlertSink())
            with store.pool.connection() as conn:
                engine.manual(conn, "churn", reason="seen in the browser", requested_by="ana", request_id="b-1")
            page.wait_for_selector("#decision-sentence:text('manual request by ana: seen in the browser')",
                                   timeout=20_000)  # the page's next refresh, without a reload
            page.screenshot(path=tmp_path / "model-after-decision.png", full_page=True)

            with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:  # a candidate lands
                from sklearn.linear_model import LogisticRegression

                Registry().register(cur, ModelVersion(model_name="churn", version="v2", stage="candidate"),
                                    serialise(LogisticRegression().fit([[0.0], [1.0]], [0, 1])),
                                    reason="trained for the drift")
            page.wait_for_selector("#timeline li:has-text('registered -> candidate: trained for the drift')",
                                   timeout=20_000)
            page.screenshot(path=tmp_path / "model-after-candidate.png", full_page=True)
            assert not errors, errors
        finally:
            browser.close()
    shots = ("fleet.png", "model.png", "model-after-decision.png", "model-after-candidate.png")
    assert all((tmp_path / name).stat().st_size > 10_000 for name in shots)
    kept = Path(__file__).parents[2] / "test-output" / "dashboard"  # the screenshots outlive pytest's folders
    kept.mkdir(parents=True, exist_ok=True)
    for name in shots:
        shutil.copyfile(tmp_path / name, kept / name)
