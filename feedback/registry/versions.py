"""Model versions and their stages: a version moves only along allowed transitions, each move a row with its reason.

    candidate -> shadow -> canary -> champion -> previous -> archived
         \\          \\         \\                  ^  |
          +-> rejected <-------+----- (rollback)   +--+ (back to champion)
          +-> champion (promotion = "after-gates", until the rollout lands)
    previous -> candidate: a past champion proposed again by the model pool (concepts recur)

Promoting a version to champion moves the current champion to ``previous`` in the same transaction (one
champion per model, enforced by a unique index too).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb

from feedback.registry.artifacts import Artifact, ArtifactRef, ArtifactStore, PostgresArtifactStore, deserialise

Stage = Literal["candidate", "shadow", "canary", "champion", "previous", "rejected", "archived"]

#: every allowed move; anything else is refused (no MLflow-style any-stage-to-any-stage)
TRANSITIONS: Mapping[str, frozenset[str]] = {
    "candidate": frozenset({"shadow", "rejected", "champion", "archived"}),
    "shadow": frozenset({"canary", "rejected", "archived"}),
    "canary": frozenset({"champion", "rejected", "archived"}),  # archived: its ramp superseded by a later episode
    "champion": frozenset({"previous"}),
    "previous": frozenset({"champion", "archived", "candidate"}),  # candidate: proposed again by the model pool
    "rejected": frozenset({"archived"}),
    "archived": frozenset(),
}


class StageError(ValueError):
    """A move the registry does not allow, or of a version it does not hold."""


def check_move(from_stage: str, to_stage: str) -> None:
    """Raise :class:`StageError` unless ``from_stage -> to_stage`` is allowed.

    >>> check_move("candidate", "shadow")
    >>> check_move("rejected", "champion")
    Traceback (most recent call last):
    ...
    feedback.registry.versions.StageError: a rejected version cannot become champion (allowed: archived)
    """
    allowed = TRANSITIONS.get(from_stage)
    if allowed is None:
        msg = f"unknown stage {from_stage!r}"
        raise StageError(msg)
    if to_stage not in allowed:
        msg = (f"a {from_stage} version cannot become {to_stage} "
               f"(allowed: {', '.join(sorted(allowed)) or 'nothing, it is final'})")
        raise StageError(msg)


@dataclass(frozen=True, slots=True, kw_only=True)
class GateRecord:
    """One offline gate's result as the registry keeps it."""

    name: str
    set_name: str
    passed: bool | None
    observed: float | None
    threshold: float | None
    sample_size: int | None
    sentence: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelVersion:
    """A registered version."""

    model_name: str
    version: str
    stage: Stage
    trigger_id: str | None = None
    trainer: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    lineage: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    artifact: ArtifactRef | None = None


_SELECT = """
SELECT v.model_name, v.version, v.stage, v.trigger_id, v.trainer, v.params, v.lineage, v.metrics, v.artifact_id,
       a.sha256
FROM model_versions v LEFT JOIN model_artifacts a USING (artifact_id)
"""


