"""Sample-level DP-SGD's mechanism: Opacus's per-sample clipping, our noise, per-client accounting.

Abadi et al. 2016, "Deep Learning with Differential Privacy" (Algorithm 1), as
Opacus implements it (Yousefpour et al. 2021, "Opacus: User-Friendly
Differential Privacy Library in PyTorch"). Each step of local training:

1. draws a batch by Poisson sampling: every example of the client joins
   independently with rate ``q = batch_size / n`` (``n`` the client's training
   examples, ``q`` capped at 1), Opacus's ``DPDataLoader`` semantics without a
   ``DataLoader``: the mask is drawn from the same secure source as the noise
   (as Opacus's ``secure_mode``), never from the seeded ``client.rng``, since
   amplification by sampling assumes nobody knows the batches; an empty batch
   is a step too (it adds pure noise);
2. computes per-sample gradients (Opacus's ``GradSampleModule``);
3. clips each one to L2 norm ``max_grad_norm`` (``C``) and sums them,
   adds Gaussian noise of standard deviation ``noise_multiplier * C`` (``z C``)
   to the sum and divides by the expected batch size ``q n`` (Opacus's
   ``DPOptimizer``: ``clip_and_accumulate``, ``add_noise``, ``scale_grad``);
4. takes the wrapped optimizer's step (SGD or Adam, with momentum, weight
   decay and FedProx's proximal term applied to the privatized gradient, which
   is post-processing).

One local epoch is :meth:`~fedwarden.privacy.poisson.PoissonSampling.steps_per_epoch`
steps, ``n / batch_size`` rounded (halves up, at least one): the expected
number of steps for each example to be seen once, and the count the ledger
charges and the calibration plans for. Opacus's own ``DPDataLoader`` instead
takes ``q = 1 / ceil(n / batch_size)`` and ``ceil(n / batch_size)`` steps; the
difference is below one step per epoch.

Only the noise differs from Opacus: :class:`NoiseSourceDPOptimizer` draws it
from :class:`~fedwarden.privacy.randomness.NoiseSource` (cryptographically
secure, Holohan & Braghin 2021's sum of Gaussians) instead of
``torch.normal``. Production uses ``NoiseSource.secure()`` for the noise and
the batches alike, so two runs with the same seed draw different batches: a DP
run is not bit-reproducible, by design. Passing a test-mode source
(``NoiseSource.for_testing``) makes each fit draw its noise and its batches
from ``NoiseSource.for_testing(key)`` with ``key`` taken from ``client.rng``,
so they depend only on (run seed, round, client) and a fit is reproducible bit
for bit on any worker; every such fit logs that it is in test mode.

Accounting is Opacus's RDP accountant, one per client (Mironov et al. 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism"; conversion to
(ε, δ) by Balle et al. 2020, Theorem 21): its step hook counts every DP step.
Its history, the ``(z, q, steps)`` phases the client has run, lives in
``client.state`` as three NumPy arrays under ``"dp_sgd/"``, so the client's ε
is cumulative across rounds and survives a resume. Each fit reports
``metrics["client_epsilon"]`` (at ``delta``) and ``metrics["dp_sgd_steps"]``, both
cumulative, and nothing else: a training loss would be a noiseless statistic
of the private data. The orders are the integers :data:`RDP_ORDERS`, where
Opacus's RDP of the sampled Gaussian equals dp-accounting's to rounding, so a
client's ε is dp-accounting's RDP ε at those orders. Opacus 1.6 still ships the
fractional-order series that dp-accounting has since rewritten; at fractional
orders it gives lower values (0.39 against 0.47 at order 1.6 for ``q = 0.107,
z = 1``), which could understate ε. Leaving them out makes ε slightly
conservative (4% above dp-accounting's default orders in the test's case).

Opacus's wrappers (``GradSampleModule``, the ``DPOptimizer``: :func:`private_training`) are
built once per trainer and reused by every client and round, as
:class:`~fedwarden.models.torch.TorchTrainer` reuses its module; what differs
between fits (expected batch size, noise source, accountant) is set on them
per fit (:func:`accounted_fit`), so the math is that of freshly built wrappers.
Building them costs about 0.3 ms, 1% of a round of the benchmark's MLP
(``benchmarks/dp_sgd_overhead.py``), after the first wrapping in a process has
paid Opacus's one-time initialization (about a second, once per worker): it
does not dominate, and reusing them is free. The trainer that runs these steps on a
torch model is :class:`fedwarden.models.dp_sgd.DpSgdTrainer`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from fedwarden.core.errors import SpecMismatchError
from fedwarden.core.messages import CLIENT_EPSILON, Metrics
from fedwarden.privacy.poisson import PoissonSampling
from fedwarden.privacy.randomness import NoiseSource

__all__ = [
    "RDP_ORDERS",
    "NoiseSourceDPOptimizer",
    "accounted_fit",
    "client_epsilon",
    "fit_metrics",
    "private_training",
]

AccountantState = MutableMapping[str, npt.NDArray[np.generic]]
"""Where a client's accountant history lives between fits (the client's state)."""

RDP_ORDERS: tuple[int, ...] = (*range(2, 64), 128, 256, 512, 1024)
"""Rényi orders of each client's accountant: 2 to 63 and dp-accounting's 128 to 1024."""

STATE_PREFIX = "dp_sgd/"
NOISE_MULTIPLIERS = STATE_PREFIX + "noise_multiplier"
SAMPLE_RATES = STATE_PREFIX + "sample_rate"
STEPS = STATE_PREFIX + "steps"


class NoiseSourceDPOptimizer(DPOptimizer):
    """Opacus's ``DPOptimizer`` with its Gaussian noise drawn from a :class:`NoiseSource`.

    Everything else (per-sample clipping, the expected-batch-size denominator,
    the step hook that feeds the accountant) is Opacus's own code.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_source: NoiseSource,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        self.noise_source = noise_source

    def add_noise(self) -> None:
        """Add N(0, (z C)^2) to every coordinate of the summed clipped gradient (Abadi et al. 2016).

        Opacus's ``add_noise`` with one vectorised draw from the noise source
        for all parameters in place of ``torch.normal`` per parameter, copied
        to the parameters' device once.
        """
        params = self.params
        std = self.noise_multiplier * self.max_grad_norm
        noise = self.noise_source.gaussian(sum(p.numel() for p in params), std)
        device = params[0].summed_grad.device if params else torch.device("cpu")
        draws = torch.from_numpy(noise).to(device)
        offset = 0
        for p in params:
            _check_processed_flag(p.summed_grad)
            size = p.numel()
            draw = draws[offset : offset + size].to(p.summed_grad.dtype)
            p.grad = (p.summed_grad + draw.view_as(p.summed_grad)).view_as(p)
            offset += size
            _mark_as_processed(p.summed_grad)


