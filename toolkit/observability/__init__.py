"""Observability: what a running consumer tells its operators (logs, traces, metrics)."""
