"""The CKKS key holder as its own process: the ``KeyHolder`` gRPC service and its caller.

:class:`KeyHolderServer` (``fedwarden keyholder serve``) serves a
:class:`~fedwarden.secure.he_keyholder.CkksKeyHolder` over mutual TLS and
answers only the aggregation server named as its ``aggregator`` (by the common
name of its certificate). :class:`RemoteKeyHolder` is what the aggregation
server holds instead of the key: the public context, and ``decrypt``, which
sends the round's encrypted sum with every signed contribution and gets back
the mean, or the key holder's refusal as a
:class:`~fedwarden.secure.he_keyholder.DecryptionRefused`. Both objects offer
``public_context()`` and ``decrypt(request)``, so a pipeline stage cannot tell
an in-process key holder from a remote one.

A Decrypt message carries every contribution's ciphertexts: about 0.33 MB per
4,096 parameters per client. Both ends cap messages at ``max_message_bytes``
(:data:`MAX_MESSAGE_BYTES` by default); a larger round is refused by gRPC
(``RESOURCE_EXHAUSTED``), never truncated.
"""

from __future__ import annotations

import logging
import threading
from typing import Final, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from fedwarden.core.errors import FedwardenError
from fedwarden.runtime.grpc import keyholder_pb2 as kpb
from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.limits import PeerLimiter, ServerLimits
from fedwarden.runtime.grpc.unary import UnaryServer
from fedwarden.runtime.grpc.wire import check_version, version_message
from fedwarden.secure.he import Contribution, DecryptionRequest, EncryptedSum, EncryptedUpdate
from fedwarden.secure.he_keyholder import CkksKeyHolder, DecryptionRefused

logger = logging.getLogger(__name__)

SERVICE: Final = "fedwarden.keyholder.v1.KeyHolder"
MAX_MESSAGE_BYTES: Final = 256 << 20
"""Largest message either end accepts: about 780 client-chunks of 4,096 parameters, e.g. 28
clients x 10^5 parameters."""
KEYHOLDER_LIMITS: Final = ServerLimits(max_streams=1, join_slots=1, calls_per_peer=2)
"""The key holder's bounds: its one caller makes one call at a time."""
_FLOAT32: Final = np.dtype("<f4")
_Reply = TypeVar("_Reply", bound=Message)


class KeyHolderError(FedwardenError):
    """The key holder cannot be reached, or answered something other than a decryption."""


def request_message(request: DecryptionRequest) -> kpb.DecryptRequest:
    """A :class:`DecryptionRequest` as its protobuf message."""
    return kpb.DecryptRequest(
        version=version_message(),
        round_index=request.round_index,
        length=request.total.length,
        key_id=request.total.key_id,
        total_chunks=list(request.total.chunks),
        contributions=[
            kpb.Contribution(
                round_index=item.round_index,
                client_id=item.update.client_id,
                key_id=item.update.key_id,
                length=item.update.length,
                chunks=list(item.update.chunks),
                signature=item.signature,
            )
            for item in request.contributions
        ],
    )


def request_of(message: kpb.DecryptRequest) -> DecryptionRequest:
    """The :class:`DecryptionRequest` a protobuf message carries (checked by the key holder)."""
    return DecryptionRequest(
        round_index=message.round_index,
        total=EncryptedSum(message.length, message.key_id, tuple(message.total_chunks)),
        contributions=tuple(
            Contribution(
                item.round_index,
                EncryptedUpdate(item.client_id, item.length, item.key_id, tuple(item.chunks)),
                item.signature,
            )
            for item in message.contributions
        ),
    )


def _channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]


_ANSWERS_ONLY = "the key holder answers only the aggregation server"
"""How the key holder refuses a caller that is not the named aggregation server."""