def private_training(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_source: NoiseSource,
    noise_multiplier: float,
    max_grad_norm: float,
) -> tuple[GradSampleModule, NoiseSourceDPOptimizer]:
    """Opacus's per-sample gradient module and DP optimizer around ``module`` and ``optimizer``.

    As Opacus's ``make_private`` wires them for Poisson sampling; the expected
    batch size, the noise source and the accountant are set per fit (:func:`accounted_fit`).
    """
    grad_sample_module = GradSampleModule(module, loss_reduction="mean")
    grad_sample_module.forbid_grad_accumulation()  # as make_private does for Poisson
    dp_optimizer = NoiseSourceDPOptimizer(
        optimizer,
        noise_source=noise_source,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=1.0,
    )
    return grad_sample_module, dp_optimizer


@contextmanager
def accounted_fit(
    optimizer: NoiseSourceDPOptimizer, state: AccountantState, sampling: PoissonSampling
) -> Iterator[RDPAccountant]:
    """One fit's DP-SGD steps counted by the client's accountant, kept in ``state`` after it.

    Sets the optimizer's expected batch size ``q n`` for this client, restores the
    client's accountant from ``state`` and hooks it to every step; the history is
    written back only when the fit completes.
    """
    optimizer.expected_batch_size = sampling.expected_batch_size
    accountant = _restore_accountant(state)
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sampling.rate))
    try:
        yield accountant
    finally:
        optimizer.step_hook = None
    _save_accountant(state, accountant)


def fit_metrics(accountant: RDPAccountant, delta: float) -> Metrics:
    """What a DP-SGD fit reports: the client's cumulative ε at ``delta`` and its steps."""
    return {
        CLIENT_EPSILON: client_epsilon(accountant.history, delta),
        "dp_sgd_steps": float(sum(steps for _, _, steps in accountant.history)),
    }


def client_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of an Opacus RDP accountant's history of ``(z, q, steps)`` phases.

    What ``RDPAccountant.get_epsilon(delta, alphas=RDP_ORDERS)`` computes, with
    each phase's RDP as ``steps`` times the per-step RDP of its ``(q, z)``,
    cached: Opacus's ``compute_rdp`` returns exactly that product, and
    recomputing it on every fit would cost as much as the fit's training.
    """
    if not history:
        return 0.0
    if any(z == 0.0 for z, _, _ in history):
        return math.inf  # a step without noise has no privacy guarantee
    rdp = sum(steps * _rdp_per_step(q, z) for z, q, steps in history)
    epsilon, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=1024)
def _rdp_per_step(
    sample_rate: float, noise_multiplier: float
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Opacus's RDP of one step of the sampled Gaussian mechanism at :data:`RDP_ORDERS`."""
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS)
    )
    rdp.setflags(write=False)
    return rdp


def _restore_accountant(state: AccountantState) -> RDPAccountant:
    """Opacus's RDP accountant with the client's history of ``(z, q, steps)`` phases."""
    accountant = RDPAccountant()
    keys = (NOISE_MULTIPLIERS, SAMPLE_RATES, STEPS)
    if not any(key in state for key in keys):
        return accountant
    stored = [state.get(key) for key in keys]
    shapes = {None if array is None else array.shape for array in stored}
    if len(shapes) != 1 or None in shapes:
        raise SpecMismatchError(
            f"client state holds an incomplete DP-SGD history ({NOISE_MULTIPLIERS}, "
            f"{SAMPLE_RATES} and {STEPS} must be present together with one entry per phase); "
            "it was altered or saved by another program, and the client's epsilon cannot be "
            "trusted: restore its state from the run directory"
        )
    noise_multipliers, sample_rates, steps = (np.asarray(a).reshape(-1) for a in stored)
    accountant.history = [
        (float(z), float(q), int(k))
        for z, q, k in zip(noise_multipliers, sample_rates, steps, strict=True)
    ]
    return accountant


def _save_accountant(state: AccountantState, accountant: RDPAccountant) -> None:
    """Keep the accountant's history in the client's state as NumPy arrays (no pickle)."""
    history = accountant.history
    state[NOISE_MULTIPLIERS] = np.array([z for z, _, _ in history], dtype=np.float64)
    state[SAMPLE_RATES] = np.array([q for _, q, _ in history], dtype=np.float64)
    state[STEPS] = np.array([k for _, _, k in history], dtype=np.int64)
