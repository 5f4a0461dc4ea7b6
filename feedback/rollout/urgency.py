"""Whether waiting costs: the champion confirmed degraded in the episode a candidate answers.

A candidate answers a change (its trigger's change point, in its lineage). When the monitor fired a drift or
performance decision of that same change on the champion's own windows, the champion is known to be worse than its
baseline now, and every hour a better candidate waits is served by it. The shadow may then pass as soon as its
paired test is conclusive, and the ramp may start at a larger share and advance on evidence alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from feedback.registry.versions import Registry
from feedback.rollout.rules import champion_degraded

# a fired decision of a confirmed drop on the champion's windows, of the change the candidate answers
_DEGRADED = """
SELECT kind, evidence FROM retrain_decisions
WHERE model_name = %s AND model_version = %s AND change_point = %s AND status = 'fired'
  AND kind IN ('drift', 'performance')
ORDER BY fired_at DESC LIMIT 1
"""


def episode(cur: psycopg.Cursor[Any], registry: Registry, model: str, version: str) -> datetime | None:
    """The change point of the trigger the version answered (None: none, or a version registered by hand)."""
    found = registry.get(cur, model, version)
    at = found.lineage.get("change_point") if found is not None else None
    return datetime.fromisoformat(at) if isinstance(at, str) else None


def degradation(cur: psycopg.Cursor[Any], registry: Registry, model: str, version: str,
                champion: str | None) -> str | None:
    """The sentence of the champion confirmed degraded in the episode ``version`` answers, or None (no change
    point, no champion, or no fired drift or performance decision of that change on the champion's windows).
    ``cur`` returns rows as tuples (the registry's cursor)."""
    change = episode(cur, registry, model, version)
    if change is None or champion is None:
        return None
    row = cur.execute(_DEGRADED, (model, champion, change)).fetchone()
    if row is None:
        return None
    kind, evidence = row
    return champion_degraded(champion, kind, evidence, change)


def answers_later_change(cur: psycopg.Cursor[Any], registry: Registry, model: str, version: str,
                         than: str) -> bool:
    """Whether ``version`` answers a change found after the one ``than`` (a ramp's challenger) answers: one
    episode, one ramp; a later episode's candidate does not wait for an earlier episode's ramp."""
    change = episode(cur, registry, model, version)
    ramped = episode(cur, registry, model, than)
    return change is not None and (ramped is None or change > ramped)
