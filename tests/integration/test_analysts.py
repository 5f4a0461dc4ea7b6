"""The analysts' role: from the URL `pitstop analyst-url` prints, the documented views read the stored rows, and
nothing can be written, dropped or read beside them (artifact bytes, raw dead letters, another store's schema)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from feedback.query import AnalystRoleMissing, analyst_url
from feedback.store import FeedbackStore, analyst_role, drop_store, migrate
from tests.factories import outcome, prediction


@pytest.fixture
def other_schema(services) -> Iterator[str]:
    name = f"t_other_{uuid.uuid4().hex[:8]}"
    migrate(services.database_url, name)
    yield name
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        drop_store(conn, name)


def _views(services, schema: str) -> set[str]:
    with psycopg.connect(services.database_url) as conn:
        return {v for (v,) in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = %s", (schema,))}


def test_the_analyst_reads_the_views_and_nothing_else(services, db_schema, other_schema) -> None:
    with FeedbackStore(services.database_url, db_schema) as store:
        store.write_batch([prediction(1), prediction(2)], [outcome(1, label=0)])
    url = analyst_url(services.database_url, db_schema)
    assert url == analyst_url(services.database_url, db_schema)  # twice: harmless, the same
    assert url.startswith(f"postgresql://{analyst_role(db_schema)}@") and "password" not in url
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_schema()").fetchone() == (analyst_role(db_schema),
                                                                                      db_schema)
        granted = conn.execute("SELECT analyst_views()").fetchone()[0]
        assert set(granted) == _views(services, db_schema), "a view neither granted nor listed as internal"
        for view in granted:
            conn.execute(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(view)))
        rows = conn.execute("SELECT prediction_id, label FROM feedback ORDER BY prediction_id").fetchall()
        assert rows == [("p-1", 0), ("p-2", None)]
        conn.execute("SET default_transaction_read_only = off")  # its own setting is no defence: the rights are
        forbidden = [
            "INSERT INTO predictions (prediction_id) VALUES ('x')",
            "UPDATE current_labels SET label = '1'",
            "DELETE FROM active_rollouts",  # an updatable view: only the rights stop it
            "CREATE TABLE scratch (i int)",
            f'DROP SCHEMA "{db_schema}" CASCADE',
            "SELECT data FROM model_artifacts",
            "SELECT raw FROM dead_letters",
            "SELECT * FROM window_counts",
            "SELECT * FROM predictions",
            sql.SQL("SELECT * FROM {}.feedback").format(sql.Identifier(other_schema)),
            sql.SQL("SELECT * FROM {}.predictions").format(sql.Identifier(other_schema)),
            "SELECT grant_analyst_views()",
        ]
        for statement in forbidden:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(services.database_url, options=f"-c search_path={db_schema}") as conn:
        assert conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 2


def test_a_database_user_that_may_not_create_roles_migrates_and_is_told_what_to_do(services) -> None:
    """On a managed database the store's user often lacks CREATEROLE: the migrations go through, and analyst-url
    says what an administrator must run; once the role exists, it gets its grants."""
    owner = f"t_owner_{uuid.uuid4().hex[:8]}"
    schema = f"t_norole_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(services.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(owner)))
        dbname = admin.execute("SELECT current_database()").fetchone()[0]
        admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(dbname),
                                                                         sql.Identifier(owner)))
    owner_url = psycopg.conninfo.make_conninfo(services.database_url, user=owner)
    try:
        migrate(owner_url, schema)
        with pytest.raises(AnalystRoleMissing, match=f"CREATE ROLE {analyst_role(schema)} LOGIN"):
            analyst_url(owner_url, schema)
        with psycopg.connect(services.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(analyst_role(schema))))
        url = analyst_url(owner_url, schema)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM feedback").fetchone() == (0,)
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as admin:
            drop_store(admin, schema)
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(owner)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(owner)))


def test_the_command_prints_one_url_and_fails_in_one_line(services, db_schema, pitstop_main) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema)
    done = subprocess.run([sys.executable, "-m", "pitstop.cli", "analyst-url"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout == analyst_url(services.database_url, db_schema) + "\n", done
    # with PITSTOP_ANALYST_PASSWORD (docker-compose's Grafana) migrate gives the role its password, and the URL has it
    secret = {**env, "PITSTOP_ANALYST_PASSWORD": "s3cret/:@"}
    migrated = pitstop_main(secret, "migrate", "--json")
    assert migrated.returncode == 0, migrated
    assert json.loads(migrated.stdout) == {
        "schema": db_schema, "applied": [], "analyst_password_set": True,
        "sentence": f"schema {db_schema}: up to date; schema {db_schema}: the analysts' role has the password of "
                    "PITSTOP_ANALYST_PASSWORD"}
    with psycopg.connect(services.database_url) as conn:
        stored = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s",
                              (analyst_role(db_schema),)).fetchone()[0]
    assert stored is not None and stored.startswith("SCRAM-SHA-256$")
    answer = json.loads(pitstop_main(secret, "analyst-url", "--json").stdout)
    assert (answer["schema"], answer["role"]) == (db_schema, analyst_role(db_schema))
    url = answer["url"]
    assert psycopg.conninfo.conninfo_to_dict(url)["password"] == "s3cret/:@"
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == analyst_role(db_schema)
    env["PITSTOP_DB_SCHEMA"] = "t_never_migrated"
    done = subprocess.run([sys.executable, "-m", "pitstop.cli", "analyst-url"], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done
    assert "run `pitstop migrate` first" in done.stderr, done.stderr


def _questions() -> list[str]:
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "analysts.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def test_the_ten_questions_and_the_dataframes_answer_as_the_analyst(services, db_schema) -> None:
    """Every query of docs/analysts.md runs as the analysts' role on a store with a drifting model (decided on by
    the trigger engine), and answers what the stored rows say; so do feedback.query's DataFrames."""
    from datetime import timedelta

    import pandas as pd

    from feedback import query
    from feedback.alerts import LogAlertSink
    from feedback.config import parse_config
    from feedback.monitoring.round import Monitor
    from feedback.monitoring.windows import WindowUpdater
    from feedback.triggers.engine import TriggerEngine
    from tests.factories import DRIFT_TOML, T0, drifting_hour

    config = parse_config(DRIFT_TOML)
    preds, labels = [], []
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store:
        monitor, engine = Monitor(store, store.windows), TriggerEngine(config, LogAlertSink())
        for hour in range(8):
            p, o = drifting_hour(hour, drift=True)
            unlabelled = {e.prediction_id for e in p[:40]}  # the newest rows wait for their labels
            o = [e for e in o if hour < 7 or e.prediction_id not in unlabelled]
            store.write_batch(p, o)
            preds += p
            labels += o
            monitor.run_once(after=lambda conn, evs, at=T0 + timedelta(hours=hour + 1): engine.run(conn, evs,
                                                                                                 wall_now=at))
    questions = _questions()
    assert len(questions) == 10
    with psycopg.connect(analyst_url(services.database_url, db_schema)) as conn:
        answers = [conn.execute(q).fetchall() for q in questions]
        assert all(answers[:9]), [i + 1 for i, a in enumerate(answers) if not a]

        truth = pd.DataFrame({"id": [e.prediction_id for e in preds], "prediction": [e.prediction for e in preds],
                              "confidence": [max(e.probabilities.values()) for e in preds],
                              "at": [e.predicted_at for e in preds]}).merge(
            pd.DataFrame({"id": [e.prediction_id for e in labels], "label": [e.label for e in labels]}),
            on="id", how="left")
        labelled = truth[truth["label"].notna()]
        [(_, _, n, k, coverage, _)] = answers[0]
        assert (n, k) == (len(truth), len(labelled)) and float(coverage) == round(len(labelled) / len(truth), 3)
        by_day = {(v, day): float(acc) for v, day, _, acc in answers[1]}
        assert by_day == {("v1", pd.Timestamp(T0).floor("D").to_pydatetime()): pytest.approx(
            (labelled["label"] == labelled["prediction"]).mean())}
        drifting = {row[2] for row in answers[3]}
        assert drifting == {"age", "tenure"}, drifting  # the two features drifting_hour shifts

        wrong = labelled[(labelled["label"] != labelled["prediction"]) & (labelled["confidence"] >= 0.9)]
        mistakes = query.confident_mistakes(conn, "churn", confidence=0.9, limit=100_000)
        assert set(mistakes["prediction_id"]) == set(wrong["id"]) and mistakes["confidence"].is_monotonic_decreasing
        assert [r[0] for r in answers[6]] == list(mistakes["prediction_id"][:50])
        queue = query.labelling_queue(conn, "churn", limit=10)
        waiting = truth[truth["label"].isna()].sort_values(["confidence", "at"], ascending=[True, False])
        assert list(queue["prediction_id"]) == list(waiting["id"][:10])
        assert [r[0] for r in answers[7]][:10] == list(queue["prediction_id"])

        windows = query.performance(conn, "churn", "v1", T0, T0 + timedelta(hours=8))
        accuracy = windows[(windows["segment"] == "*") & (windows["metric"] == "accuracy")]
        assert list(accuracy["value"]) == [r[2] for r in answers[2]]
        age = query.drift(conn, "churn", "age")
        psi = age[age["metric"] == "psi"]
        assert [round(v, 4) for v in psi["value"]] == [float(r[1]) for r in answers[4]]
        assert psi["status"].iloc[-1] == "drift" and psi["status"].iloc[0] != "drift"
        with pytest.raises(ValueError, match="timezone-aware"):
            query.performance(conn, "churn", "v1", T0.replace(tzinfo=None), T0 + timedelta(hours=8))

        # the Grafana dashboard's panels on the feedback store read as this role too (Grafana's time filter macro
        # stands for a range holding every row)
        for panel in _dashboard_panels("pitstop-feedback"):
            rows = conn.execute(panel["targets"][0]["rawSql"].replace("$__timeFilter(window_start)", "true")).fetchall()
            assert rows or "Timeline" in panel["title"] or "Fleet" in panel["title"], panel["title"]


def _dashboard_panels(uid: str) -> list[dict]:
    import json
    from pathlib import Path

    dashboard = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "dashboards" / "pitstop.json")
                           .read_text())
    return [p for p in dashboard["panels"] if p["datasource"]["uid"] == uid]


def test_the_dashboards_prometheus_panels_ask_for_series_the_workers_serve() -> None:
    import re

    from prometheus_client import REGISTRY

    import feedback.metrics  # noqa: F401 - registers the series

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    served = {f.name + suffix for f in REGISTRY.collect() if f.name.startswith("pitstop_")
              for suffix in suffixes.get(f.type, ())}
    panels = _dashboard_panels("pitstop-prometheus")
    assert len(panels) >= 6
    for panel in panels:
        for target in panel["targets"]:
            names = set(re.findall(r"pitstop_[a-z_]+", target["expr"]))
            assert names and names <= served, (panel["title"], names - served)
