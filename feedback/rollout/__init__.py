"""Rollout: the statistics of shadow, canary and A/B decisions (the controller builds on them)."""
