"""Vertical federated learning over gRPC with mutual TLS: each feature party in its own process.

A feature party runs :class:`FeaturePartyServer` (``fedwarden vertical
party``): it holds its entity ids, its columns, its bottom model and its
:class:`~fedwarden.vertical.release.GaussianRelease`, and serves the
``FeatureParty`` service of ``vertical.proto``. The label party drives: it
holds the labels and the top model and reaches each feature party through a
:class:`RemoteFeatureParty`, which has the interface
(:class:`~fedwarden.vertical.split.BottomParty`) that
:class:`~fedwarden.vertical.split.SplitLearning` uses from a local
:class:`~fedwarden.vertical.split.FeatureParty`; the training loop is the same
one, and this module only carries its messages.

- **Alignment**: :func:`~fedwarden.vertical.alignment.align_as_leader` with
  each :class:`RemoteFeatureParty` as an
  :class:`~fedwarden.vertical.alignment.AlignmentPeer`; the server side is an
  :class:`~fedwarden.vertical.alignment.AlignmentFollower`. Only 32-byte
  blinded points cross, and each party's receipt (row count, SHA-256 of the
  agreed order).
- **Training**: ``Prepare`` sends the public :class:`ArchitectureSpec` and the
  party's position; the party builds its bottom from its own seed (a secret
  one unless it was started with one), never the proposed one, and without a
  DP release refuses a bottom with as many cut columns as it has columns
  (whoever knows its weights would invert the activations to the raw rows);
  then ``Start``, ``Forward`` and ``Backward`` carry exactly the
  :class:`CutActivation` and :class:`CutGradient` arrays, as raw float32 bytes.
- **Wire checks**: every array must be two-dimensional with both dimensions
  at least 1, its bytes must match its shape, and its values must be finite;
  the driver also checks that an activation has its architecture's cut width;
  row indices must be distinct int64 within the aligned table; messages are
  capped at :data:`MAX_MESSAGE_BYTES`; the protocol version is checked at
  ``Describe``. A refused ``Prepare``, ``Start``, ``Forward`` or ``Backward``
  changes nothing at the receiving party (a refused ``Forward`` releases and
  counts nothing). A refused PSI step does change it: the step's PSI state is
  consumed, so the driver restarts the alignment from ``Offer`` (phase 1) or
  ``RequestFinal`` (phase 2). Nothing is pickled.
- **Privacy accounting**: a party applies its own release before sending and
  declares it at ``Describe`` (again at ``Start``); the driver's
  :class:`~fedwarden.privacy.ledger.PrivacyLedger` charges the declared
  releases, exactly as for in-process parties, and refuses before training a
  plan that exceeds the driver's budget.
- **The party's own budget**: a party with a release does not trust the
  driver's accounting. It counts, per row of its own table, the training and
  predict passes it released (:func:`~fedwarden.vertical.release.release_events`:
  a training pass is the message and the DP-SGD bottom update, a predict pass
  the message), and refuses with ``FAILED_PRECONDITION``, before releasing
  anything, a ``Forward`` that would take any requested row's composed
  epsilon past its :class:`~fedwarden.privacy.ledger.PrivacyBudget`. The rows
  of one ``Forward`` must be distinct, so a driver cannot average one row's
  noise away by asking for it many times, in one call or in many. Counts
  are kept by table row, so aligning again does not reset them; they live
  as long as the server process (a restarted party starts a fresh budget).
- **Authentication**: mutual TLS with the startup kits of ``fedwarden pki``:
  a certificate from another CA is refused in the handshake, and a party
  served with TLS must name its ``driver``: it answers only the label party
  whose certificate bears that name (``PERMISSION_DENIED`` to any other
  certificate of the same CA).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, TypeVar, cast, get_args

import grpc
import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event
from google.protobuf.message import Message

from fedwarden.core.errors import ConfigError, DataError, FedwardenError
from fedwarden.privacy.accounting import PrivacySpend, compute_spend
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime.grpc.credentials import TlsKit, check_insecure_address
from fedwarden.runtime.grpc.wire import ProtocolError, check_version, version_message
from fedwarden.secure.psi import (
    POINT_BYTES,
    Identifier,
    PsiMode,
    PsiOffer,
    PsiRequest,
    PsiResponse,
)
from fedwarden.vertical import vertical_pb2 as vpb
from fedwarden.vertical.alignment import AlignmentFollower, align_as_leader
from fedwarden.vertical.architecture import ArchitectureKind, ArchitectureSpec
from fedwarden.vertical.label_dp import (
    DEFAULT_LABEL_EPSILON,
    REPORT_DELTA,
    LabelRandomizedResponse,
)
from fedwarden.vertical.messages import CutActivation, CutGradient, VerticalError
from fedwarden.vertical.release import GaussianRelease, release_events
from fedwarden.vertical.split import (
    BottomParty,
    FeatureParty,
    LabelParty,
    Rows,
    SplitLearning,
    TrainingPlan,
)

logger = logging.getLogger(__name__)

SERVICE: Final = "fedwarden.vertical.v1.FeatureParty"

MAX_MESSAGE_BYTES: Final = 64 << 20
"""Largest message either end accepts. Cut-layer batches are kilobytes; a PSI message carries
one point of 32 bytes per id, so no message can hold more than 2,097,152 ids (64 MiB / 32 B)."""

CALL_TIMEOUT_S: Final = 120.0
"""How long the driver waits for one call by default (``fedwarden vertical train --timeout``).

