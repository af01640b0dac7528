"""Driving a SecAgg+ round: the same steps in simulation and over the gRPC runtime."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.core.errors import UpdateRejected
from fedwarden.secure.secagg.client import SecAggClient
from fedwarden.secure.secagg.messages import (
    ConsistencyAck,
    ConsistencyCheck,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RoundSetup,
    SecAggError,
    SecAggRefused,
    ShareDelivery,
    SharedKeys,
    SharesReceived,
    UnmaskingRequest,
    UnmaskingResponse,
    payload_bytes,
)
from fedwarden.secure.secagg.parameters import (
    SecAggParameters,
)
from fedwarden.secure.secagg.policy import SecAggPolicy
from fedwarden.secure.secagg.server import SecAggServer

logger = logging.getLogger("fedwarden.secure")

_Message = TypeVar("_Message")


# --- driving a round ------------------------------------------------------------------------


ServerMessage = RoundSetup | NeighbourKeys | ShareDelivery | ConsistencyCheck | UnmaskingRequest
"""What the server sends a client in rounds 0, 1, 1 (delivery), 3 and 4."""
ClientMessage = KeyAdvertisement | SharedKeys | SharesReceived | ConsistencyAck | UnmaskingResponse
"""What a client answers to each :data:`ServerMessage`, in the same order."""


class ParticipantChannel(Protocol):
    """How a round's server reaches its clients: objects in this process, or a runtime."""

    def exchange(self, messages: Mapping[str, ServerMessage]) -> dict[str, ClientMessage]:
        """Deliver ``messages[c]`` to each client ``c``; the replies of those that answered.

        A client that refuses, fails or does not answer in time is absent from
        the result: to the protocol it has dropped out.
        """
        ...


def setup_round(server: SecAggServer, channel: ParticipantChannel) -> None:
    """Rounds 0 and 1 through ``channel``: advertise keys, share them, deliver the shares."""
    advertisements = channel.exchange({client: server.setup for client in server.setup.cohort})
    _deliver(server.receive_advertisement, advertisements, KeyAdvertisement)
    shared = channel.exchange(server.close_advertisements())
    _deliver(server.receive_shares, shared, SharedKeys)
    channel.exchange(server.close_sharing())


def finish_round(server: SecAggServer, channel: ParticipantChannel) -> npt.NDArray[np.uint64]:
    """Rounds 3 and 4 through ``channel`` with the submitters; the exact sum mod 2^b.

    Raises :class:`SecAggAborted` (and returns nothing) when fewer than ``t``
    survivors or shares remain.
    """
    check = server.close_masked_inputs()
    acks = channel.exchange({client: check for client in check.survivors})
    _deliver(server.receive_consistency_ack, acks, ConsistencyAck)
    request = server.close_consistency()
    responses = channel.exchange({client: request for client in server.acknowledged})
    _deliver(server.receive_unmasking_response, responses, UnmaskingResponse)
    return server.unmask()


def answer_step(client: SecAggClient, message: ServerMessage) -> ClientMessage:
    """The client's answer to one server message (the method of its round)."""
    if isinstance(message, RoundSetup):
        return client.advertise_keys()
    if isinstance(message, NeighbourKeys):
        return client.share_keys(message)
    if isinstance(message, ShareDelivery):
        client.receive_shares(message)
        return SharesReceived(message.round_seed, client.client_id)
    if isinstance(message, ConsistencyCheck):
        return client.check_consistency(message)
    return client.unmask(message)


_Reply = TypeVar("_Reply", KeyAdvertisement, SharedKeys, ConsistencyAck, UnmaskingResponse)


