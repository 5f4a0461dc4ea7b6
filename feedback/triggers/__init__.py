"""Retrain triggers: the decision rules (pure), the calendar in event time, the engine (monitoring results ->
decisions + outbox), and the replay of a history under another configuration."""
