"""The analysts' side of the store: the connection string of their read-only role (migration 020), which reads the
documented views of one schema and nothing else (docs/analysts.md), and DataFrames for the common questions, read
through those views on any connection to the store (the analysts' own included).

>>> import psycopg
>>> from feedback import query
>>> conn = psycopg.connect(query.analyst_url(database_url, "pitstop"))  # doctest: +SKIP
>>> query.labelling_queue(conn, "churn", limit=20)  # doctest: +SKIP
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from feedback.store import analyst_role, connect_kwargs


class AnalystRoleMissing(Exception):
    """The analysts' role does not exist and the configured database user may not create it."""


def analyst_url(database_url: str, schema: str, password: str | None = None) -> str:
    """The ``postgresql://`` URL analysts connect with: the store's address as the role ``<schema>_analyst``, never
    with the operator's password; with ``password`` (PITSTOP_ANALYST_PASSWORD), the role is given it and the URL
    carries it (a server that asks for one needs it).

    Grants the role the schema's views first (creating it when it is missing and this user may), so the URL works
    the moment it is printed; the same call twice is harmless.
    """
    role = analyst_role(schema)
    with psycopg.connect(database_url, connect_timeout=10, **connect_kwargs(schema)) as conn:
        if not conn.execute("SELECT grant_analyst_views()").fetchone()[0]:
            msg = (f"the role {role} does not exist and this database user may not create it: an administrator runs "
                   f"CREATE ROLE {role} LOGIN, then this command again")
            raise AnalystRoleMissing(msg)
        if password is not None:
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    info = {k: v for k, v in conninfo_to_dict(database_url).items() if v is not None}
    info.pop("password", None)
    info.pop("user", None)
    host = info.pop("host", "")
    port = info.pop("port", "")
    dbname = info.pop("dbname", "")
    address = f"[{host}]" if ":" in host else quote(host, safe="")  # an IPv6 address, or a socket folder
    if port:
        address += f":{port}"
    info["options"] = f"-c search_path={schema}"  # whatever defaults the role was given
    query = f"?{urlencode(info, quote_via=quote)}"
    secret = "" if password is None else ":" + quote(password, safe="")
    return f"postgresql://{quote(role, safe='')}{secret}@{address}/{quote(dbname, safe='')}{query}"


# --- DataFrames for the common questions (each reads the documented views only: the analysts' role runs them) ----

_PERFORMANCE = """
SELECT segment, window_start, window_end, metric, value, ci_low, ci_high, status, sample_size, label_coverage
FROM performance_by_window
WHERE model_name = %(model)s AND model_version = %(version)s
  AND window_start >= %(start)s AND window_start < %(end)s
ORDER BY segment, window_start, metric
"""

_DRIFT = """
SELECT model_version, segment, window_start, window_end, metric, value, threshold, p_value, status, sample_size
FROM drift_by_window
WHERE model_name = %(model)s AND feature = %(feature)s AND (%(version)s::text IS NULL OR model_version = %(version)s)
  AND (%(segment)s::text IS NULL OR segment = %(segment)s)
ORDER BY model_version, segment, window_start, metric
"""

# a prediction's confidence: its top class probability (classification), else its score
_CONFIDENCE = """coalesce((SELECT max(p.value::float8) FROM jsonb_each_text(f.probabilities) AS p
                           WHERE jsonb_typeof(f.probabilities -> p.key) = 'number'), f.score)"""

_CONFIDENT_WRONG = f"""
SELECT * FROM (
    SELECT f.prediction_id, f.model_version, f.predicted_at, f.prediction, f.label, {_CONFIDENCE} AS confidence,
           f.segment, f.features
    FROM feedback f
    WHERE f.model_name = %(model)s AND (%(version)s::text IS NULL OR f.model_version = %(version)s)
      AND f.label IS NOT NULL AND f.label <> f.prediction
) wrong
WHERE confidence >= %(confidence)s
ORDER BY confidence DESC, predicted_at DESC
LIMIT %(limit)s
"""

_LABELLING_QUEUE = f"""
SELECT f.prediction_id, f.model_version, f.predicted_at, f.prediction, {_CONFIDENCE} AS confidence, f.segment,
       f.features
FROM feedback f
WHERE f.model_name = %(model)s AND (%(version)s::text IS NULL OR f.model_version = %(version)s)
  AND f.label IS NULL AND {_CONFIDENCE} IS NOT NULL
ORDER BY confidence, predicted_at DESC
LIMIT %(limit)s
"""


def _frame(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> pd.DataFrame:
    with conn.cursor() as cur:
        cur.execute(query, params)
        columns = [c.name for c in cur.description or ()]
        return pd.DataFrame(cur.fetchall(), columns=columns)


def performance(conn: psycopg.Connection[Any], model: str, version: str, start: datetime, end: datetime
                ) -> pd.DataFrame:
    """Version ``version``'s judged windows starting in [start, end), one row per segment, window and metric: the
    value with its confidence interval, status, labelled rows and label coverage (segment ``*``: all traffic)."""
    return _frame(conn, _PERFORMANCE, {"model": model, "version": version, "start": _utc(start, "start"),
                                       "end": _utc(end, "end")})


def drift(conn: psycopg.Connection[Any], model: str, feature: str, *, version: str | None = None,
          segment: str | None = "*") -> pd.DataFrame:
    """A feature's drift over time: every judged window's statistics (PSI and the test's p-value), per version and
    segment (``segment=None``: every segment)."""
    return _frame(conn, _DRIFT, {"model": model, "feature": feature, "version": version, "segment": segment})


def confident_mistakes(conn: psycopg.Connection[Any], model: str, *, version: str | None = None,
                       confidence: float = 0.9, limit: int = 1000) -> pd.DataFrame:
    """Labelled predictions that were wrong though confident (top class probability, or score, at least
    ``confidence``), most confident first: where a model is sure and mistaken."""
    return _frame(conn, _CONFIDENT_WRONG, {"model": model, "version": version, "confidence": confidence,
                                           "limit": limit})


def labelling_queue(conn: psycopg.Connection[Any], model: str, *, version: str | None = None, limit: int = 100
                    ) -> pd.DataFrame:
    """The least confident predictions still without a label, least confident first: the rows a label teaches the
    model most about (uncertainty sampling, seed 003's active learning)."""
    return _frame(conn, _LABELLING_QUEUE, {"model": model, "version": version, "limit": limit})


def _utc(at: datetime, name: str) -> datetime:
    if at.tzinfo is None:
        msg = f"{name} must be timezone-aware (UTC), got {at!r}"
        raise ValueError(msg)
    return at.astimezone(UTC)
