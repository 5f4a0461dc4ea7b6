"""`pitstop models list` and `pitstop models show`: the registry, the gate table and the lineage of a version."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from feedback.store import connect_kwargs
from pitstop import queries
from pitstop.errors import PitstopError
from pitstop.output import json_default
from pitstop.settings import Settings

Say = Callable[[str], None]

_VERSION = """
SELECT v.version, v.stage, v.trigger_id, v.trainer, v.params, v.lineage, v.metrics, v.created_at,
       encode(a.sha256, 'hex'), a.format, a.size_bytes
FROM model_versions v LEFT JOIN model_artifacts a USING (artifact_id)
WHERE v.model_name = %s AND (%s::text IS NULL OR v.version = %s)
ORDER BY v.created_at DESC LIMIT 1
"""
_STAGES = """
SELECT changed_at, from_stage, to_stage, reason FROM model_stage_changes
WHERE model_name = %s AND version = %s ORDER BY change_id
"""
_GATES = """
SELECT set_name, name, passed, observed, threshold, sample_size, sentence FROM model_gate_results
WHERE model_name = %s AND version = %s ORDER BY ordinal
"""

_RUNNING = """
SELECT p.trigger_id, p.worker, p.step, p.detail, p.started_at, p.updated_at FROM retrain_progress p
WHERE p.model_name = %s AND p.step <> 'done'
  AND NOT EXISTS (SELECT 1 FROM retrain_outcomes o WHERE o.trigger_id = p.trigger_id)
ORDER BY p.started_at
"""


def list_models(settings: Settings, model: str | None, *, as_json: bool, say: Say) -> int:
    """Every registered version, newest first per model."""
    with _connect(settings) as conn:
        rows = conn.execute(queries.REGISTRY, {"m": model}).fetchall()
    keys = queries.REGISTRY_KEYS
    if as_json:
        say(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], default=json_default))
        return 0
    if not rows:
        say(f"no registered versions{f' of {model}' if model else ''} yet")
        return 0
    wm = max(12, *(len(r[0]) for r in rows))  # the columns as wide as their longest name
    wv = max(24, *(len(r[1]) for r in rows))
    say(f"{'model':<{wm}} {'version':<{wv}} {'stage':<10} {'created (UTC)':<17} {'gates':<8} {'sha256':<12} trigger")
    for m, version, stage, trigger, _trainer, created, sha, gates in rows:
        say(f"{m:<{wm}} {version:<{wv}} {stage:<10} {created:%Y-%m-%d %H:%M}  {gates or '-':<8} "
            f"{(sha or '-')[:12]:<12} {trigger or '-'}")
    return 0


def show_model(settings: Settings, model: str, version: str | None, *, as_json: bool, say: Say) -> int:
    """One version (the newest by default): its stage history, gate table, lineage and metrics."""
    with _connect(settings) as conn:
        row = conn.execute(_VERSION, (model, version, version)).fetchone()
        running = conn.execute(_RUNNING, (model,)).fetchall()
        if row is None and running and version is None:
            return _show_running(model, running, as_json=as_json, say=say)
        if row is None:
            what = f"{model} {version}" if version else model
            msg = f"{what} is not in the registry; `pitstop models list` shows what is"
            raise PitstopError(msg)
        (v, stage, trigger, trainer, params, lineage, metrics, created, sha, fmt, size) = row
        stages = conn.execute(_STAGES, (model, v)).fetchall()
        gates = conn.execute(_GATES, (model, v)).fetchall()
    doc: dict[str, Any] = {
        "model": model, "version": v, "stage": stage, "trigger_id": trigger, "trainer": trainer, "params": params,
        "created_at": created, "artifact": {"sha256": sha, "format": fmt, "size_bytes": size},
        "stages": [dict(zip(("at", "from", "to", "reason"), s, strict=True)) for s in stages],
        "gates": [dict(zip(("set", "gate", "passed", "observed", "threshold", "n", "sentence"), g, strict=True))
                  for g in gates],
        "lineage": lineage, "metrics": metrics, "training": [dict(zip(_RUNNING_KEYS, r, strict=True)) for r in running],
    }
    if as_json:
        say(json.dumps(doc, default=json_default))
        return 0
    _say_running(running, say)
    say(f"{model} {v}: {stage}; trainer {trainer or '-'}; trigger {trigger or '-'}")
    say(f"  artifact {fmt or '-'} {size or 0:,} bytes, sha256 {sha or '-'}")
    say("  stages:")
    for at, frm, to, reason in stages:
        say(f"    {at:%Y-%m-%d %H:%M}  {frm or '(registered)'} -> {to}: {reason}")
    if gates:
        say("  gates:")
        for set_name, name, passed, _obs, _th, n, sentence in gates:
            mark = "pass" if passed else ("FAIL" if passed is False else "info")
            size_text = f" (n={n:,})" if n is not None else ""
            say(f"    {mark:<4} {set_name:<8} {name:<28} {sentence}{size_text}")
    say("  lineage:")
    for key, value in (lineage or {}).items():
        say(f"    {key}: {json.dumps(value, default=json_default)}")
    return 0


_RUNNING_KEYS = ("trigger_id", "worker", "step", "detail", "started_at", "updated_at")


def _show_running(model: str, running: list[tuple[Any, ...]], *, as_json: bool, say: Say) -> int:
    if as_json:
        say(json.dumps({"model": model, "version": None,
                        "training": [dict(zip(_RUNNING_KEYS, r, strict=True)) for r in running]}, default=json_default))
        return 0
    say(f"{model}: no registered version yet")
    _say_running(running, say)
    return 0


def _say_running(running: list[tuple[Any, ...]], say: Say) -> None:
    """Trainings of the model under way: their latest step (wall clock)."""
    for trigger, worker, step, detail, started, updated in running:
        say(f"training now for trigger {trigger} on {worker or '-'}: {step}: {detail} "
            f"(started {started:%Y-%m-%d %H:%M:%S} UTC, last step {updated:%H:%M:%S})")


def _connect(settings: Settings) -> psycopg.Connection[Any]:
    # a database that does not answer is pitstop.cli's one line, the same for every command
    return psycopg.connect(settings.require_database(), connect_timeout=5, **connect_kwargs(settings.db_schema))


def trail(settings: Settings, model: str, version: str, *, as_json: bool, say: Say) -> int:
    """The chain of one version, from the decision that asked for it to promotion or rollback."""
    with _connect(settings) as conn:
        rows = conn.execute(queries.TRAIL, (model, version)).fetchall()
    if not rows:
        msg = f"{model} {version} has no trail: it is not in the registry; `pitstop models list` shows what is"
        raise PitstopError(msg)
    if as_json:
        say(json.dumps([dict(zip(("recorded_at", "at", "step", "sentence"), r, strict=True)) for r in rows],
                       default=json_default))
        return 0
    say(f"{model} {version}: {len(rows)} steps (times UTC; event time in brackets where the step has one)")
    for recorded, at, step, sentence in rows:
        event = f" [{at:%Y-%m-%d %H:%M}]" if at is not None else ""
        say(f"  {recorded:%Y-%m-%d %H:%M:%S}{event}  {step:<16} {sentence}")
    return 0
