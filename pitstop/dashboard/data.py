"""What the dashboard shows, read from the store: the fleet, and one model's lifecycle, drift, performance and trail.

Every function takes a connection whose search path is the store's schema and returns JSON-able documents (times in
RFC 3339 UTC). The registry, trail, decisions and performance are read with the queries the command line uses
(pitstop/queries.py), so the page and `pitstop models`, `pitstop triggers list` and `pitstop monitor` agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from feedback.config import ModelConfig, MonitoringConfig
from feedback.triggers.calendar import parse_schedule
from pitstop import queries

#: columns of the drift heat map: the newest windows of the span
HEAT_WINDOWS = 24

_DEPLOYMENT = """
SELECT d.champion, d.challenger, d.challenger_share, d.state, d.decided_at, r.state AS rollout_state, r.step
FROM deployments d LEFT JOIN active_rollouts r USING (model_name)
WHERE d.model_name = %s
"""
_CHAMPION = "SELECT version FROM model_versions WHERE model_name = %s AND stage = 'champion'"
_LAST_TRAINING = """
SELECT o.recorded_at, o.outcome, o.sentence FROM retrain_outcomes o WHERE o.model_name = %s
ORDER BY o.recorded_at DESC LIMIT 1
"""
_EVENT_NOW = """
SELECT max(window_start + window_s * interval '1 second') FROM window_counts
WHERE model_name = %s AND segment = '*' AND series = '__rows__'
"""
_LIVE_VERSION = """
SELECT model_version FROM performance_by_window WHERE model_name = %s AND segment = '*'
ORDER BY window_start DESC, model_version DESC LIMIT 1
"""
# the features drifting in the newest judged window (the newest window may still wait for its rows)
_DRIFT_SHARE = """
SELECT count(*) FILTER (WHERE status = 'drift'), count(*) FILTER (WHERE status <> 'unjudged')
FROM drift_by_window
WHERE model_name = %(m)s AND model_version = %(v)s AND segment = '*' AND metric = 'drift'
  AND left(feature, 2) <> '__'
  AND window_start = (SELECT max(window_start) FROM drift_by_window
                      WHERE model_name = %(m)s AND model_version = %(v)s AND segment = '*' AND metric = 'drift'
                        AND status <> 'unjudged' AND left(feature, 2) <> '__')
"""
_LATEST_PERFORMANCE = """
SELECT window_start, metric, value, ci_low, ci_high, threshold, status, sample_size, label_coverage
FROM performance_by_window
WHERE model_name = %s AND model_version = %s AND segment = '*' AND metric = %s AND status <> 'unjudged'
ORDER BY window_start DESC LIMIT 1
"""
_DEAD_LETTERS_HOUR = "SELECT count(*) FROM dead_letters WHERE received_at > now() - interval '1 hour'"
_DEAD_LETTER_REASONS = """
SELECT received_at, source_topic, reason FROM dead_letters ORDER BY received_at DESC LIMIT 10
"""
_HEAT = """
SELECT feature, window_start, status, value, p_value, sentence FROM drift_by_window
WHERE model_name = %s AND model_version = %s AND segment = '*' AND metric = 'drift' AND left(feature, 2) <> '__'
  AND window_start >= (SELECT min(w) FROM (SELECT DISTINCT window_start AS w FROM drift_by_window
                                           WHERE model_name = %s AND model_version = %s AND segment = '*'
                                           ORDER BY 1 DESC LIMIT %s) newest)
