"""The SQL the command line and the dashboard share, so that the page and the commands agree."""

# every registered version, newest first per model (one model with ``m``)
REGISTRY = """
SELECT model_name, version, stage, trigger_id, trainer, created_at, encode(sha256, 'hex'), gates_passed
FROM model_registry WHERE (%(m)s::text IS NULL OR model_name = %(m)s)
ORDER BY model_name, created_at DESC, version DESC
"""
REGISTRY_KEYS = ("model", "version", "stage", "trigger_id", "trainer", "created_at", "sha256", "gates_passed")

# a version's chain, from the decision that asked for it to its promotion or rollback
TRAIL = """
SELECT recorded_at, at, step, sentence FROM version_trail WHERE model_name = %s AND version = %s
ORDER BY recorded_at, source, seq
"""

# a model's retrain decisions, newest first
DECISIONS = """
SELECT v.decision_id, v.model_version, v.kind, v.urgency, v.status, v.decided_at, v.fired_at, v.change_point,
       v.labels_since_change, v.labels_needed, v.sentence, v.suppressed_by, v.outcome, v.outcome_sentence,
       v.published_at, EXISTS (SELECT 1 FROM outbox x WHERE x.event_id = v.decision_id) AS in_outbox
FROM retrain_decisions_view v
WHERE v.model_name = %s
ORDER BY v.decided_at DESC, v.decision_id
LIMIT %s
"""
DECISION_KEYS = ("decision_id", "model_version", "kind", "urgency", "status", "decided_at", "fired_at",
                 "change_point", "labels_since_change", "labels_needed", "sentence", "suppressed_by", "outcome",
                 "outcome_sentence", "published_at", "in_outbox")
