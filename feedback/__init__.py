"""Everything Pitstop knows and decides, over PostgreSQL, in the loop's order (no Kafka client, no Faust):

    config.py    the models' configuration (pitstop.toml), shared by every room below and the retrain worker
    topics.py    topic names, defined once
    outbox.py    events written in the transaction of their decision, published after commit
    alerts.py    alerts to a person (a log, a webhook)
    store/       the join: predictions and outcomes into the feedback store, the ingest, dead letters
    monitoring/  reference profiles, window accumulators, drift and performance statistics, the monitor round
    triggers/    the retrain decision rules (pure) and the engine that records decisions
    registry/    model versions, stages, lineage, gate records, artifacts checked by sha256
    rollout/     shadow evaluation, the ramp controller and its statistics, the rollout tick
"""
