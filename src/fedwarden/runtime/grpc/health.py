"""The server's plain-HTTP operations endpoint: health for probes, metrics for Prometheus.

gRPC health probes cannot present a client certificate, so the mutual-TLS port
cannot serve them; ``GET /healthz`` on a separate port answers ``200 ok`` while
the federation service is listening and ``503`` otherwise, and ``GET /metrics``
gives the Prometheus text exposition of the run's counters (rounds, updates,
dropouts, rejections by reason, alerts by rule, accuracy, loss, epsilon spent,
bytes). Neither reveals a client's data or identity.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)


def serve_health(
    address: str, ready: Callable[[], bool], metrics: Callable[[], bytes]
) -> ThreadingHTTPServer:
    """Answer ``GET /healthz`` and ``GET /metrics`` on ``address`` (``HOST:PORT``)."""
    host, _, port = address.rpartition(":")

    class Operations(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics(), "text/plain; version=0.0.4")
            elif self.path == "/healthz":
                healthy = ready()
                self._answer(200 if healthy else 503, b"ok\n" if healthy else b"starting\n")
            else:
                self.send_error(404, "only /healthz and /metrics are served here")

        def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("operations endpoint: " + format, *args)

    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Operations)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="operations", daemon=True).start()
    return server
