"""Monitoring: the model config, reference profiles, window accumulators, drift statistics, performance
metrics, the early-warning detectors, evaluation, and the monitor round."""
