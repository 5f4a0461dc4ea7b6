"""Model artifacts: serialised, stored with their sha256, and loaded only after the digest matches.

scikit-learn models go through skops, whose loader refuses any type it was not told to trust; the types a
model needs are recorded with it when it is stored (by the worker that trained it), and only those are trusted
at load. Other models (river's) use their library's own format, pickle, which is only ever read from this table
after its digest matched (principle 7: nothing unsafe is loaded, never from a message payload).

Artifacts live in PostgreSQL by default, in the transaction of their version's row (one backup holds both);
:class:`ArtifactStore` is the seam a directory or an object store can implement later.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import psycopg

Format = Literal["skops", "pickle"]


class DigestMismatch(Exception):  # noqa: N818 - the name says what happened
    """An artifact's bytes do not hash to its registered sha256: it is refused, never deserialised."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Artifact:
    """A serialised model with what is needed to load it safely."""

    data: bytes
    format: Format
    trusted_types: tuple[str, ...] = ()
    sha256: bytes = field(default=b"")

    def __post_init__(self) -> None:
        if not self.sha256:
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).digest())


@dataclass(frozen=True, slots=True, kw_only=True)
class ArtifactRef:
    """Where an artifact is and what it must hash to."""

    artifact_id: int
    sha256: bytes

    @property
    def hexdigest(self) -> str:
        return self.sha256.hex()


def serialise(model: Any, format: Format = "skops") -> Artifact:  # noqa: A002 - the registry's word
    """A model's artifact; for skops, the types it needs trusted are recorded with it.

    >>> from sklearn.linear_model import LinearRegression
    >>> a = serialise(LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0]))
    >>> a.format, len(a.sha256), a.trusted_types
    ('skops', 32, ())
    """
    if format == "skops":
        import skops.io as sio

        data = sio.dumps(model)
        return Artifact(data=data, format="skops", trusted_types=tuple(sorted(sio.get_untrusted_types(data=data))))
    return Artifact(data=pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL), format="pickle")


def deserialise(artifact: Artifact, *, expected_sha256: bytes) -> Any:
    """The model in ``artifact``, after its bytes hash to ``expected_sha256`` (:class:`DigestMismatch` otherwise).

    >>> from sklearn.linear_model import LinearRegression
    >>> a = serialise(LinearRegression().fit([[0.0], [1.0]], [0.0, 2.0]))
    >>> round(float(deserialise(a, expected_sha256=a.sha256).predict([[2.0]])[0]), 6)
    4.0
    >>> deserialise(Artifact(data=a.data + b" ", format="skops"), expected_sha256=a.sha256)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    feedback.registry.artifacts.DigestMismatch: artifact sha256 ... does not match the registered ...; refused
    """
    actual = hashlib.sha256(artifact.data).digest()
    if actual != expected_sha256:
        msg = (f"artifact sha256 {actual.hex()[:16]}... does not match the registered {expected_sha256.hex()[:16]}...; "
               "refused")
        raise DigestMismatch(msg)
    if artifact.format == "skops":
        import skops.io as sio

        return sio.loads(artifact.data, trusted=list(artifact.trusted_types))
    return pickle.loads(artifact.data)  # noqa: S301 - only from our own table, after the digest matched


class ArtifactStore(Protocol):
    """Where artifacts live; every get checks the digest before returning the bytes."""

    def put(self, cur: psycopg.Cursor[Any], artifact: Artifact) -> ArtifactRef: ...

    def get(self, cur: psycopg.Cursor[Any], ref: ArtifactRef) -> Artifact: ...


class PostgresArtifactStore:
    """Artifacts in ``model_artifacts``, written in the caller's transaction (with their version's row)."""

    def put(self, cur: psycopg.Cursor[Any], artifact: Artifact) -> ArtifactRef:
        row = cur.execute(
            "INSERT INTO model_artifacts (sha256, format, trusted_types, size_bytes, data) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING artifact_id",
            (artifact.sha256, artifact.format, list(artifact.trusted_types), len(artifact.data), artifact.data),
        ).fetchone()
        assert row is not None
        return ArtifactRef(artifact_id=int(row[0]), sha256=artifact.sha256)

    def get(self, cur: psycopg.Cursor[Any], ref: ArtifactRef) -> Artifact:
        row = cur.execute("SELECT data, format, trusted_types FROM model_artifacts WHERE artifact_id = %s",
                          (ref.artifact_id,)).fetchone()
        if row is None:
            msg = f"artifact {ref.artifact_id} is not in the registry"
            raise LookupError(msg)
        data, fmt, trusted = row
        actual = hashlib.sha256(bytes(data)).digest()
        if actual != ref.sha256:
            msg = (f"artifact {ref.artifact_id}: sha256 {actual.hex()[:16]}... does not match the registered "
                   f"{ref.sha256.hex()[:16]}...; refused")
            raise DigestMismatch(msg)
        return Artifact(data=bytes(data), format=fmt, trusted_types=tuple(trusted or ()), sha256=actual)
