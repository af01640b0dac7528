"""DP-FedAvg's noisy mean, with adaptive clipping.

McMahan et al. 2018 ("Learning Differentially Private Recurrent Language
Models", Algorithm 1, the fixed-denominator estimator): the server sums the
clipped updates with equal weights, adds Gaussian noise of standard deviation
``z * C`` to the sum, and divides by the *expected* cohort size, not the
number that arrived, so the denominator reveals nothing either.

Andrew et al. 2021 ("Differentially Private Learning with Adaptive
Clipping", Algorithm 1): each client also reports whether its update was
within ``C``; the server releases that count with noise of standard
deviation ``count_noise_multiplier`` (sensitivity 1) and moves ``C``
geometrically towards the ``target_quantile`` of update norms:
``C <- C * exp(-learning_rate * (unclipped_fraction - target_quantile))``.
Both releases are charged to the privacy ledger by the caller.

The count is an integer, so its noise is the exact discrete Gaussian of
Canonne, Kamath & Steinke (2020) (:func:`~fedwarden.privacy.discrete.discrete_gaussian`),
with no floating-point gap to attack (Mironov 2012). With variance ``sigma**2``
it satisfies the same ``1 / (2 sigma**2)``-concentrated DP as the continuous
Gaussian (CKS 2020, Theorem 4), so its RDP is the ``GaussianDpEvent`` the
ledger charges.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import ClassVar

import numpy as np

from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.pipeline.blas import blas
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.privacy.clipping import AdaptiveClipping, ClipNorm
from fedwarden.privacy.discrete import discrete_gaussian
from fedwarden.privacy.randomness import NoiseSource


class GaussianMean(Aggregator):
    """Sum of clipped updates + N(0, (z C)^2 I), divided by the expected cohort size."""

    name: ClassVar[str] = "dp_gaussian_mean"

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: ClipNorm,
        expected_cohort_size: float,
        noise: NoiseSource,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm
        self.expected_cohort_size = expected_cohort_size
        self.noise = noise
        self.adaptive = adaptive
        self._sum: Vector = np.zeros(0, dtype=VECTOR_DTYPE)
        self._count = 0
        self._unclipped = 0.0

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Zero the running sum and the unclipped count."""
        self._sum = np.zeros(size, dtype=VECTOR_DTYPE)
        self._count = 0
        self._unclipped = 0.0

    def add(self, update: ClientUpdate) -> None:
        """Add one clipped update with weight 1 (the number of examples is not used)."""
        blas.saxpy(update.update, self._sum, a=1.0)
        self._count += 1
        self._unclipped += update.metrics.get("unclipped", 0.0)

    def result(self) -> Aggregate:
        """The noisy fixed-denominator mean; then move the clip norm if adaptive."""
        std = self.noise_multiplier * self.clip_norm.value
        noisy = self._sum.astype(np.float64) + self.noise.gaussian(self._sum.size, std)
        mean = (noisy / self.expected_cohort_size).astype(VECTOR_DTYPE)
        if self.adaptive is not None:
            self._adapt_clip_norm(self.adaptive)
        return Aggregate(mean, self.expected_cohort_size, self._count)

    def _adapt_clip_norm(self, adaptive: AdaptiveClipping) -> None:
        sigma_squared = Fraction(adaptive.count_noise_multiplier) ** 2
        noisy_count = round(self._unclipped) + discrete_gaussian(sigma_squared, self.noise)
        fraction = noisy_count / self.expected_cohort_size
        self.clip_norm.value *= math.exp(
            -adaptive.learning_rate * (fraction - adaptive.target_quantile)
        )

    def round_parameters(self) -> dict[str, float]:
        """Clients clip to this round's ``C``."""
        return {"clip_norm": self.clip_norm.value}