The slowest call is ``RequestFinal``: the party hashes and blinds each of its
ids and blinds the driver's offer, about 160 CPU microseconds per id on the
2-core machine of issue 8. So 120 s covers tables of roughly 700,000 ids
there, well short of what :data:`MAX_MESSAGE_BYTES` admits; give larger
tables a longer timeout."""

_FLOAT32: Final = np.dtype("<f4")
_INT64: Final = np.dtype("<i8")
_Reply = TypeVar("_Reply", bound=Message)
_Points = TypeVar("_Points", PsiOffer, PsiRequest)


def channel_options() -> list[tuple[str, int]]:
    """gRPC options of both ends: the message size cap."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ]


def encode_tensor(values: npt.NDArray[np.float32]) -> vpb.Tensor:
    """A float32 array as its shape and raw little-endian bytes (C order)."""
    array = np.ascontiguousarray(values, dtype=_FLOAT32)
    return vpb.Tensor(shape=list(array.shape), data=array.tobytes())


def decode_tensor(
    message: vpb.Tensor, what: str, rows: int | None = None, columns: int | None = None
) -> npt.NDArray[np.float32]:
    """The float32 array a :class:`vpb.Tensor` carries, refused unless well-formed and finite.

    ``rows``, if given, is the number of rows the array must have (one per
    example); ``columns`` the number of columns (the cut width).
    """
    shape = tuple(int(size) for size in message.shape)
    if len(shape) != 2:
        raise VerticalError(
            f"{what} must be a (batch, cut_width) array but declares shape {shape}; send one "
            "row per example"
        )
    if min(shape) < 1:
        raise VerticalError(
            f"{what} declares shape {shape}: a (batch, cut_width) array needs at least one row "
            "and one column"
        )
    expected = shape[0] * shape[1] * _FLOAT32.itemsize
    if len(message.data) != expected:
        raise VerticalError(
            f"{what} declares shape {shape}, {expected} bytes of float32, but carries "
            f"{len(message.data)} bytes; encode it with encode_tensor"
        )
    if rows is not None and shape[0] != rows:
        raise VerticalError(f"{what} holds {shape[0]} rows for a batch of {rows} examples")
    if columns is not None and shape[1] != columns:
        raise VerticalError(
            f"{what} is {shape[1]} columns wide but the architecture's cut width is {columns}; "
            "the party runs another bottom model than the one prepared"
        )
    values = np.frombuffer(message.data, dtype=_FLOAT32).reshape(shape).astype(np.float32)
    if not np.isfinite(values).all():
        raise VerticalError(
            f"{what} holds NaN or infinite values; the sender's model diverged or the message "
            "is corrupt: it was refused and nothing was updated"
        )
    return values


def encode_rows(rows: Rows) -> bytes:
    """Row indices as int64 little-endian bytes."""
    return np.asarray(rows, dtype=_INT64).tobytes()


