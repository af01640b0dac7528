"""The SecAgg+ aggregator: the server sees only the cohort's sum.

DESIGN idea 2: a secure aggregator hides individual updates, so a pipeline
that also holds a stage needing them (validation or clipping on the server,
robust statistics) is refused when it is built.

In simulation the protocol runs in process: :class:`SecureSum` drives one
:class:`~fedwarden.secure.secagg.SecAggClient` per cohort member and one
:class:`~fedwarden.secure.secagg.SecAggServer`, passing messages between
them; the server object only ever holds masked vectors and the shares it is
sent. Encoding, noise and masking are the client objects' work, done as each
client's update arrives on a small pool of threads (one per core: the
simulated clients work in parallel, as devices would; NumPy and the cipher
release the GIL); the server adds the masked vectors one at a time, with at
most two per thread in flight, so it still streams in O(model size) memory.

Over the ``grpc`` runtime the clients are real: :meth:`SecureSum.attach` takes
the runtime's channel, the same :func:`~fedwarden.secure.secagg.setup_round`
and :func:`~fedwarden.secure.secagg.finish_round` drive the protocol through
it (messages as ``secagg.proto`` bytes, signed like every upload), and each
client process runs :class:`SecureSumClient`, the last stage of its pipeline,
which answers those steps and encodes and masks its own update; the server
only ever receives masked ring vectors. The server relays the
cohort's certificates; each client takes its peers' identity keys from them
after checking them against its own enrolment CA, and refuses a round its own
:class:`~fedwarden.secure.secagg.policy.SecAggPolicy` does not allow.

One malicious client cannot end the run: a ring sum that does not decode
(a total weight out of range) or decodes to more than the survivors could
have sent (a weight above ``survivors * max_weight``, or a mean longer than
the clip norm allows) aborts the round with the reason; the model is
unchanged and the run goes on.

- **Plain secure sum**: each client clips its update to ``clip_norm``,
  weights it and quantizes it stochastically to ``Z_{2^b}``
  (:class:`~fedwarden.secure.encoding.RingEncoder`, whose step is the finest
  that cannot wrap for the cohort); the weight travels inside the masked
  vector, so the weighted mean is exact up to quantization.
- **Distributed DP** (Kairouz, Liu & Steinke 2021): each client clips, rotates,
  rounds and adds its share of discrete Gaussian noise
  (:class:`~fedwarden.secure.distributed_dp.DistributedDiscreteGaussian`); the
  server divides the decoded noisy sum by the fixed denominator, as DP-FedAvg does.

CKKS homomorphic aggregation is :class:`fedwarden.pipeline.he_mean.HomomorphicMean`
(its own module: TenSEAL is an optional dependency).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedwarden.core.channel import ClientChannel
from fedwarden.core.errors import RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.deploy.pki import PkiError, peer_identities
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.releases import sealed
from fedwarden.pipeline.stage import Aggregate, Aggregator, Stage
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian, new_rotation_seed
from fedwarden.secure.encoding import RingEncoder, RingEncodingError
from fedwarden.secure.prg import word_dtype
from fedwarden.secure.secagg import (
    ClientMessage,
    InProcessSecureSum,
    MaskedInput,
    RoundSetup,
    SecAggAborted,
    SecAggClient,
    SecAggError,
    SecAggParameters,
    SecAggPolicy,
    SecAggRefused,
    SecAggServer,
    ServerMessage,
    answer_step,
    finish_round,
    setup_round,
)
from fedwarden.secure.secagg.wire import (
    SecAggWireError,
    StartRound,
    client_step_bytes,
    read_client_step,
    read_server_step,
    server_step_bytes,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundEncoding:
    """How clients turn an update into ring elements in one round, as the server chose it.

    Plain secure sum: ``ring`` (clip, weight, stochastic rounding). Distributed
    DP: ``distributed_dp`` with this round's ``rotation_seed``. Travels to
    deployed clients as JSON of the encoder's fields (:meth:`to_json`).
    """

    ring: RingEncoder | None = None
    distributed_dp: DistributedDiscreteGaussian | None = None
    rotation_seed: bytes = b""

    def encode(self, update: ClientUpdate, noise: NoiseSource) -> npt.NDArray[np.unsignedinteger]:
        """The client's ring vector (``RingEncodingError`` when it cannot be encoded)."""
        if self.distributed_dp is not None:
            return self.distributed_dp.encode(update.update, self.rotation_seed, noise)
        assert self.ring is not None
        weight = min(update.num_examples, self.ring.max_weight)
        return self.ring.encode(update.update, noise, weight)

    def to_json(self) -> str:
        """The encoder's fields as JSON."""
        if self.distributed_dp is not None:
            return json.dumps(
                {
                    "distributed_dp": asdict(self.distributed_dp),
                    "rotation_seed": self.rotation_seed.hex(),
                }
            )
        assert self.ring is not None
        return json.dumps({"ring": asdict(self.ring)})

    @classmethod
    def from_json(cls, text: str) -> RoundEncoding:
        """Parse :meth:`to_json`; the encoders re-check every field."""
        try:
            value = json.loads(text)
            if "distributed_dp" in value:
                return cls(
                    distributed_dp=DistributedDiscreteGaussian(**value["distributed_dp"]),
                    rotation_seed=bytes.fromhex(value["rotation_seed"]),
                )
            return cls(ring=RingEncoder(**value["ring"]))
        except (ValueError, TypeError, KeyError) as error:
            raise SecAggError(
                "bad_encoding", f"the server's encoding for this round cannot be read: {error}"
            ) from None


