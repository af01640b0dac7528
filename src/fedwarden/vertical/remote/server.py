"""The feature party's end of the ``FeatureParty`` service: its table, alignment and bottom model.

A :class:`FeaturePartyServer` (``fedwarden vertical party``) answers only the
label party named as its ``driver`` (mutual TLS), serves the PSI alignment as
an :class:`~fedwarden.vertical.alignment.AlignmentFollower`, builds its bottom
model from its own seed, releases its activations under its own
:class:`~fedwarden.vertical.release.GaussianRelease` and enforces its own
budget per row of its table. Its gRPC server is bounded as the federation
server is (:mod:`fedwarden.runtime.grpc.limits`): a cap on calls in progress
per peer and in all, and on message size.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Final, cast

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from fedwarden.core.errors import ConfigError, DataError, FedwardenError
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.limits import PeerLimiter, ServerLimits
from fedwarden.runtime.grpc.unary import UnaryServer
from fedwarden.runtime.grpc.wire import ProtocolError, check_version, version_message
from fedwarden.secure.psi import Identifier, PsiOffer, PsiRequest
from fedwarden.vertical import vertical_pb2 as vpb
from fedwarden.vertical.alignment import AlignmentFollower
from fedwarden.vertical.architecture import ArchitectureKind, ArchitectureSpec
from fedwarden.vertical.messages import CutGradient, VerticalError
from fedwarden.vertical.release import GaussianRelease, release_events
from fedwarden.vertical.remote.codecs import (
    MAX_MESSAGE_BYTES,
    SERVICE,
    answer_message,
    channel_options,
    decode_rows,
    decode_tensor,
    encode_tensor,
    points_message,
    psi_points,
    psi_response,
)
from fedwarden.vertical.split import FeatureParty, Rows, TrainingPlan

logger = logging.getLogger(__name__)

PARTY_LIMITS: Final = ServerLimits(max_streams=1, join_slots=3, calls_per_peer=2)
"""A party's bounds: 4 unary calls in progress in all, 2 per peer (the service has no streams;
its handlers run one at a time, and its one driver makes one call at a time)."""


class FeaturePartyServer(UnaryServer):
    """A feature party serving the ``FeatureParty`` service: its table, alignment and bottom model.

    ``tls`` None means plaintext on loopback only (``--insecure``); with TLS,
    ``driver`` is required and only the client whose certificate bears that
    name is answered. A ``release`` needs the party's own ``budget``, which
    it enforces per row of its table: its own
    :class:`~fedwarden.privacy.ledger.PrivacyLedger` (in memory, for the life
    of the process) gets one per-row entry per pass (:meth:`_charge`).
    ``noise`` draws the release's noise (secure by default). ``bottom_seed``
    initialises the bottom model: the party's choice, never the label party's
    proposal (None: a secret seed drawn at each ``Prepare``, so the label
    party does not know the weights).
    ``limits`` bound the calls in progress (per peer and in all) and
    ``max_message_bytes`` each message; an excess call is refused with
    ``RESOURCE_EXHAUSTED``.
    """

    def __init__(
        self,
        name: str,
        identifiers: Sequence[Identifier],
        features: npt.ArrayLike,
        *,
        address: str,
        tls: TlsKit | None,
        driver: str | None = None,
        release: GaussianRelease | None = None,
        budget: PrivacyBudget | None = None,
        noise: NoiseSource | None = None,
        bottom_seed: int | None = None,
        limits: ServerLimits = PARTY_LIMITS,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        if tls is None:
            check_insecure_address(address)
            if driver is not None:
                raise VerticalError(
                    "driver names the label party by its certificate, which needs TLS: give a "
                    "server kit, or no driver with --insecure"
                )
        elif not driver:
            raise VerticalError(
                f"party {name!r} serves with TLS but names no driver: any certificate of the same "
                "CA could pull its activations; give driver (--driver), the name on the label "
                "party's certificate"
            )
        if (release is None) != (budget is None):
            raise ConfigError(
                f"party {name!r} has a release but no budget, or a budget but no release: a "
                "party releasing under DP enforces its own budget; give both (--clip-norm, "
                "--noise-multiplier, --epsilon, --delta) or neither"
            )
        self.name = name
        self.address = address
        self._tls = tls
        self._driver = driver
        self._features = np.asarray(features, dtype=np.float32)
        if self._features.ndim != 2 or self._features.shape[0] != len(identifiers):
            raise DataError(
                f"party {name!r} holds {len(identifiers)} ids but features of shape "
                f"{self._features.shape}; give one (row of columns) per id"
            )
        self._follower = AlignmentFollower(name, identifiers)
        self._release = release
        self._ledger = None
        if release is not None and budget is not None:
            self._ledger = PrivacyLedger(
                budget,
                privacy_unit="example",
                neighboring="replace_one",
                client_budget=budget.epsilon,
            )
        self._noise = noise if noise is not None else NoiseSource.secure()
        self._bottom_seed = bottom_seed
        self._party: FeatureParty | None = None
        self._party_rows: Rows | None = None
        """The table rows of the prepared party's aligned rows, in the agreed order."""
        self._lock = threading.Lock()
        self._limits = limits
        self._max_message_bytes = max_message_bytes
        self.limiter = PeerLimiter(limits)
        """Admits each call, or refuses it when its peer or all peers hold their share."""

    def serve(self) -> int:
        """Start listening; the bound port."""
        server = self._limits.server(
            channel_options(self._max_message_bytes), self.limiter, "fedwarden-vertical"
        )
        handlers: Mapping[str, tuple[Callable[..., Message], type[Message]]] = {
            "Describe": (self._describe, vpb.Hello),
            "Offer": (self._offer, vpb.Empty),
            "Intersect": (self._intersect, vpb.PsiPoints),
            "RequestFinal": (self._request_final, vpb.PsiPoints),
            "FinishFinal": (self._finish_final, vpb.PsiAnswer),
            "Prepare": (self._prepare, vpb.Architecture),
            "Start": (self._start, vpb.Plan),
            "Forward": (self._forward, vpb.ForwardRequest),
            "Backward": (self._backward, vpb.Gradient),
        }
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        method: grpc.unary_unary_rpc_method_handler(
                            self._guarded(method, function),
                            request_deserializer=request_type.FromString,
                            response_serializer=lambda reply: reply.SerializeToString(),
                        )
                        for method, (function, request_type) in handlers.items()
                    },
                ),
            )
        )
        port = self._listen(server, VerticalError)
        logger.info("feature party %s serving on port %d", self.name, port)
        return port

    def _guarded(
        self, method: str, function: Callable[[Message], Message]
    ) -> Callable[[Message, grpc.ServicerContext], Message]:
        """``function`` as a handler: the caller authorized, one call at a time, errors refused."""

        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            self._authorize(
                context, self._driver, f"party {self.name!r} answers only the label party"
            )
            try:
                with self._lock:
                    return function(request)
            except FedwardenError as error:
                logger.warning("party %s refused %s: %s", self.name, method, error)
                status = grpc.StatusCode.INVALID_ARGUMENT
                if isinstance(error, ProtocolError | BudgetExceeded):
                    status = grpc.StatusCode.FAILED_PRECONDITION
                context.abort(status, str(error))
            raise AssertionError("context.abort raises")

        return handle

    def _declaration(self) -> vpb.Declaration:
        declaration = vpb.Declaration(
            version=version_message(),
            name=self.name,
            table_rows=self._features.shape[0],
            aligned_rows=0 if self._follower.rows is None else len(self._follower.rows),
            columns=self._features.shape[1],
        )
        if self._release is not None:
            declaration.release.clip_norm = self._release.clip_norm
            declaration.release.noise_multiplier = self._release.noise_multiplier
        return declaration

    def _describe(self, request: Message) -> vpb.Declaration:
        hello = cast(vpb.Hello, request)
        check_version(hello.version, "the label party")
        return self._declaration()

    def _offer(self, request: Message) -> vpb.PsiPoints:
        return points_message(self._follower.offer())

    def _intersect(self, request: Message) -> vpb.PsiAnswer:
        points = psi_points(cast(vpb.PsiPoints, request), PsiRequest)
        return answer_message(self._follower.answer_intersection(points))

    def _request_final(self, request: Message) -> vpb.PsiPoints:
        offer = psi_points(cast(vpb.PsiPoints, request), PsiOffer)
        return points_message(self._follower.final_request(offer))

    def _finish_final(self, request: Message) -> vpb.AlignmentReceipt:
        rows, digest = self._follower.finish_final(psi_response(cast(vpb.PsiAnswer, request)))
        self._party, self._party_rows = None, None
        return vpb.AlignmentReceipt(rows=rows, order_sha256=digest)

    def _prepare(self, request: Message) -> vpb.Declaration:
        message = cast(vpb.Architecture, request)
        aligned = self._follower.rows
        if aligned is None:
            raise VerticalError(
                f"party {self.name!r} has not been aligned: run the PSI alignment before Prepare"
            )
        spec = ArchitectureSpec(
            kind=cast(ArchitectureKind, message.kind),
            column_counts=tuple(message.column_counts),
            classes=message.classes,
            cut_width=message.cut_width,
            hidden_width=message.hidden_width,
            seed=message.seed,
        )
        columns = self._features.shape[1]
        if message.position >= len(spec.column_counts) or (
            spec.column_counts[message.position] != columns
        ):
            raise VerticalError(
                f"party {self.name!r} holds {columns} columns but was asked to run bottom "
                f"{message.position} of an architecture for column counts "
                f"{list(spec.column_counts)}"
            )
        if self._release is None and spec.cut_columns >= columns:
            raise VerticalError(
                f"party {self.name!r} refuses a bottom of {spec.cut_columns} cut columns over "
                f"its {columns}: without a DP release, activations at least as wide as the "
                "columns, from a bottom the label party can rebuild, would expose its raw rows; "
                f"propose fewer than {columns} cut columns, or serve the party with a release"
            )
        seed = self._bottom_seed if self._bottom_seed is not None else secrets.randbits(63)
        bottom = replace(spec, seed=seed).build().bottoms[message.position]
        self._party = FeatureParty(
            self.name, self._features[aligned], bottom, release=self._release, noise=self._noise
        )
        self._party_rows = aligned
        return self._declaration()

    def _prepared(self) -> tuple[FeatureParty, Rows]:
        """The prepared party and the table rows of its aligned rows."""
        if self._party is None or self._party_rows is None:
            raise VerticalError(
                f"party {self.name!r} has no bottom model yet: align, then Prepare, then train"
            )
        return self._party, self._party_rows

    def _start(self, request: Message) -> vpb.Declaration:
        message = cast(vpb.Plan, request)
        plan = TrainingPlan(
            epochs=message.epochs,
            batch_size=message.batch_size,
            learning_rate=message.learning_rate,
            seed=message.seed,
        )
        party, _ = self._prepared()
        party.start(plan)
        return self._declaration()

    def _forward(self, request: Message) -> vpb.Activation:
        message = cast(vpb.ForwardRequest, request)
        party, table_rows = self._prepared()
        rows = decode_rows(message.rows, party.rows)
        self._charge(table_rows[rows], training=message.training)
        activation = party.forward(rows, message.recipient, training=message.training)
        return vpb.Activation(
            sender=activation.sender,
            recipient=activation.recipient,
            values=encode_tensor(activation.values),
        )

    def _charge(self, rows: Rows, *, training: bool) -> None:
        """Charge one pass over the distinct table ``rows`` to the party's ledger, or refuse it.

        A row's spend composes the passes that released it
        (:func:`~fedwarden.vertical.release.release_events`: a training pass is
        the message and the DP-SGD bottom update, a predict pass the message;
        dp-accounting, one example under replace-one neighbours, as the
        driver's ledger accounts them); rows never compose with each other.
        Raises :class:`~fedwarden.privacy.ledger.BudgetExceeded` before
        anything is released when the pass would take any row past the budget.
        """
        if self._ledger is None or self._release is None:
            return
        kind = "training pass" if training else "predict pass"
        self._ledger.charge_rows(
            self.name,
            rows,
            self._ledger.next_round_index,
            kind,
            dp_event.ComposedDpEvent(release_events(self._release, training)),
            what=f"a {kind} releasing party {self.name!r}'s rows",
        )

    def _backward(self, request: Message) -> vpb.Empty:
        message = cast(vpb.Gradient, request)
        party, _ = self._prepared()
        if message.recipient != self.name:
            raise VerticalError(
                f"party {self.name!r} got a gradient addressed to {message.recipient!r}"
            )
        values = decode_tensor(message.values, f"the CutGradient to {self.name!r}")
        party.backward(CutGradient(sender=message.sender, recipient=self.name, values=values))
        return vpb.Empty()