class KeyHolderServer(UnaryServer):
    """Serves a :class:`CkksKeyHolder` to one aggregation server over mutual TLS.

    ``tls`` None means plaintext on loopback only (tests, ``--insecure``);
    with TLS, ``aggregator`` is required and only the peer whose certificate
    bears that common name is answered, so another client of the same CA
    cannot even ask. Refusals reach the caller as ``FAILED_PRECONDITION``
    with the key holder's reason.
    """

    def __init__(
        self,
        key_holder: CkksKeyHolder,
        *,
        address: str,
        tls: TlsKit | None,
        aggregator: str | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if tls is None:
            check_insecure_address(address)
        elif not aggregator:
            raise KeyHolderError(
                "the key holder serves with TLS but names no aggregator: any certificate of the "
                "same CA could ask it to decrypt; give aggregator (--aggregator), the name on "
                "the aggregation server's certificate"
            )
        self.key_holder = key_holder
        self.address = address
        self._tls = tls
        self._aggregator = aggregator
        self._max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self.limiter = PeerLimiter(KEYHOLDER_LIMITS)

    def serve(self) -> int:
        """Start listening; the bound port."""
        server = KEYHOLDER_LIMITS.server(
            _channel_options(self._max_message_bytes), self.limiter, "fedwarden-keyholder"
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "PublicContext": grpc.unary_unary_rpc_method_handler(
                            self._public_context,
                            request_deserializer=kpb.PublicContextRequest.FromString,
                            response_serializer=kpb.PublicContextReply.SerializeToString,
                        ),
                        "Decrypt": grpc.unary_unary_rpc_method_handler(
                            self._decrypt,
                            request_deserializer=kpb.DecryptRequest.FromString,
                            response_serializer=kpb.DecryptReply.SerializeToString,
                        ),
                    },
                ),
            )
        )
        port = self._listen(server, KeyHolderError)
        logger.info("key holder %s serving on port %d", self.key_holder.key_id[:12], port)
        return port

    def _public_context(
        self, request: kpb.PublicContextRequest, context: grpc.ServicerContext
    ) -> kpb.PublicContextReply:
        self._authorize(context, self._aggregator, _ANSWERS_ONLY)
        check_version(request.version, "the aggregation server")
        return kpb.PublicContextReply(
            version=version_message(),
            public_context=self.key_holder.public_context(),
            key_id=self.key_holder.key_id,
            min_updates=self.key_holder.min_updates,
        )

    def _decrypt(
        self, request: kpb.DecryptRequest, context: grpc.ServicerContext
    ) -> kpb.DecryptReply:
        self._authorize(context, self._aggregator, _ANSWERS_ONLY)
        try:
            check_version(request.version, "the aggregation server")
            with self._lock:
                mean, total_weight, contributors = self.key_holder.decrypt(request_of(request))
        except FedwardenError as error:
            logger.warning("key holder refused round %d: %s", request.round_index, error)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return kpb.DecryptReply(
            mean=np.ascontiguousarray(mean, dtype=_FLOAT32).tobytes(),
            total_weight=total_weight,
            contributors=contributors,
        )


class RemoteKeyHolder:
    """The aggregation server's handle on a key holder in another process; it holds no key.

    ``tls`` is the aggregation server's kit (None: plaintext, loopback only).
    The first call waits up to ``connect_timeout_s`` for the key holder to
    come up, so the two processes may start in either order; ``timeout_s``
    bounds each decryption.
    """

    def __init__(
        self,
        address: str,
        tls: TlsKit | None,
        *,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 120.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        self._timeout_s = timeout_s
        options = _channel_options(max_message_bytes)
        if tls is None:
            check_insecure_address(address)
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            self._channel = grpc.secure_channel(address, tls.channel_credentials(), options)
        reply = self._call(
            "PublicContext",
            kpb.PublicContextRequest(version=version_message()),
            kpb.PublicContextReply,
            wait_s=connect_timeout_s,
        )
        check_version(reply.version, "the key holder")
        self._public_context = bytes(reply.public_context)
        self.key_id = reply.key_id
        self.min_updates = int(reply.min_updates)

    def public_context(self) -> bytes:
        """The key holder's context without its secret key."""
        return self._public_context

    def decrypt(self, request: DecryptionRequest) -> tuple[np.ndarray, float, int]:
        """Ask the key holder to check and decrypt a round: (mean, total weight, contributors)."""
        reply = self._call("Decrypt", request_message(request), kpb.DecryptReply)
        mean = np.frombuffer(reply.mean, dtype=_FLOAT32).astype(np.float32)
        if mean.size != request.total.length:
            raise KeyHolderError(
                f"the key holder at {self.address} returned {mean.size} values for a sum of "
                f"{request.total.length}; it runs another protocol version"
            )
        return mean, float(reply.total_weight), int(reply.contributors)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(
        self,
        method: str,
        request: Message,
        reply_type: type[_Reply],
        wait_s: float | None = None,
    ) -> _Reply:
        """One unary call; a refusal becomes :class:`DecryptionRefused`, a failure an error."""
        callable_ = self._channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=reply_type.FromString,
        )
        try:
            if wait_s is None:
                reply: _Reply = callable_(request, timeout=self._timeout_s)
            else:  # wait for the key holder to come up, then answer
                reply = callable_(request, timeout=wait_s, wait_for_ready=True)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            if code == grpc.StatusCode.FAILED_PRECONDITION:
                raise DecryptionRefused(f"the key holder refused: {details}") from None
            raise KeyHolderError(
                f"{method} at the key holder {self.address} failed ({code.name}): {details}"
            ) from None
        return reply