def decode_rows(data: bytes, table_rows: int) -> Rows:
    """Row indices from int64 bytes, refused unless distinct and each a row of the aligned table.

    A row asked for twice in one call would be released twice, and averaging
    the copies shrinks the noise of a release.
    """
    if not data or len(data) % _INT64.itemsize:
        raise VerticalError(
            f"row indices must be a nonempty list of int64 (8 bytes each), got {len(data)} bytes"
        )
    rows = np.frombuffer(data, dtype=_INT64).astype(np.int64)
    if rows.min() < 0 or rows.max() >= table_rows:
        raise VerticalError(
            f"row indices must lie in [0, {table_rows}) (the aligned table), got "
            f"{rows.min()} to {rows.max()}"
        )
    if len(np.unique(rows)) != len(rows):
        raise VerticalError(
            f"row indices must be distinct, got {len(rows)} indices naming "
            f"{len(np.unique(rows))} rows; ask for each row once per pass"
        )
    return rows


def _split_points(data: bytes, what: str) -> tuple[bytes, ...]:
    """Concatenated group elements cut back into points of :data:`POINT_BYTES`."""
    if len(data) % POINT_BYTES:
        raise VerticalError(
            f"{what} must be whole {POINT_BYTES}-byte points, got {len(data)} bytes"
        )
    return tuple(data[start : start + POINT_BYTES] for start in range(0, len(data), POINT_BYTES))


def _points_message(points: PsiOffer | PsiRequest) -> vpb.PsiPoints:
    """A PSI offer or request on the wire: its mode and its points, concatenated."""
    return vpb.PsiPoints(mode=points.mode, points=b"".join(points.points))


def _psi_points(message: vpb.PsiPoints, kind: type[_Points]) -> _Points:
    """The PSI offer or request (``kind``) a :class:`vpb.PsiPoints` carries, checked."""
    if message.mode not in get_args(PsiMode):
        raise VerticalError(
            f"PSI mode must be one of {list(get_args(PsiMode))}, got {message.mode!r}"
        )
    mode = cast(PsiMode, message.mode)
    return kind(mode=mode, points=_split_points(message.points, f"{kind.__name__}.points"))


def _answer_message(response: PsiResponse) -> vpb.PsiAnswer:
    return vpb.PsiAnswer(double_blinded=b"".join(response.double_blinded))


def _psi_response(message: vpb.PsiAnswer) -> PsiResponse:
    return PsiResponse(
        double_blinded=_split_points(message.double_blinded, "PsiResponse.double_blinded")
    )


def _release_of(declaration: vpb.Declaration) -> GaussianRelease | None:
    """The release a party declared (None: it sends without one)."""
    if not declaration.HasField("release"):
        return None
    return GaussianRelease(
        clip_norm=declaration.release.clip_norm,
        noise_multiplier=declaration.release.noise_multiplier,
    )


class RowBudget:
    """A feature party's own privacy budget, enforced per row of its table on every pass.

    Each ``Forward`` releases each requested row once. A row's spend is the
    events of :func:`~fedwarden.vertical.release.release_events` composed over
    the training and the predict passes that released it (dp-accounting,
    one example under replace-one neighbours, as the driver's ledger accounts
    them); rows never compose with each other (parallel composition).
    """

    def __init__(
        self, party: str, release: GaussianRelease, budget: PrivacyBudget, table_rows: int
    ) -> None:
        self._party = party
        self._release = release
        self.budget = budget
        self._passes = np.zeros((table_rows, 2), dtype=np.int64)
        """Per table row: how many training passes (column 0) and predict passes (1) released it."""
        self._spends: dict[tuple[int, int], PrivacySpend] = {}
        """:meth:`spend` by pass counts: every batch of a pass asks for the same few counts."""

    def spend(self, training_passes: int, predict_passes: int) -> PrivacySpend:
        """The guarantee of a row released by that many training and predict passes."""
        counts = (training_passes, predict_passes)
        if counts not in self._spends:
            events = [
                dp_event.SelfComposedDpEvent(event, count)
                for training, count in ((True, training_passes), (False, predict_passes))
                if count > 0
                for event in release_events(self._release, training)
            ]
            self._spends[counts] = compute_spend(events, self.budget.delta, "replace_one")
        return self._spends[counts]

    def charge(self, rows: Rows, *, training: bool) -> None:
        """Count one pass over the distinct table ``rows``, or refuse it and count nothing.

        Raises :class:`~fedwarden.privacy.ledger.BudgetExceeded` when the pass
        would take any of the rows past the budget.
        """
        one_pass = (1, 0) if training else (0, 1)
        for before in np.unique(self._passes[rows], axis=0).tolist():
            would_spend = self.spend(before[0] + one_pass[0], before[1] + one_pass[1])
            if would_spend.epsilon > self.budget.epsilon:
                raise BudgetExceeded(
                    f"a {'training' if training else 'predict'} pass releasing party "
                    f"{self._party!r}'s rows (one of them already released by {before[0]} "
                    f"training and {before[1]} predict passes)",
                    self.spend(before[0], before[1]),
                    would_spend,
                    self.budget,
                )
        self._passes[rows] += one_pass


