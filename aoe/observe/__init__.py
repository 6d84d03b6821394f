"""Subscribers to a run's events: log lines, Prometheus metrics, the health
verdict and the results file."""
