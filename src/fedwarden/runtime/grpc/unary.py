"""A threaded gRPC server of unary calls: the base of the key holder's and a feature party's.

Their calls are few, short and never wait on their peer, so a thread each is the simple,
bounded design (their :class:`~fedwarden.runtime.grpc.limits.PeerLimiter` caps them); the
federation server, whose calls wait on devices, runs on ``grpc.aio`` instead (``serving.py``).
"""

from __future__ import annotations

import grpc

from fedwarden.core.errors import FedwardenError
from fedwarden.runtime.grpc.credentials import TlsKit


class UnaryServer:
    """Binds, starts, stops and waits on one ``grpc.Server`` a subclass built with its handlers.

    A subclass sets ``address`` and ``_tls`` (None: plaintext, loopback only) before
    :meth:`_listen`.
    """

    address: str
    _tls: TlsKit | None
    _server: grpc.Server | None = None
    port: int | None = None

    def _authorize(
        self, context: grpc.ServicerContext, allowed: str | None, answers_only: str
    ) -> None:
        """Abort a call whose certificate does not name ``allowed``.

        ``allowed`` is None only without TLS (loopback), where no certificate names anyone;
        ``answers_only`` begins the refusal, e.g. "the key holder answers only the
        aggregation server", and the names follow.
        """
        if allowed is None:
            return
        names = context.auth_context().get("x509_common_name") or [b""]
        caller = names[0].decode()
        if caller != allowed:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{answers_only} {allowed!r}, not {caller!r}"
            )

    def _listen(self, server: grpc.Server, error: type[FedwardenError]) -> int:
        """Bind ``server`` (mutual TLS unless ``_tls`` is None) and start it; the bound port.

        Raises ``error`` when the address cannot be bound.
        """
        if self._tls is None:
            port = server.add_insecure_port(self.address)
        else:
            port = server.add_secure_port(self.address, self._tls.server_credentials())
        if port == 0:
            raise error(
                f"cannot listen on {self.address}: the address is taken or not this machine's"
            )
        server.start()
        self._server, self.port = server, port
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (after ``grace`` seconds for calls in flight)."""
        if self._server is not None:
            self._server.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()