class Registry:
    """Model versions in PostgreSQL; every write in the caller's transaction (with its outbox row, later)."""

    def __init__(self, artifacts: ArtifactStore | None = None) -> None:
        self.artifacts = artifacts or PostgresArtifactStore()

    def register(self, cur: psycopg.Cursor[Any], version: ModelVersion, artifact: Artifact | None, *,
                 reason: str, gates: Sequence[GateRecord] = ()) -> ModelVersion:
        """Store a new version (as ``version.stage``), its artifact and gate results; the first stage row says why."""
        ref = self.artifacts.put(cur, artifact) if artifact is not None else None
        cur.execute(
            "INSERT INTO model_versions (model_name, version, stage, trigger_id, trainer, params, lineage, metrics,"
            " artifact_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (version.model_name, version.version, version.stage, version.trigger_id, version.trainer,
             Jsonb(dict(version.params)), Jsonb(dict(version.lineage)), Jsonb(dict(version.metrics)),
             ref.artifact_id if ref else None),
        )
        cur.execute("INSERT INTO model_stage_changes (model_name, version, from_stage, to_stage, reason) "
                    "VALUES (%s, %s, NULL, %s, %s)", (version.model_name, version.version, version.stage, reason))
        for i, g in enumerate(gates):
            cur.execute(
                "INSERT INTO model_gate_results (model_name, version, ordinal, name, set_name, passed, observed,"
                " threshold, sample_size, sentence) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (version.model_name, version.version, i, g.name, g.set_name, g.passed, g.observed, g.threshold,
                 g.sample_size, g.sentence))
        return ModelVersion(**{**_fields(version), "artifact": ref})

    def get(self, cur: psycopg.Cursor[Any], model: str, version: str) -> ModelVersion | None:
        row = cur.execute(f"{_SELECT} WHERE v.model_name = %s AND v.version = %s", (model, version)).fetchone()
        return None if row is None else _version(row)

    def champion(self, cur: psycopg.Cursor[Any], model: str) -> ModelVersion | None:
        """The model's champion (the MLflow-style alias ``champion``), if it has one."""
        row = cur.execute(f"{_SELECT} WHERE v.model_name = %s AND v.stage = 'champion'", (model,)).fetchone()
        return None if row is None else _version(row)

    def past_champions(self, cur: psycopg.Cursor[Any], model: str, limit: int = 3) -> list[ModelVersion]:
        """The model's most recent former champions that are still loadable (stage ``previous``), newest first."""
        rows = cur.execute(
            f"""{_SELECT}
            JOIN (SELECT version, max(change_id) AS last FROM model_stage_changes
                  WHERE model_name = %s AND to_stage = 'champion' GROUP BY version) c USING (version)
            WHERE v.model_name = %s AND v.stage = 'previous' AND v.artifact_id IS NOT NULL
            ORDER BY c.last DESC LIMIT %s""", (model, model, limit)).fetchall()
        return [_version(r) for r in rows]

    def move(self, cur: psycopg.Cursor[Any], model: str, version: str, to_stage: Stage, *, reason: str) -> None:
        """Move a version to ``to_stage`` with a reason; to champion, the current champion becomes ``previous``."""
        row = cur.execute("SELECT stage FROM model_versions WHERE model_name = %s AND version = %s FOR UPDATE",
                          (model, version)).fetchone()
        if row is None:
            msg = f"{model} {version} is not in the registry"
            raise StageError(msg)
        check_move(row[0], to_stage)
        if to_stage == "champion":
            current = self.champion(cur, model)
            if current is not None and current.version != version:
                self._set(cur, model, current.version, "champion", "previous", f"replaced by {version}: {reason}")
        self._set(cur, model, version, row[0], to_stage, reason)

    def load(self, cur: psycopg.Cursor[Any], version: ModelVersion) -> Any:
        """The version's model, from the registry only, after its digest matched."""
        if version.artifact is None:
            msg = f"{version.model_name} {version.version} has no artifact"
            raise LookupError(msg)
        artifact = self.artifacts.get(cur, version.artifact)
        return deserialise(artifact, expected_sha256=version.artifact.sha256)

    def _set(self, cur: psycopg.Cursor[Any], model: str, version: str, from_stage: str, to_stage: str,
             reason: str) -> None:
        cur.execute("UPDATE model_versions SET stage = %s, updated_at = now() WHERE model_name = %s AND version = %s",
                    (to_stage, model, version))
        cur.execute("INSERT INTO model_stage_changes (model_name, version, from_stage, to_stage, reason) "
                    "VALUES (%s, %s, %s, %s, %s)", (model, version, from_stage, to_stage, reason))


def _fields(v: ModelVersion) -> dict[str, Any]:
    return {k: getattr(v, k) for k in ModelVersion.__dataclass_fields__}


def _version(row: Sequence[Any]) -> ModelVersion:
    model, version, stage, trigger, trainer, params, lineage, metrics, artifact_id, sha = row
    ref = None if artifact_id is None else ArtifactRef(artifact_id=int(artifact_id), sha256=bytes(sha))
    return ModelVersion(model_name=model, version=version, stage=stage, trigger_id=trigger, trainer=trainer,
                        params=params or {}, lineage=lineage or {}, metrics=metrics or {}, artifact=ref)
