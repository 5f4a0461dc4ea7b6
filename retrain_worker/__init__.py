"""The retrain worker: builds training sets from the feedback store, trains, gates and publishes
candidates (later issues)."""