ORDER BY feature, window_start
"""
_PERFORMANCE_SERIES = """
SELECT model_version, window_start, value, ci_low, ci_high, status, sample_size, label_coverage
FROM performance_by_window
WHERE model_name = %s AND segment = '*' AND metric = %s
ORDER BY model_version, window_start
"""
# the decision changed last (decision times are event times, and several share the newest)
_LATEST_DECISION = """
SELECT decision_id FROM retrain_decisions WHERE model_name = %s ORDER BY updated_at DESC, decided_at DESC LIMIT 1
"""


class UnknownModel(LookupError):
    """A model the configuration does not hold."""


def fleet(conn: psycopg.Connection[Any], config: MonitoringConfig) -> dict[str, Any]:
    """Every configured model in one row each, and the dead letters of the last hour."""
    rows = [_summary(conn, model) for _, model in sorted(config.models.items())]
    dead = conn.execute(_DEAD_LETTERS_HOUR).fetchone()[0]
    return {"models": rows, "dead_letters_last_hour": int(dead)}


def _summary(conn: psycopg.Connection[Any], model: ModelConfig) -> dict[str, Any]:
    name = model.name
    life = _lifecycle(conn, name)
    live = life["champion"] or _one(conn, _LIVE_VERSION, (name,))
    drifting = judged = 0
    performance = None
    if live is not None:
        drifting, judged = conn.execute(_DRIFT_SHARE, {"m": name, "v": live}).fetchone()
        row = conn.execute(_LATEST_PERFORMANCE, (name, live, model.metric)).fetchone()
        if row is not None:
            performance = dict(zip(("window_start", "metric", "value", "ci_low", "ci_high", "threshold", "status",
                                    "sample_size", "label_coverage"), row, strict=True))
    training = conn.execute(_LAST_TRAINING, (name,)).fetchone()
    return {
        "model": name, **life, "live_version": live,
        "last_training": None if training is None else dict(zip(("at", "outcome", "sentence"), training,
                                                                  strict=True)),
        "next_calendar_slot": _next_slot(conn, model),
        "features_drifting": drifting, "features_judged": judged,
        "drift_share": drifting / judged if judged else None,
        "performance": performance,
    }


def _lifecycle(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    row = conn.execute(_DEPLOYMENT, (name,)).fetchone()
    if row is None:
        return {"champion": _one(conn, _CHAMPION, (name,)), "challenger": None, "challenger_share": 0.0,
                "stage": None, "step": None}
    champion, challenger, share, state, _, rollout_state, step = row
    return {"champion": champion, "challenger": challenger, "challenger_share": share if challenger else 0.0,
            "stage": rollout_state or state, "step": step}


def _next_slot(conn: psycopg.Connection[Any], model: ModelConfig) -> datetime | None:
    """The calendar's next slot after the model's event time (its newest window's end), if it has a calendar."""
    if not model.triggers.calendar:
        return None
    now = _one(conn, _EVENT_NOW, (model.name,))
    return None if now is None else parse_schedule(model.triggers.calendar).next_slot(now)


def model_page(conn: psycopg.Connection[Any], config: MonitoringConfig, name: str) -> dict[str, Any]:
    """One model: its lifecycle and latest decision, the drift heat map of its live version, performance over time
    per version with intervals and coverage, the trail of its versions, and the dead letters' latest reasons."""
    model = config.model(name)
    if model is None:
        msg = f"no model {name!r} in the configuration (configured: {', '.join(sorted(config.models)) or 'none'})"
        raise UnknownModel(msg)
    summary = _summary(conn, model)
    decisions = [dict(zip(queries.DECISION_KEYS, r, strict=True))
                 for r in conn.execute(queries.DECISIONS, (name, 20)).fetchall()]
    live = summary["live_version"]
    heat = [] if live is None else [
        dict(zip(("feature", "window_start", "status", "psi", "p_value", "sentence"), r, strict=True))
        for r in conn.execute(_HEAT, (name, live, name, live, HEAT_WINDOWS)).fetchall()]
    series: dict[str, list[dict[str, Any]]] = {}
    for version, *rest in conn.execute(_PERFORMANCE_SERIES, (name, model.metric)).fetchall():
        series.setdefault(version, []).append(dict(zip(
            ("window_start", "value", "ci_low", "ci_high", "status", "sample_size", "label_coverage"), rest,
            strict=True)))
    versions = [dict(zip(queries.REGISTRY_KEYS, r, strict=True))
                for r in conn.execute(queries.REGISTRY, {"m": name}).fetchall()]
    timeline = []
    for v in versions:
        for row in conn.execute(queries.TRAIL, (name, v["version"])).fetchall():
            timeline.append({"version": v["version"], **dict(zip(("recorded_at", "at", "step", "sentence"), row,
                                                                 strict=True))})
    trained = {e["sentence"] for e in timeline if e["step"] == "decision"}
    for d in decisions:  # the decisions no version answers yet (the trail holds those that one does)
        line = f"{d['kind']} ({d['urgency']}, {d['status']}): {d['sentence']}"
        if not any(t.startswith(line) for t in trained):
            timeline.append({"version": d["model_version"] or "-", "recorded_at": d["decided_at"],
                             "at": d["fired_at"] or d["decided_at"], "step": "decision", "sentence": line})
    timeline.sort(key=lambda e: e["at"] or e["recorded_at"], reverse=True)
    dead = [dict(zip(("received_at", "topic", "reason"), r, strict=True))
            for r in conn.execute(_DEAD_LETTER_REASONS).fetchall()]
    latest = _one(conn, _LATEST_DECISION, (name,))
    newest = next((d for d in decisions if d["decision_id"] == latest), decisions[0] if decisions else None)
    return {"model": name, "metric": model.metric, "summary": summary,
            "latest_decision": newest, "decisions": decisions, "drift": heat,
            "performance": series, "versions": versions, "timeline": timeline[:200], "dead_letters": dead}


def _one(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...]) -> Any:
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]
