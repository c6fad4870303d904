"""The consumer's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

prometheus-client's own WSGI app answers ``/metrics`` (content negotiation, OpenMetrics, gzip, ``name[]``
filters); the two probes are a few lines beside it, served by the standard library's WSGI server with a
thread per request on a daemon thread of its own, so a slow scrape never waits behind another one, and
nothing here runs on the consumer's event loop. ``prometheus_client.start_http_server`` would serve the
metrics alone.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app

from toolkit import _args
from toolkit.errors import ConfigError
from toolkit.observability.metrics import Probe, PrometheusMiddleware

log = logging.getLogger("toolkit.observability")

PATHS = ("/metrics", "/healthz", "/readyz")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request still running never holds the process at exit


class _V6Server(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's signature
        log.debug("metrics server: " + format, *args)


class MetricsServer:
    """Serves ``middleware``'s registry on ``/metrics`` and its probes on ``/healthz`` and ``/readyz``
    (200 when they pass, 503 with the reason when not; a JSON body either way).

    Use it as a context manager around ``consumer.start()``, or call :meth:`start` and :meth:`close`.

    Args:
        middleware: the consumer's :class:`~toolkit.observability.metrics.PrometheusMiddleware`.
        port: the TCP port (``EPISTLE_METRICS_PORT``); 0 picks a free one (see :attr:`port`).
        address: the address to listen on (``EPISTLE_METRICS_ADDRESS``): all interfaces by default, so that
            Prometheus and the kubelet reach it.

    Raises:
        ConfigError (from :meth:`start`): the port cannot be bound.
    """

    def __init__(self, middleware: PrometheusMiddleware, port: int, *, address: str = "0.0.0.0") -> None:
        if not isinstance(middleware, PrometheusMiddleware):
            raise ConfigError(
                f"middleware: expected a PrometheusMiddleware, got {type(middleware).__name__}", setting="middleware"
            )
        self.middleware = middleware
        self.requested_port = _args.integer("port", port, low=0, high=65535)
        self.address = address
        self._metrics_app = make_wsgi_app(middleware.registry)
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen when 0 was asked for)."""
        return self._httpd.server_address[1] if self._httpd is not None else self.requested_port

    def start(self) -> MetricsServer:
        if self._httpd is not None:
            return self
        server_class = _V6Server if ":" in self.address else _Server
        try:
            self._httpd = make_server(
                self.address, self.requested_port, self._app, server_class=server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(
                f"the metrics server cannot listen on {self.address}:{self.requested_port}: "
                f"{exc.strerror or exc}; choose another port (--metrics-port, EPISTLE_METRICS_PORT) "
                "or address (EPISTLE_METRICS_ADDRESS)",
                setting="EPISTLE_METRICS_PORT",
            ) from None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="epistle-metrics", daemon=True)
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, probes on /healthz and /readyz", self.address, self.port)
        return self

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the WSGI app (on the server's request threads) --------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _probe(self.middleware.health(), start_response)
        if path == "/readyz":
            return _probe(self.middleware.readiness(), start_response)
        body = ("not found; try " + ", ".join(PATHS) + "\n").encode()
        start_response(
            "404 Not Found", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]


def _probe(probe: Probe, start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = json.dumps({"ok": probe.ok, **probe.detail}, sort_keys=True).encode() + b"\n"
    start_response(
        "200 OK" if probe.ok else "503 Service Unavailable",
        [("Content-Type", "application/json"), ("Cache-Control", "no-store"), ("Content-Length", str(len(body)))],
    )
    return [body]


__all__ = ["MetricsServer"]