def _deliver(
    receive: Callable[[_Reply], None],
    replies: Mapping[str, ClientMessage],
    kind: type[_Reply],
) -> None:
    """Hand each reply of the expected kind to the server; a rejected one is left out."""
    for client, reply in replies.items():
        if not isinstance(reply, kind) or reply.client_id != client:
            logger.warning(
                "secure aggregation: %r answered with a %s, not its own %s; left out",
                client,
                type(reply).__name__,
                kind.__name__,
            )
            continue
        try:
            receive(reply)
        except UpdateRejected:
            continue


class InProcessParticipants:
    """The clients of one round as :class:`SecAggClient` objects in this process.

    Counts what a transport would carry (``bytes_up`` / ``bytes_down``, by
    :func:`payload_bytes`, each server message once per recipient) and the
    time spent in client methods (``client_seconds``). Clients named in
    ``vanish`` stop answering; those in ``vanish_after_advertising`` stop
    after round 0.
    """

    def __init__(
        self,
        setup: RoundSetup,
        identities: Mapping[str, Ed25519PrivateKey],
        policy: SecAggPolicy | None = None,
    ) -> None:
        public = {client: key.public_key() for client, key in identities.items()}
        self.clients = {
            client: SecAggClient(
                client, setup, identity=identities[client], peer_identities=public, policy=policy
            )
            for client in setup.cohort
        }
        self.client_seconds = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.vanish: set[str] = set()
        self.vanish_after_advertising: set[str] = set()
        self._lock = threading.Lock()

    def exchange(self, messages: Mapping[str, ServerMessage]) -> dict[str, ClientMessage]:
        """Each listed client handles its message; refusals count as dropping out."""
        replies: dict[str, ClientMessage] = {}
        sizes: dict[int, int] = {}  # a message sent to many clients is sized once
        for client_id, message in messages.items():
            client = self.clients.get(client_id)
            if client is None or client_id in self.vanish:
                continue
            if id(message) not in sizes:
                sizes[id(message)] = payload_bytes(message)
            self.bytes_down += sizes[id(message)]
            try:
                reply = self.timed(answer_step, client, message)
            except SecAggRefused as refusal:
                logger.warning("client %r refused the server: %s", client_id, refusal.reason)
                continue
            self.bytes_up += payload_bytes(reply)
            replies[client_id] = reply
        if messages and all(isinstance(m, RoundSetup) for m in messages.values()):
            self.vanish |= self.vanish_after_advertising
        return replies

    def mask(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """Round 2 for one client: mask ``encoded`` (callable from several threads at once)."""
        return self.timed(self.clients[client_id].mask_input, encoded)

    def timed(self, step: Callable[..., _Message], *args: Any) -> _Message:
        """Run a client step and add its time to ``client_seconds``."""
        start = time.perf_counter()
        try:
            return step(*args)
        finally:
            with self._lock:
                self.client_seconds += time.perf_counter() - start


class InProcessSecureSum:
    """A whole SecAgg+ round in one process: separate client objects talk to one server object.

    Used by the pipeline in simulation. Messages pass by reference between
    :class:`SecAggClient` objects and a :class:`SecAggServer` through
    :class:`InProcessParticipants`, with the same :func:`setup_round` and
    :func:`finish_round` the gRPC runtime drives over the network; the server
    never sees a client's input or secrets. Counters for benchmarks:

    * ``client_seconds``: time spent in client methods, summed over clients;
    * ``server_seconds``: time spent in the server's part;
    * ``bytes_up`` / ``bytes_down``: :func:`payload_bytes` of every client-to-server
      message, and of every server-to-client message counted once per recipient.

    Without ``identities`` each simulated client gets a fresh Ed25519 identity
    key, which every other simulated client trusts; ``policy`` is the clients'
    :class:`SecAggPolicy`.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        length: int,
        params: SecAggParameters,
        *,
        identities: Mapping[str, Ed25519PrivateKey] | None = None,
        round_seed: bytes | None = None,
        policy: SecAggPolicy | None = None,
    ) -> None:
        if identities is None:
            identities = {client: Ed25519PrivateKey.generate() for client in cohort}
        public = {client: key.public_key() for client, key in identities.items()}
        started = time.perf_counter()
        self._server = SecAggServer(
            cohort, length, params, round_seed=round_seed, identities=public
        )
        self.server_seconds = time.perf_counter() - started
        self._participants = InProcessParticipants(self._server.setup, identities, policy)
        self._ready = False

    @property
    def client_seconds(self) -> float:
        return self._participants.client_seconds

    @property
    def bytes_up(self) -> int:
        return self._participants.bytes_up

    @property
    def bytes_down(self) -> int:
        return self._participants.bytes_down

    @property
    def params(self) -> SecAggParameters:
        """The resolved parameters of this round (``c``, ``k`` and ``t`` filled in)."""
        return self._server.params

    @property
    def survivors(self) -> tuple[str, ...]:
        """Clients whose inputs are in the sum (those that submitted so far)."""
        return self._server.survivors

    @property
    def server(self) -> SecAggServer:
        """The round's server object (its graph, survivors and excluded clients)."""
        return self._server

    def setup(self, drop_during_setup: Collection[str] = ()) -> None:
        """Rounds 0 and 1; clients in ``drop_during_setup`` vanish after advertising keys."""
        if self._ready:
            raise SecAggError("out_of_order", "secure aggregation: setup() runs once per round.")
        self._check_known(drop_during_setup, "drop_during_setup")
        self._participants.vanish_after_advertising = set(drop_during_setup)
        self._as_server(setup_round, self._server, self._participants)
        self._ready = True

    def submit(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> int:
        """Round 2 for one client: it masks ``encoded``, the server adds it; bytes uploaded."""
        return self.receive(self.mask(client_id, encoded))

    def mask(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """The client half of round 2: ``client_id`` masks ``encoded``.

        Safe to call from several threads for different clients at once, as
        separate devices would (NumPy and the cipher release the GIL); hand each
        result to :meth:`receive` from one thread.
        """
        participants = self._participants
        if (
            not self._ready
            or client_id not in participants.clients
            or client_id in (participants.vanish)
        ):
            raise SecAggError(
                "not_ready",
                f"secure aggregation: {client_id!r} cannot submit: call setup() first, and submit "
                "only for cohort clients that did not drop out during setup.",
            )
        return participants.mask(client_id, encoded)

    def receive(self, masked: MaskedInput) -> int:
        """The server half of round 2: add one masked input to the sum; bytes uploaded."""
        self._as_server(self._server.receive_masked_input, masked)
        size = payload_bytes(masked)
        self._participants.bytes_up += size
        return size

    def finish(self, drop_during_unmasking: Collection[str] = ()) -> npt.NDArray[np.uint64]:
        """Rounds 3 and 4 with the submitters; the exact sum mod 2^b of the submitted inputs.

        Clients in ``drop_during_unmasking`` vanish after submitting. Raises
        :class:`SecAggAborted` (and returns nothing) when fewer than ``t``
        survivors or shares remain.
        """
        self._check_known(drop_during_unmasking, "drop_during_unmasking")
        self._participants.vanish |= set(drop_during_unmasking)
        return self._as_server(finish_round, self._server, self._participants)

    def _as_server(self, step: Callable[..., _Message], *args: Any) -> _Message:
        """Run ``step`` and charge its time, less the clients' share of it, to the server."""
        start, clients_before = time.perf_counter(), self._participants.client_seconds
        try:
            return step(*args)
        finally:
            clients = self._participants.client_seconds - clients_before
            self.server_seconds += time.perf_counter() - start - clients

    def _check_known(self, clients: Iterable[str], argument: str) -> None:
        """Refuse dropout sets naming clients outside the cohort."""
        unknown = set(clients) - set(self._server.setup.cohort)
        if unknown:
            raise SecAggError(
                "unknown_client",
                f"secure aggregation: {argument} names {sorted(unknown)}, not in the cohort.",
            )
