"""Retrain triggers: the decision rules (pure), the engine (monitoring results -> decisions + outbox), alerts."""