class FeaturePartyServer:
    """A feature party serving the ``FeatureParty`` service: its table, alignment and bottom model.

    ``tls`` None means plaintext on loopback only (``--insecure``); with TLS,
    ``driver`` is required and only the client whose certificate bears that
    name is answered. A ``release`` needs the party's own ``budget``, which
    it enforces per row (:class:`RowBudget`). ``noise`` draws the release's
    noise (secure by default). ``bottom_seed`` initialises the bottom model:
    the party's choice, never the label party's proposal (None: a secret seed
    drawn at each ``Prepare``, so the label party does not know the weights).
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
        self._budget = None
        if release is not None and budget is not None:
            self._budget = RowBudget(name, release, budget, self._features.shape[0])
        self._noise = noise if noise is not None else NoiseSource.secure()
        self._bottom_seed = bottom_seed
        self._party: FeatureParty | None = None
        self._party_rows: Rows | None = None
        """The table rows of the prepared party's aligned rows, in the agreed order."""
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def serve(self) -> int:
        """Start listening; the bound port."""
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fedwarden-vertical"),
            options=channel_options(),
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
        if self._tls is None:
            port = server.add_insecure_port(self.address)
        else:
            port = server.add_secure_port(self.address, self._tls.server_credentials())
        if port == 0:
            raise VerticalError(
                f"cannot listen on {self.address}: the address is taken or not this machine's"
            )
        server.start()
        self._server, self.port = server, port
        logger.info("feature party %s serving on port %d", self.name, port)
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (after ``grace`` seconds for calls in flight)."""
        if self._server is not None:
            self._server.stop(grace).wait()

    def wait(self) -> None:
        """Block until the server stops."""
        if self._server is not None:
            self._server.wait_for_termination()

    def _guarded(
        self, method: str, function: Callable[[Message], Message]
    ) -> Callable[[Message, grpc.ServicerContext], Message]:
        """``function`` as a handler: the caller authorized, one call at a time, errors refused."""

        def handle(request: Message, context: grpc.ServicerContext) -> Message:
            self._authorize(context)
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

    def _authorize(self, context: grpc.ServicerContext) -> None:
        """Abort a call from anyone but the named driver (named whenever TLS is on)."""
        if self._driver is None:
            return
        names = context.auth_context().get("x509_common_name") or [b""]
        caller = names[0].decode()
        if caller != self._driver:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"party {self.name!r} answers only the label party {self._driver!r}, not "
                f"{caller!r}",
            )

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
        return _points_message(self._follower.offer())

    def _intersect(self, request: Message) -> vpb.PsiAnswer:
        points = _psi_points(cast(vpb.PsiPoints, request), PsiRequest)
        return _answer_message(self._follower.answer_intersection(points))

    def _request_final(self, request: Message) -> vpb.PsiPoints:
        offer = _psi_points(cast(vpb.PsiPoints, request), PsiOffer)
        return _points_message(self._follower.final_request(offer))

    def _finish_final(self, request: Message) -> vpb.AlignmentReceipt:
        rows, digest = self._follower.finish_final(_psi_response(cast(vpb.PsiAnswer, request)))
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
        if self._budget is not None:
            self._budget.charge(table_rows[rows], training=message.training)
        activation = party.forward(rows, message.recipient, training=message.training)
        return vpb.Activation(
            sender=activation.sender,
            recipient=activation.recipient,
            values=encode_tensor(activation.values),
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
        self._release = _release_of(declaration)
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
        return _psi_points(self._call("Offer", vpb.Empty(), vpb.PsiPoints), PsiOffer)

    def answer_intersection(self, request: PsiRequest) -> PsiResponse:
        """Alignment phase 1: the party, the sender that offered, answers the driver's request."""
        return _psi_response(self._call("Intersect", _points_message(request), vpb.PsiAnswer))

    def final_request(self, offer: PsiOffer) -> PsiRequest:
        """Alignment phase 2: the party accepts the driver's offer; its PSI request."""
        reply = self._call("RequestFinal", _points_message(offer), vpb.PsiPoints)
        return _psi_points(reply, PsiRequest)

    def finish_final(self, response: PsiResponse) -> tuple[int, bytes]:
        """Alignment phase 2: the party learns the intersection; its row count and order digest."""
        receipt = self._call("FinishFinal", _answer_message(response), vpb.AlignmentReceipt)
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
        if declaration.name != self._name or _release_of(declaration) != self._release:
            raise VerticalError(
                f"the party at {self.address} declared {self._name!r} with release "
                f"{self._release} but now answers as {declaration.name!r} with "
                f"{_release_of(declaration)}; reconnect and start again"
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


@dataclass(frozen=True)
class PartyTable:
    """One party's table: entity ids, feature columns, and labels at the label party."""

    identifiers: tuple[Identifier, ...]
    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64] | None = None


