"""Running a consumer in production: Prometheus metrics and health probes (the ``metrics`` extra), tracing
(:mod:`toolkit.observability.tracing`, the ``tracing`` extra) and JSON logs (:mod:`toolkit.observability.logs`).

    from toolkit.observability import MetricsServer, PrometheusMiddleware

    metrics = PrometheusMiddleware()
    consumer = KafkaConsumer(..., middleware=[metrics])
    with MetricsServer(metrics, port=9400):      # /metrics, /healthz, /readyz
        await consumer.start()

What each metric and probe means: docs/operations.md. Importing this package loads prometheus-client only
when one of these names is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MetricsServer", "PrometheusMiddleware"]


def __getattr__(name: str) -> Any:
    if name == "PrometheusMiddleware":
        from toolkit.observability.metrics import PrometheusMiddleware

        return PrometheusMiddleware
    if name == "MetricsServer":
        from toolkit.observability.server import MetricsServer

        return MetricsServer
    raise AttributeError(f"module 'toolkit.observability' has no attribute {name!r}")
