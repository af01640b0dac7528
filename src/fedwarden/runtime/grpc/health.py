"""The server's plain-HTTP health endpoint, for load balancers and Kubernetes probes.

gRPC health probes cannot present a client certificate, so the mutual-TLS port
cannot serve them; ``GET /healthz`` on a separate port answers ``200 ok`` while
the federation service is listening and ``503`` otherwise. It reveals nothing
about the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

logger = logging.getLogger(__name__)


def serve_health(address: str, ready: Callable[[], bool]) -> ThreadingHTTPServer:
    """Answer ``GET /healthz`` on ``address`` (``HOST:PORT``) from a daemon thread."""
    host, _, port = address.rpartition(":")

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/healthz":
                self.send_error(404, "only /healthz is served here")
                return
            healthy = ready()
            body = b"ok\n" if healthy else b"starting\n"
            self.send_response(200 if healthy else 503)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            logger.debug("health: " + format, *args)

    server = ThreadingHTTPServer((host.strip("[]") or "0.0.0.0", int(port)), Health)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server
