"""Poisson sampling of a client's examples for DP-SGD: the batches and how many steps an epoch is.

Abadi et al. 2016, "Deep Learning with Differential Privacy", Section 3.1:
each step's batch holds every example independently with rate
``q = batch_size / n``. Amplification by sampling (Mironov et al. 2019,
"Rényi Differential Privacy of the Sampled Gaussian Mechanism") holds only
while the batches stay secret, so :meth:`PoissonSampling.batch` draws them
from a :class:`~fedwarden.privacy.randomness.NoiseSource`, as secret as the
noise (Opacus's ``secure_mode`` does the same with its CSPRNG).

:meth:`PoissonSampling.steps` is the one count of DP-SGD steps that the
trainer runs, the ledger charges and the noise calibration plans for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.privacy.randomness import NoiseSource

__all__ = ["PoissonSampling"]


@dataclass(frozen=True)
class PoissonSampling:
    """Poisson sampling of a client's examples for DP-SGD, as Opacus's ``DPDataLoader`` does.

    Each example joins a batch independently with probability ``rate =
    min(1, batch_size / num_examples)``; the expected batch size ``rate *
    num_examples`` is DP-SGD's fixed denominator.
    """

    num_examples: int
    batch_size: int

    def __post_init__(self) -> None:
        if self.num_examples < 1:
            raise DataError(
                "the client has no training examples, so DP-SGD's sampling rate batch_size / n is "
                "undefined; leave clients without data out of the cohort"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be at least 1 for DP-SGD")

    @property
    def rate(self) -> float:
        """The probability ``q`` that an example is in a given batch."""
        return min(1.0, self.batch_size / self.num_examples)

    @property
    def expected_batch_size(self) -> float:
        """``q n``: what the sum of clipped gradients and noise is divided by."""
        return self.rate * self.num_examples

    @property
    def steps_per_epoch(self) -> int:
        """``n / batch_size`` rounded to the nearest integer (halves up), at least 1.

        The expected number of steps for each example to be seen once, in
        exact integer arithmetic: ``round(1 / q)`` in floating point and
        ``round(n / batch_size)`` with Python's round-half-to-even disagree
        (25 and 24 at n = 196, batch 8), which once made the ledger charge
        fewer steps than the trainer took.
        """
        return max(1, (2 * self.num_examples + self.batch_size) // (2 * self.batch_size))

    def steps(self, local_epochs: int) -> int:
        """The DP-SGD steps of ``local_epochs`` epochs: what is trained, charged and calibrated."""
        if local_epochs < 1:
            raise ConfigError(f"local_epochs={local_epochs} must be at least 1 for DP-SGD")
        return local_epochs * self.steps_per_epoch

    def batch(self, randomness: NoiseSource) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Indices of one Poisson-sampled batch, in increasing order (possibly empty).

        One exact Bernoulli(``rate``) coin per example from ``randomness``:
        pass ``NoiseSource.secure()`` outside test mode, or a reader of the
        seed learns every batch and the sampling amplifies nothing.
        """
        return np.flatnonzero(randomness.bernoulli(self.rate, self.num_examples))
