"""The label party's end of the ``FeatureParty`` service: one feature party reached over gRPC."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, TypeVar

import grpc
from google.protobuf.message import Message

from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.wire import check_version, version_message
from fedwarden.secure.psi import PsiOffer, PsiRequest, PsiResponse
from fedwarden.vertical import vertical_pb2 as vpb
from fedwarden.vertical.architecture import ArchitectureSpec
from fedwarden.vertical.messages import CutActivation, CutGradient, VerticalError
from fedwarden.vertical.release import GaussianRelease
from fedwarden.vertical.remote.codecs import (
    SERVICE,
    answer_message,
    channel_options,
    decode_tensor,
    encode_rows,
    encode_tensor,
    points_message,
    psi_points,
    psi_response,
    release_of,
)
from fedwarden.vertical.split import Rows, TrainingPlan

logger = logging.getLogger(__name__)

CALL_TIMEOUT_S: Final = 120.0
"""How long the driver waits for one call by default (``fedwarden vertical train --timeout``).

The slowest call is ``RequestFinal``: the party hashes and blinds each of its
ids and blinds the driver's offer, about 160 CPU microseconds per id on the
2-core machine of issue 8. So 120 s covers tables of roughly 700,000 ids
there, well short of what
:data:`~fedwarden.vertical.remote.codecs.MAX_MESSAGE_BYTES` admits; give
larger tables a longer timeout."""

_Reply = TypeVar("_Reply", bound=Message)


class RemoteFeatureParty:
    """The label party's handle on a feature party served over gRPC.

    It is a :class:`~fedwarden.vertical.split.BottomParty` (what
    :class:`~fedwarden.vertical.split.SplitLearning` drives) and an
    :class:`~fedwarden.vertical.alignment.AlignmentPeer`; each call is one RPC.
    Open one with :meth:`connect`.
    """

    def __init__(
        self, address: str, channel: grpc.Channel, declaration: vpb.Declaration, timeout_s: float
    ) -> None:
        self.address = address
        self._channel = channel
        self._timeout_s = timeout_s
        self._name = declaration.name
        self._release = release_of(declaration)
        self._rows = int(declaration.aligned_rows)
        self.columns = int(declaration.columns)
        """How many feature columns the party holds (sizes its bottom model)."""
        self.table_rows = int(declaration.table_rows)
        """How many ids the party's table holds."""
        self._cut_columns: int | None = None

    @classmethod
    def connect(
        cls,
        address: str,
        tls: TlsKit | None,
        *,
        interceptors: Sequence[grpc.UnaryUnaryClientInterceptor] = (),
        timeout_s: float = CALL_TIMEOUT_S,
    ) -> RemoteFeatureParty:
        """Dial the party at ``address`` (mutual TLS with ``tls``; None: plaintext, loopback).

        Checks the protocol version and reads the party's declaration.
        """
        if tls is None:
            check_insecure_address(address)
            channel = grpc.insecure_channel(address, options=channel_options())
        else:
            channel = grpc.secure_channel(
                address, tls.channel_credentials(), options=channel_options()
            )
        if interceptors:
            channel = grpc.intercept_channel(channel, *interceptors)
        declaration = _call(
            channel,
            address,
            "Describe",
            vpb.Hello(version=version_message()),
            vpb.Declaration,
            timeout_s,
        )
        check_version(declaration.version, f"the feature party at {address}")
        party = cls(address, channel, declaration, timeout_s)
        logger.info(
            "connected to feature party %s at %s (%d ids, %d columns, release %s)",
            party.name,
            address,
            party.table_rows,
            party.columns,
            party.release,
        )
        return party

    @property
    def name(self) -> str:
        """The party's name (its sender name on every activation)."""
        return self._name

    @property
    def release(self) -> GaussianRelease | None:
        """The DP release the party declared it applies to its activations, or None."""
        return self._release

    @property
    def rows(self) -> int:
        """How many aligned entities the party holds (0 before alignment)."""
        return self._rows

    def offer(self) -> PsiOffer:
        """Alignment phase 1: the party, as PSI sender, offers its blinded ids."""
        return psi_points(self._call("Offer", vpb.Empty(), vpb.PsiPoints), PsiOffer)

    def answer_intersection(self, request: PsiRequest) -> PsiResponse:
        """Alignment phase 1: the party, the sender that offered, answers the driver's request."""
        return psi_response(self._call("Intersect", points_message(request), vpb.PsiAnswer))

    def final_request(self, offer: PsiOffer) -> PsiRequest:
        """Alignment phase 2: the party accepts the driver's offer; its PSI request."""
        reply = self._call("RequestFinal", points_message(offer), vpb.PsiPoints)
        return psi_points(reply, PsiRequest)

    def finish_final(self, response: PsiResponse) -> tuple[int, bytes]:
        """Alignment phase 2: the party learns the intersection; its row count and order digest."""
        receipt = self._call("FinishFinal", answer_message(response), vpb.AlignmentReceipt)
        self._rows = int(receipt.rows)
        return self._rows, bytes(receipt.order_sha256)

    def prepare(self, architecture: ArchitectureSpec, position: int) -> None:
        """Have the party build bottom ``position`` of ``architecture`` over its aligned rows.

        Its activations must then be ``architecture.cut_columns`` wide.
        """
        message = vpb.Architecture(
            kind=architecture.kind,
            column_counts=list(architecture.column_counts),
            classes=architecture.classes,
            cut_width=architecture.cut_width,
            hidden_width=architecture.hidden_width,
            seed=architecture.seed,
            position=position,
        )
        self._check_declaration(self._call("Prepare", message, vpb.Declaration))
        self._cut_columns = architecture.cut_columns

    def start(self, plan: TrainingPlan) -> None:
        """Prepare the party to train: a fresh optimizer for ``plan``."""
        message = vpb.Plan(
            epochs=plan.epochs,
            batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            seed=plan.seed,
        )
        self._check_declaration(self._call("Start", message, vpb.Declaration))

    def forward(self, rows: Rows, recipient: str, *, training: bool) -> CutActivation:
        """The party's cut-layer activations for ``rows``, released as the party declared."""
        if self._cut_columns is None:
            raise VerticalError(
                f"the party at {self.address} has no architecture yet: call prepare() before "
                "forward()"
            )
        request = vpb.ForwardRequest(rows=encode_rows(rows), recipient=recipient, training=training)
        reply = self._call("Forward", request, vpb.Activation)
        if reply.sender != self._name or reply.recipient != recipient:
            raise VerticalError(
                f"the party at {self.address} answered as {reply.sender!r} to {reply.recipient!r}"
                f", not as {self._name!r} to {recipient!r}"
            )
        what = f"the CutActivation from {self._name!r}"
        values = decode_tensor(reply.values, what, rows=len(rows), columns=self._cut_columns)
        return CutActivation(sender=self._name, recipient=recipient, values=values)

    def backward(self, gradient: CutGradient) -> None:
        """Send the party its cut gradient; it back-propagates and updates its bottom model."""
        message = vpb.Gradient(
            sender=gradient.sender,
            recipient=gradient.recipient,
            values=encode_tensor(gradient.values),
        )
        self._call("Backward", message, vpb.Empty)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> RemoteFeatureParty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_declaration(self, declaration: vpb.Declaration) -> None:
        """Refuse a party whose name or release changed since it declared them."""
        if declaration.name != self._name or release_of(declaration) != self._release:
            raise VerticalError(
                f"the party at {self.address} declared {self._name!r} with release "
                f"{self._release} but now answers as {declaration.name!r} with "
                f"{release_of(declaration)}; reconnect and start again"
            )
        self._rows = int(declaration.aligned_rows)

    def _call(self, method: str, request: Message, reply_type: type[_Reply]) -> _Reply:
        return _call(self._channel, self.address, method, request, reply_type, self._timeout_s)


def _call(
    channel: grpc.Channel,
    address: str,
    method: str,
    request: Message,
    reply_type: type[_Reply],
    timeout_s: float,
) -> _Reply:
    """One unary call of the service; a gRPC failure becomes a :class:`VerticalError`."""
    callable_ = channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=reply_type.FromString,
    )
    try:
        reply: _Reply = callable_(request, timeout=timeout_s)
    except grpc.RpcError as error:
        code = error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        raise VerticalError(
            f"{method} at the feature party {address} failed ({code}): {details}"
        ) from None
    return reply
