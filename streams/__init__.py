"""The Faust apps, the only place that imports Faust: the ingest worker's (app.py: predictions and outcomes into the
feedback store, the monitor round) and the rollout worker's (rollout_app.py: candidates, the rollout tick). Each
agent decodes, makes one call into `feedback/` and emits; `python -m streams` starts either."""
