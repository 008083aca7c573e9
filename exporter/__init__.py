"""cronmon: a Prometheus-native monitor for cron jobs, batch jobs and heartbeats."""

__version__ = "0.1.0"