def check_encodable(update: ClientUpdate, size: int) -> None:
    """Refuse (``UpdateRejected``) an update a simulated client's encoder cannot encode."""
    vector = update.update
    who = f"client {update.client_id!r}"
    if vector.shape != (size,):
        raise UpdateRejected(
            "shape",
            f"{who} cannot encode an update of shape {vector.shape}; the model needs ({size},)",
        )
    if not np.isfinite(vector).all():
        raise UpdateRejected("non_finite", f"{who} cannot encode NaN or Inf values")


class RemoteParticipants:
    """The round's SecAgg+ clients in other processes, reached through a runtime's channel.

    Messages cross as ``secagg.proto`` bytes; round 0's setup travels with the
    round's encoding and the cohort's certificates (PEM). A reply that does
    not parse counts as a dropout.
    """

    def __init__(
        self, channel: ClientChannel, encoding: RoundEncoding, certificates: Mapping[str, bytes]
    ) -> None:
        self.channel = channel
        self.encoding = encoding
        self.certificates = dict(certificates)

    def exchange(self, messages: Mapping[str, ServerMessage]) -> dict[str, ClientMessage]:
        """Send each client its message over the channel; parse the answers."""
        wire = {
            client: server_step_bytes(
                StartRound(message, self.encoding.to_json(), self.certificates)
                if isinstance(message, RoundSetup)
                else message
            )
            for client, message in messages.items()
        }
        replies: dict[str, ClientMessage] = {}
        for client, data in self.channel.exchange(wire).items():
            try:
                replies[client] = read_client_step(data)
            except SecAggWireError as error:
                logger.warning(
                    "client %r sent an unreadable secure-aggregation reply: %s", client, error
                )
        return replies


