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
The gRPC runtime runs the same client and server objects in separate processes.

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

import logging
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import numpy as np

from fedwarden.core.errors import RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian, new_rotation_seed
from fedwarden.secure.encoding import RingEncoder, RingEncodingError
from fedwarden.secure.secagg import (
    InProcessSecureSum,
    MaskedInput,
    SecAggAborted,
    SecAggParameters,
)

logger = logging.getLogger(__name__)


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
        """The current (or last) round's protocol, for its survivors and counters."""
        self._encoder: RingEncoder | None = None
        self._rotation_seed = b""
        self._size = 0
        # A test-mode noise source is one keystream: draws from several threads would
        # interleave in no fixed order, so reproducible runs mask one client at a time.
        self._threads = 1 if noise.reproducible else client_threads or os.cpu_count() or 1
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future[MaskedInput | None]] = deque()

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Advertise and share keys in the cohort; pick this round's encoder and rotation."""
        self._size = size
        if self.distributed_dp is None:
            self._encoder = RingEncoder.finest(
                self.clip_norm,
                max(len(cohort), 1),
                self.parameters.modulus_bits,
                "example_count" if self.weighting == "examples" else "uniform",
                self.max_weight,
            )
            length = size + 1
        else:
            self._rotation_seed = new_rotation_seed()
            length = self.distributed_dp.padded_dimension
        self.last_round = InProcessSecureSum(cohort, length, self.parameters)
        self.last_round.setup()
        self._in_flight.clear()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="secagg-client")

    def add(self, update: ClientUpdate) -> None:
        """The client encodes (and noises) its update and masks it; the server adds it."""
        assert self.last_round is not None and self._pool is not None
        vector = update.update
        who = f"client {update.client_id!r}"
        if vector.shape != (self._size,):
            raise UpdateRejected(
                "shape",
                f"{who} cannot encode an update of shape {vector.shape}; the model "
                f"needs ({self._size},)",
            )
        if not np.isfinite(vector).all():
            raise UpdateRejected("non_finite", f"{who} cannot encode NaN or Inf values")
        self._in_flight.append(self._pool.submit(self._client_round, update))
        while len(self._in_flight) > 2 * self._threads:
            self._receive_oldest()

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
        assert self.last_round is not None
        try:
            if self.distributed_dp is not None:
                encoded = self.distributed_dp.encode(update.update, self._rotation_seed, self.noise)
            else:
                assert self._encoder is not None
                weight = min(update.num_examples, self.max_weight)
                encoded = self._encoder.encode(update.update, self.noise, weight)
        except RingEncodingError as error:
            logger.warning(
                "client %r drops out: it cannot encode its update: %s", update.client_id, error
            )
            return None
        return self.last_round.mask(update.client_id, encoded)

    def result(self) -> Aggregate:
        """Unmask the survivors' sum and decode it (``RoundAborted`` below ``t`` survivors)."""
        assert self.last_round is not None
        while self._in_flight:
            self._receive_oldest()
        try:
            ring_sum = self.last_round.finish()
        except SecAggAborted as abort:
            raise RoundAborted(f"secure aggregation aborted: {abort}") from abort
        count = len(self.last_round.survivors)
        if self.distributed_dp is not None:
            total = self.distributed_dp.decode(ring_sum, self._rotation_seed)
            denominator = float(self.distributed_dp.cohort_size)
            return Aggregate((total / denominator).astype(VECTOR_DTYPE), denominator, count)
        assert self._encoder is not None
        decoded = self._encoder.decode(ring_sum)
        if decoded.weight == 0:
            raise RoundAborted("secure aggregation: the surviving updates carry no weight")
        mean = (decoded.total / decoded.weight).astype(VECTOR_DTYPE)
        return Aggregate(mean, float(decoded.weight), count)

    def report(self) -> dict[str, Any]:
        """What the run summary says about the protocol (k and t of the last round)."""
        report: dict[str, Any] = {
            "protocol": "SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020)",
            "modulus_bits": self.parameters.modulus_bits,
            "clip_norm": self.clip_norm if self.distributed_dp is None else None,
            "distributed_dp": self.distributed_dp is not None,
        }
        if self.last_round is not None:
            report["num_neighbours"] = self.last_round.params.num_neighbours
            report["threshold"] = self.last_round.params.threshold
        return report
