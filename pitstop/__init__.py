"""Pitstop: the operator's side (settings, the local stack, the CLI, the producer client, the demo)."""
