"""Run Flower's SecAgg+ on the secure-aggregation benchmark's workload and measure one round.

Workload, shared with :mod:`benchmarks.secure_aggregation`: ``n`` clients, each
holding a ``d``-element float32 update (:func:`synthetic_update`); the first
``dropouts`` clients (by index) drop out after sharing keys and never send
their masked vector; the server learns the mean of the others' updates.

One call starts Flower's Simulation Engine (Ray backend, one ClientApp actor
per core, as :mod:`benchmarks.peers.flower_sim` does) with one virtual
SuperNode per client, runs the apps of :mod:`benchmarks.peers._flower_secagg_app`
for a warm-up round and the measured round, and shuts the engine down.
Flower's SecAgg+ parameters are set to match fedwarden's: ``num_shares = k + 1``
(k neighbours plus the client itself) and the same threshold ``t``; updates
are clipped to ``[-clipping_range, clipping_range]`` per coordinate and
quantized to ``quantization_range`` levels in Flower's ring of ``2^32``.

Flower and Ray are imported when :func:`run_flower_secagg` is called, not before.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from importlib.metadata import version

import numpy as np
import numpy.typing as npt

from benchmarks.peers._workload import missing_bench_extra
from fedwarden.core.errors import ConfigError, FedwardenError
from fedwarden.core.params import VECTOR_DTYPE, Vector

UPDATE_NORM = 0.5
"""L2 norm of every workload update (half the benchmark's clip norm 1, so nothing is clipped)."""

FLOWER_MODULUS = 1 << 32
"""Flower's default SecAgg+ ring size ``modulus_range``, also its largest allowed."""

FLOWER_QUANTIZATION_RANGE = 1 << 22
"""Flower's default ``quantization_range``, used unless the cohort's sum could wrap with it."""


def synthetic_update(seed: int, client_index: int, dim: int) -> Vector:
    """Client ``client_index``'s update: a float32 vector of L2 norm ``UPDATE_NORM``.

    A Gaussian direction from NumPy's PCG64 seeded with ``(seed, client_index)``:
    benchmark data, public and reproducible, not privacy randomness.
    """
    direction = np.random.default_rng([seed, client_index]).standard_normal(dim)
    return (direction * (UPDATE_NORM / np.linalg.norm(direction))).astype(VECTOR_DTYPE)


@dataclass(frozen=True)
class FlowerSecAggResult:
    """One Flower SecAgg+ round, measured.

    ``round_seconds`` runs from the start of ``SecAggPlusWorkflow.__call__``
    (setup stage) to its return (after unmasking and ``aggregate_fit``);
    ``engine_seconds`` covers all of ``flwr.simulation.run_simulation``: Ray's
    start and stop, node registration and the round. ``unmask_seconds`` is
    Flower's unmask stage (collect shares, rebuild and remove masks, aggregate).
    ``masked_upload_bytes`` is one client's masked vector in Flower's own
    serialization. ``mean`` is the aggregate Flower returned.
    """

    framework: str
    survivors: int
    engine_seconds: float
    round_seconds: float
    unmask_seconds: float
    masked_upload_bytes: int
    mean: npt.NDArray[np.float64]


def flower_quantization_range(num_clients: int) -> int:
    """Flower's default ``2^22`` levels, or the largest power of two whose cohort sum fits ``2^32``.

    Flower's server sums ``n`` quantized values below the range plus ``n``
    weight factors of at most the range, in a ring of ``2^32``.
    """
    fits = 1 << ((FLOWER_MODULUS - 1) // num_clients).bit_length() - 1
    return min(FLOWER_QUANTIZATION_RANGE, fits)


def run_flower_secagg(
    *,
    num_clients: int,
    dim: int,
    dropouts: int,
    num_neighbours: int,
    threshold: int,
    clip_norm: float,
    seed: int,
) -> FlowerSecAggResult:
    """Run one SecAgg+ round on Flower's Simulation Engine and time it.

    ``clip_norm`` becomes Flower's per-coordinate ``clipping_range`` (an L2
    bound implies the same bound on each coordinate).

    Raises:
        ImportError: if Flower or Ray is not installed.
        ConfigError: if the arguments are out of range for Flower's SecAgg+.
        FedwardenError: if Ray is already running in this process, the round did
            not produce an aggregate, or a client failed other than by the simulated dropout.
    """
    if not 0 <= dropouts < num_clients:
        raise ConfigError(
            f"dropouts={dropouts} is not allowed; it must be in 0..{num_clients - 1} "
            f"for a cohort of {num_clients}"
        )
    if not 2 <= threshold <= num_neighbours:
        raise ConfigError(
            f"threshold={threshold} is not allowed for Flower's SecAgg+, which needs "
            f"2 <= threshold < num_shares = num_neighbours + 1 = {num_neighbours + 1}"
        )
    # Flower reads this when imported; a benchmark must not post telemetry events.
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    try:
        import ray
        from flwr.simulation import run_simulation

        from benchmarks.peers import _flower_secagg_app
        from benchmarks.peers.flower_sim import _backend_config, _quiet_logs, wait_for_ray_to_exit
    except ImportError as error:
        raise missing_bench_extra("Flower", error) from error
    if ray.is_initialized():
        raise FedwardenError(
            "Ray is already running in this process, and Flower's Simulation Engine would "
            "run on that cluster and shut it down when done; call run_flower_secagg before "
            "starting a Ray runtime or after ray.shutdown()"
        )
    server_app, record = _flower_secagg_app.build_server_app(
        num_clients=num_clients,
        dim=dim,
        dropouts=dropouts,
        seed=seed,
        num_shares=num_neighbours + 1,
        threshold=threshold,
        clipping_range=clip_norm,
        quantization_range=flower_quantization_range(num_clients),
    )
    with _quiet_logs("flwr", "ray"):
        start = time.perf_counter()
        started_at = time.time()
        try:
            run_simulation(
                server_app=server_app,
                client_app=_flower_secagg_app.client_app,
                num_supernodes=num_clients,
                backend_config=_backend_config(),
            )
        finally:
            # Flower shuts Ray down itself; this only catches a run that died early.
            if ray.is_initialized():
                ray.shutdown()
        engine_seconds = time.perf_counter() - start
        wait_for_ray_to_exit(started_at)
    if (
        record.aggregate is None
        or record.round_seconds is None
        or record.unmask_seconds is None
        or record.masked_upload_bytes is None
        or record.survivors is None
    ):
        raise FedwardenError(
            "Flower's SecAgg+ round ended without an aggregate (too few survivors or "
            "shares, or a client failed); rerun with the 'flwr' logger at INFO to see "
            "which stage stopped"
        )
    if record.survivors != num_clients - dropouts:
        raise FedwardenError(
            f"Flower's SecAgg+ round summed the masked vectors of {record.survivors} clients, "
            f"but the benchmark dropped {dropouts} of {num_clients}; a client failed for "
            "another reason, rerun with the 'flwr' logger at INFO to see its error"
        )
    return FlowerSecAggResult(
        framework=f"flwr {version('flwr')}",
        survivors=record.survivors,
        engine_seconds=engine_seconds,
        round_seconds=record.round_seconds,
        unmask_seconds=record.unmask_seconds,
        masked_upload_bytes=record.masked_upload_bytes,
        mean=record.aggregate,
    )
