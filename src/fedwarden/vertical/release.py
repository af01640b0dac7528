"""Differentially private cut-layer messages: clip each example's row, add Gaussian noise.

A :class:`GaussianRelease` is the Gaussian mechanism applied row by row to a
``(batch, cut_width)`` message: each example's row is scaled to L2 norm at
most ``clip_norm`` (:func:`clip_rows`), then every coordinate gets independent
``N(0, (noise_multiplier * clip_norm)^2)`` noise from a secure
:class:`~fedwarden.privacy.randomness.NoiseSource`.

What it protects (the privacy unit), honestly:

* On *activations* (forward, feature party to label party): one example's
  feature values at that feature party, against the label party and anyone
  who sees the messages. Two neighbouring tables differ in one example's row
  (``replace_one``); its released row moves by at most ``2 * clip_norm``,
  every other row not at all. A pass over a set of rows releases each row
  once (the batches of a pass are disjoint), so one pass is one Gaussian
  mechanism per example (parallel composition) and the passes compose.
* On *gradients* (backward, label party to feature party): one example's label
  (and the label party's features of it) against each feature party. Each
  feature party receives its own block of gradients, so a training epoch is
  one Gaussian mechanism per recipient.

Not protected: which entities take part (the PSI alignment reveals the shared
ids to every party), and what a party infers from its own data. Training on
noisy activations costs accuracy; see ``benchmarks/vertical.py``.

Accounting: each pass is charged to the sending party's own entries in the
:class:`~fedwarden.privacy.ledger.PrivacyLedger` (``charge_client``) as a
``dp_accounting`` ``GaussianDpEvent(noise_multiplier)``; the ledger must use
``privacy_unit="example"`` and ``neighboring="replace_one"``, under which
dp-accounting doubles the sensitivity itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from dp_accounting import dp_event

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.randomness import NoiseSource


@dataclass(frozen=True)
class GaussianRelease:
    """The Gaussian mechanism on a cut-layer message: rows clipped to ``clip_norm``, noise added."""

    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"GaussianRelease.{name} must be a finite number > 0, got {value!r}; "
                    "noise_multiplier is the noise standard deviation over clip_norm"
                )

    def event(self) -> dp_event.DpEvent:
        """The dp-accounting event of one release of each example's row."""
        return dp_event.GaussianDpEvent(self.noise_multiplier)

    def add_noise(self, clipped: torch.Tensor, noise: NoiseSource) -> npt.NDArray[np.float32]:
        """``clipped`` plus ``N(0, (noise_multiplier * clip_norm)^2)`` noise, as float32."""
        values = clipped.detach().cpu().numpy().astype(np.float64)
        values += noise.gaussian(values.shape, self.noise_multiplier * self.clip_norm)
        return values.astype(np.float32)


def clip_rows(values: torch.Tensor, clip_norm: float) -> torch.Tensor:
    """Each row scaled to L2 norm at most ``clip_norm``, differentiably (Abadi et al. 2016)."""
    norms = torch.linalg.vector_norm(values, dim=1, keepdim=True)
    return values * torch.clamp(clip_norm / (norms + 1e-12), max=1.0)
