"""Topic names, defined once: each topic's name under the deployment's prefix (``pitstop.`` by default).

The writers put a topic's bare name on an outbox row (feedback/outbox.py); the relay adds the prefix when it
publishes. The workers, the CLI and the client read the prefixed names from :class:`Topics`.
"""

from __future__ import annotations

from dataclasses import dataclass

PREDICTIONS = "predictions"
OUTCOMES = "outcomes"
DEAD_LETTER = "dead-letter"
#: a compact summary of each monitor round's window evaluations
MONITORING = "monitoring"
RETRAIN_TRIGGERS = "retrain-triggers"
CANDIDATES = "candidates"
#: which versions serve each model and the challenger's share (pitstop/router.py); compacted
DEPLOYMENTS = "deployments"


@dataclass(frozen=True, slots=True, kw_only=True)
class Topics:
    """Topic names, all under one prefix.

    >>> Topics(prefix="acme.").retrain_triggers
    'acme.retrain-triggers'
    """

    prefix: str = "pitstop."

    @property
    def predictions(self) -> str:
        return self.prefix + PREDICTIONS

    @property
    def outcomes(self) -> str:
        return self.prefix + OUTCOMES

    @property
    def dead_letter(self) -> str:
        return self.prefix + DEAD_LETTER

    @property
    def monitoring(self) -> str:
        return self.prefix + MONITORING

    @property
    def retrain_triggers(self) -> str:
        return self.prefix + RETRAIN_TRIGGERS

    @property
    def candidates(self) -> str:
        return self.prefix + CANDIDATES

    @property
    def deployments(self) -> str:
        """Which versions serve each model and the challenger's share (pitstop/router.py)."""
        return self.prefix + DEPLOYMENTS

    def all(self) -> tuple[str, ...]:
        return (self.predictions, self.outcomes, self.dead_letter, self.monitoring, self.retrain_triggers,
                self.candidates, self.deployments)

    def compacted(self) -> tuple[str, ...]:
        """Topics whose newest message per key is all that matters: created with ``cleanup.policy=compact``."""
        return (self.deployments,)