def load_party_table(path: Path) -> PartyTable:
    """Read ``ids``, ``features`` and (optional) ``labels`` from an ``.npz`` (never pickled)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            contents = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read party table {path}: {error}; write it with numpy.savez(path, "
            "ids=..., features=..., labels=...) using str or int ids"
        ) from None
    missing = {"ids", "features"} - set(contents)
    if missing:
        raise DataError(f"party table {path} lacks {sorted(missing)}; it needs ids and features")
    ids, features = contents["ids"], contents["features"]
    if ids.ndim != 1 or ids.dtype.kind not in "USiu":
        raise DataError(f"{path}: ids must be a 1-D array of str, bytes or int, got {ids.dtype}")
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise DataError(
            f"{path}: features must be (rows, columns) with one row per id; got shape "
            f"{features.shape} for {len(ids)} ids"
        )
    if features.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: features must be numbers (an int or float array), got dtype "
            f"{features.dtype}; encode categorical columns as numbers first"
        )
    if not np.isfinite(features).all():
        bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise DataError(
            f"{path}: features hold NaN or infinite values in {len(bad_rows)} rows (first: row "
            f"{bad_rows[0]}); impute or drop them before serving the table"
        )
    labels = contents.get("labels")
    if labels is not None:
        if labels.shape != ids.shape or labels.dtype.kind not in "iu":
            raise DataError(
                f"{path}: labels must be one whole-number class per id (shape {ids.shape}), got "
                f"shape {labels.shape} of {labels.dtype}"
            )
        if len(labels) and labels.min() < 0:
            raise DataError(
                f"{path}: labels must be classes 0, 1, 2, ..., got {labels.min()}; number the "
                "classes from 0"
            )
    identifiers = tuple(item.item() for item in ids)
    return PartyTable(
        identifiers,
        features.astype(np.float64),
        None if labels is None else labels.astype(np.int64),
    )


@dataclass(frozen=True)
class VerticalResult:
    """What the label party reports after training: sizes, losses, accuracy and privacy spent."""

    aligned_rows: int
    losses: tuple[float, ...]
    accuracy: float
    epsilon: Mapping[str, float]
    """Epsilon charged to each feature party that released under DP (empty without DP)."""
    delta: float | None
    """The delta of every epsilon: the driver's budget's (None without any DP)."""
    label_epsilon: float | None = None
    """Label DP epsilon charged to the label party (the accountant's figure at ``delta``);
    None: label DP was turned off, and every feature party could read the training labels."""


def train_label_party(
    name: str,
    table: PartyTable,
    parties: Sequence[RemoteFeatureParty],
    *,
    kind: ArchitectureKind,
    plan: TrainingPlan,
    test_share: float = 0.3,
    split_seed: int = 7,
    architecture_seed: int = 0,
    budget: PrivacyBudget | None = None,
    label_epsilon: float | None = DEFAULT_LABEL_EPSILON,
    noise: NoiseSource | None = None,
) -> VerticalResult:
    """Align by PSI, train split learning with the remote parties, and test on held-out rows.

    The label party's own columns are the first bottom, the remote parties'
    follow in the given order. The aligned rows are split by a public seeded
    draw: ``test_share`` of them test. Declared releases are charged to a
    ledger in which each releasing party may spend ``budget`` (required when
    a party releases); training that would exceed it is refused before it
    starts. The charges are returned.

    The labels are protected by label DP at ``label_epsilon``
    (:mod:`fedwarden.vertical.label_dp`, randomized labels drawn from
    ``noise``, secure by default), charged to the label party's entries of the
    same ledger (against ``budget`` too, when given). ``label_epsilon`` None
    turns it off: a warning is logged and the result says so.
    """
    if table.labels is None:
        raise DataError(f"the label party {name!r} needs labels in its table")
    if not 0 < test_share < 1:
        raise DataError(f"test_share must lie strictly between 0 and 1, got {test_share!r}")
    releasing = [party for party in parties if party.release is not None]
    if releasing and budget is None:
        raise ConfigError(
            f"parties {[party.name for party in releasing]} release under DP but the label "
            f"party {name!r} has no budget to check their releases against; give budget "
            "(--epsilon and --delta)"
        )
    aligned = align_as_leader(name, table.identifiers, parties)
    own_rows = aligned.rows[name]
    cut = int((1 - test_share) * len(own_rows))
    if cut == 0 or cut == len(own_rows):
        raise DataError(
            f"the parties share {len(own_rows)} aligned entities, which a test share of "
            f"{test_share} splits into {cut} to train and {len(own_rows) - cut} to test; both "
            "need at least one: align larger tables, or change the test share"
        )
    labels = table.labels[own_rows]
    spec = ArchitectureSpec(
        kind,
        (table.features.shape[1], *(party.columns for party in parties)),
        classes=max(int(labels.max()) + 1, 2),
        seed=architecture_seed,
    )
    label_dp = None
    if label_epsilon is None:
        logger.warning(
            "label DP is OFF (opted out): every feature party can read the training labels "
            "from the cut-layer gradients the label party %r sends",
            name,
        )
    else:
        label_dp = LabelRandomizedResponse(label_epsilon, spec.classes)
    for position, party in enumerate(parties, start=1):
        party.prepare(spec, position)
    architecture = spec.build()
    own = FeatureParty(name, table.features[own_rows], architecture.bottoms[0])
    ledger = None
    if budget is not None and (releasing or label_dp is not None):
        ledger = PrivacyLedger(
            budget,
            privacy_unit="example",
            neighboring="replace_one",
            client_budget=budget.epsilon,
        )
    elif label_dp is not None:
        ledger = PrivacyLedger(
            PrivacyBudget(label_dp.epsilon, REPORT_DELTA),
            privacy_unit="example",
            neighboring="replace_one",
        )
    bottoms: list[BottomParty] = [own, *parties]
    label_party = LabelParty(name, labels, architecture.top, label_dp=label_dp, noise=noise)
    split = SplitLearning(bottoms, label_party, ledger=ledger)
    order = np.random.default_rng(split_seed).permutation(len(own_rows))
    losses = split.fit(order[:cut], plan)
    accuracy = split.accuracy(order[cut:])
    if ledger is None:
        return VerticalResult(len(own_rows), tuple(losses), accuracy, {}, None)
    epsilon = {party.name: ledger.client_spent(party.name).epsilon for party in releasing}
    return VerticalResult(
        len(own_rows),
        tuple(losses),
        accuracy,
        epsilon,
        ledger.budget.delta,
        None if label_dp is None else ledger.client_spent(name).epsilon,
    )
