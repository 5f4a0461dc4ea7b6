"""The retrain worker: answers retrain triggers with point-in-time training sets from the feedback store, recency
weights, budgeted trainers, offline gates against the champion and a frozen held-out set, the model pool, and
publishes each candidate through the outbox."""