class SecureSumClient(Stage):
    """The client half of :class:`SecureSum` in a deployment: one SecAgg+ round at a time.

    A stage with only a client half, the last a deployed client runs: it
    answers the server's protocol steps (:meth:`answer`) and, in round 2,
    encodes (with the round's :class:`RoundEncoding`, noise from ``noise``)
    and masks this client's update (:meth:`client_half`). Its secrets never
    leave it except as the protocol allows. It trusts peers' identity keys
    only from certificates that chain to ``ca_certificate`` (its own kit's
    CA), and takes part only in rounds its ``policy`` allows.
    """

    name: ClassVar[str] = "secure_sum_client"
    hides_individual_updates = True

    def __init__(
        self,
        client_id: str,
        identity: Ed25519PrivateKey,
        noise: NoiseSource,
        *,
        ca_certificate: bytes,
        policy: SecAggPolicy | None = None,
    ) -> None:
        self.client_id = client_id
        self.identity = identity
        self.noise = noise
        self.ca_certificate = ca_certificate
        self.policy = policy or SecAggPolicy()
        self._round: SecAggClient | None = None
        self._encoding: RoundEncoding | None = None

    def answer(self, data: bytes) -> bytes:
        """The answer to one protocol step (``secagg.proto`` bytes both ways)."""
        message = read_server_step(data)
        if isinstance(message, StartRound):
            self._round = self._encoding = None
            encoding = RoundEncoding.from_json(message.encoding_json)
            self.policy.check_encoding(
                self.client_id,
                modulus_bits=(
                    encoding.distributed_dp or encoding.ring or message.setup
                ).modulus_bits,
                distributed_dp=encoding.distributed_dp,
                reproducible_noise=self.noise.reproducible,
            )
            try:
                peers = peer_identities(message.peer_certificates, self.ca_certificate)
            except PkiError as error:
                raise SecAggRefused(
                    "untrusted_certificate",
                    f"client {self.client_id!r} refuses the round: {error}",
                ) from None
            self._round = SecAggClient(
                self.client_id,
                message.setup,
                identity=self.identity,
                peer_identities=peers,
                policy=self.policy,
            )
            self._encoding = encoding
            return client_step_bytes(self._round.advertise_keys())
        if self._round is None:
            raise SecAggError(
                "not_started", f"client {self.client_id!r} has no secure-aggregation round open"
            )
        return client_step_bytes(answer_step(self._round, message))

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """``update`` encoded and masked: its payload is the masked ring vector.

        Nothing computed from the client's data travels beside it in clear: its
        example count is inside the masked vector (as its weight) and only public
        metrics are kept (:func:`~fedwarden.pipeline.releases.sealed`).
        """
        if self._round is None or self._encoding is None:
            raise SecAggError(
                "not_started",
                f"client {self.client_id!r} took no part in this round's key exchange, so it "
                "cannot mask an update",
            )
        masked = self._round.mask_input(self._encoding.encode(update, self.noise))
        return sealed(
            update, masked.masked.tobytes(), {"secagg_round_seed": masked.round_seed.hex()}
        )


