"""Monitoring: reference profiles, window accumulators, drift statistics, performance metrics, the early-warning
detectors, evaluation, and the monitor round (the models' configuration is feedback/config.py)."""
