"""The Faust app: topics and the thin agents that feed `feedback/`."""