class SecureSum(Aggregator):
    """SecAgg+ over the cohort: the server learns the sum of the survivors' encoded updates.

    Without ``distributed_dp`` the result is the weighted mean (``weighting``:
    ``"examples"`` weights by example count, capped at ``max_weight``; or
    ``"uniform"``). With it, the result is the noisy sum divided by
    ``distributed_dp.cohort_size``, the fixed denominator of DP-FedAvg.
    A round with fewer than ``t`` survivors raises :class:`RoundAborted`.
    """

    name: ClassVar[str] = "secure_sum"
    hides_individual_updates = True

    def __init__(
        self,
        parameters: SecAggParameters,
        *,
        clip_norm: float,
        noise: NoiseSource,
        weighting: Literal["examples", "uniform"] = "examples",
        max_weight: int = 1,
        distributed_dp: DistributedDiscreteGaussian | None = None,
        client_threads: int | None = None,
    ) -> None:
        self.parameters = parameters
        self.clip_norm = clip_norm
        self.noise = noise
        self.weighting = weighting
        self.max_weight = max_weight if weighting == "examples" else 1
        self.distributed_dp = distributed_dp
        self.last_round: InProcessSecureSum | None = None
        """The current (or last) simulated round's protocol, for its survivors and counters."""
        self._channel: ClientChannel | None = None
        self._server: SecAggServer | None = None
        self._participants: RemoteParticipants | None = None
        self._encoding: RoundEncoding | None = None
        self._size = 0
        # A test-mode noise source is one keystream: draws from several threads would
        # interleave in no fixed order, so reproducible runs mask one client at a time.
        self._threads = 1 if noise.reproducible else client_threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[MaskedInput | None]] = deque()

    def attach(self, channel: ClientChannel | None) -> None:
        """Run the protocol with real clients through ``channel`` (None: simulate them here)."""
        self._channel = channel

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Advertise and share keys in the cohort; pick this round's encoder and rotation."""
        self._size = size
        if self.distributed_dp is None:
            ring = RingEncoder.finest(
                self.clip_norm,
                max(len(cohort), 1),
                self.parameters.modulus_bits,
                "example_count" if self.weighting == "examples" else "uniform",
                self.max_weight,
            )
            self._encoding = RoundEncoding(ring=ring)
            length = size + 1
        else:
            self._encoding = RoundEncoding(
                distributed_dp=self.distributed_dp, rotation_seed=new_rotation_seed()
            )
            length = self.distributed_dp.padded_dimension
        if self._channel is not None:
            self._start_remote(cohort, length)
            return
        self.last_round = InProcessSecureSum(cohort, length, self.parameters)
        self.last_round.setup()
        self._in_flight.clear()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="secagg-client")

    def _start_remote(self, cohort: Sequence[str], length: int) -> None:
        """Rounds 0 and 1 with the deployed clients (an abort surfaces in :meth:`result`)."""
        assert self._channel is not None and self._encoding is not None
        identities = self._channel.identity_keys(cohort)
        certificates = self._channel.peer_certificates(cohort)
        self._server = SecAggServer(
            cohort,
            length,
            self.parameters,
            identities={
                client: Ed25519PublicKey.from_public_bytes(key)
                for client, key in identities.items()
            },
        )
        self._participants = RemoteParticipants(self._channel, self._encoding, certificates)
        try:
            setup_round(self._server, self._participants)
        except SecAggAborted as abort:
            logger.warning("secure aggregation: %s", abort)

    def add(self, update: ClientUpdate) -> None:
        """The client encodes (and noises) its update and masks it; the server adds it."""
        if self._server is not None and self._channel is not None:
            self._receive_remote(update)
            return
        assert self.last_round is not None and self._pool is not None
        check_encodable(update, self._size)
        self._in_flight.append(self._pool.submit(self._client_round, update))
        while len(self._in_flight) > 2 * self._threads:
            self._receive_oldest()

    def _receive_remote(self, update: ClientUpdate) -> None:
        """A deployed client's masked input: checked and added to the running sum."""
        assert self._server is not None
        setup = self._server.setup
        if (
            update.payload is None
            or update.payload_header.get("secagg_round_seed") != setup.round_seed.hex()
        ):
            raise UpdateRejected(
                "not_masked",
                f"client {update.client_id!r} sent no masked input of this secure-aggregation "
                "round (an unmasked update, or one from another round); it is not used",
            )
        dtype = word_dtype(setup.modulus_bits)
        if len(update.payload) % dtype.itemsize:
            raise UpdateRejected("shape", f"client {update.client_id!r}: ragged masked input")
        masked = np.frombuffer(update.payload, dtype=dtype)
        try:
            self._server.receive_masked_input(
                MaskedInput(setup.round_seed, update.client_id, masked)
            )
        except SecAggAborted as abort:
            raise UpdateRejected("secagg_aborted", str(abort)) from None

    def _receive_oldest(self) -> None:
        """The server adds the oldest client's masked input once the client is done."""
        assert self.last_round is not None
        masked = self._in_flight.popleft().result()
        if masked is not None:
            self.last_round.receive(masked)

    def _client_round(self, update: ClientUpdate) -> MaskedInput | None:
        """What the client does in round 2: encode (and noise) its update, then mask it.

        A client whose encoder refuses the update sends nothing: it drops out
        after sharing keys, and unmasking removes its pairwise masks.
        """
        assert self.last_round is not None and self._encoding is not None
        try:
            encoded = self._encoding.encode(update, self.noise)
        except RingEncodingError as error:
            logger.warning(
                "client %r drops out: it cannot encode its update: %s", update.client_id, error
            )
            return None
        return self.last_round.mask(update.client_id, encoded)

    def result(self) -> Aggregate:
        """Unmask and decode the survivors' sum; ``RoundAborted`` with the reason if it cannot.

        Aborts below ``t`` survivors, and when the sum does not decode to what
        the survivors' encoders could have produced (a malicious client's
        out-of-range masked input): the model is then left unchanged.
        """
        assert self._encoding is not None
        try:
            ring_sum, count = self._unmask()
        except SecAggAborted as abort:
            raise RoundAborted(f"secure aggregation aborted: {abort}") from abort
        try:
            return self._decode(ring_sum, count)
        except RingEncodingError as error:
            raise RoundAborted(
                f"secure aggregation: the survivors' sum does not decode ({error}); a client sent "
                "a masked input outside what its encoder can produce. The round is aborted and "
                "the model unchanged."
            ) from error

    def _decode(self, ring_sum: npt.NDArray[np.uint64], count: int) -> Aggregate:
        """The aggregate from a ring sum, after checking it is one ``count`` clients could send."""
        assert self._encoding is not None
        encoding = self._encoding
        if encoding.distributed_dp is not None:
            total = encoding.distributed_dp.decode(ring_sum, encoding.rotation_seed)
            denominator = float(encoding.distributed_dp.cohort_size)
            return Aggregate((total / denominator).astype(VECTOR_DTYPE), denominator, count)
        ring = encoding.ring
        assert ring is not None
        decoded = ring.decode(ring_sum)
        if decoded.weight == 0:
            raise RoundAborted("secure aggregation: the surviving updates carry no weight")
        if decoded.weight > count * ring.max_weight:
            raise RingEncodingError(
                f"a total weight of {decoded.weight} exceeds {count} survivors x max_weight "
                f"{ring.max_weight}"
            )
        mean = decoded.total / decoded.weight
        # Each update has norm <= C, so their weighted mean does; rounding adds at most
        # sqrt(d) times the per-coordinate error bound.
        slack = math.sqrt(mean.size) * ring.sum_error_bound(count) / decoded.weight
        norm = float(np.linalg.norm(mean))
        if norm > ring.clip_norm + slack:
            raise RingEncodingError(
                f"the decoded mean has norm {norm:.6g}, above the clip norm {ring.clip_norm} plus "
                f"the quantization bound {slack:.3g}"
            )
        return Aggregate(mean.astype(VECTOR_DTYPE), float(decoded.weight), count)

    def _unmask(self) -> tuple[npt.NDArray[np.uint64], int]:
        """Rounds 3 and 4: the ring sum of the survivors' inputs and how many they are."""
        if self._server is not None and self._participants is not None:
            ring_sum = finish_round(self._server, self._participants)
            return ring_sum, len(self._server.survivors)
        assert self.last_round is not None
        while self._in_flight:
            self._receive_oldest()
        return self.last_round.finish(), len(self.last_round.survivors)

    def report(self) -> dict[str, Any]:
        """What the run summary says about the protocol (k and t of the last round)."""
        report: dict[str, Any] = {
            "protocol": "SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020)",
            "modulus_bits": self.parameters.modulus_bits,
            "clip_norm": self.clip_norm if self.distributed_dp is None else None,
            "distributed_dp": self.distributed_dp is not None,
        }
        resolved = (
            self.last_round.params
            if self.last_round is not None
            else None
            if self._server is None
            else self._server.setup
        )
        if resolved is not None:
            report["num_neighbours"] = resolved.num_neighbours
            report["threshold"] = resolved.threshold
        server = self._server or (self.last_round.server if self.last_round else None)
        if server is not None and server.misbehaving:
            report["excluded_clients"] = dict(server.misbehaving)
        return report
