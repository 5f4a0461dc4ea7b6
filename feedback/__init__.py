"""The feedback store: the prediction/outcome join into PostgreSQL, and the ingest that feeds it."""
