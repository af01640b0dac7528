"""Local differential privacy: each client randomizes its own update before it leaves.

The client clips its update to L2 norm ``C`` and adds Gaussian noise of
standard deviation ``noise_multiplier * 2C``: any two updates a client could
send differ by at most ``2C``, so each release is the Gaussian mechanism with
that multiplier (Dwork & Roth 2014, Theorem A.1; accounted exactly with
dp-accounting's PLD). A client's cumulative guarantee composes its releases
over the rounds it took part in; both figures are reported in the update's
metrics (``client_epsilon_round``, ``client_epsilon``) and the count is
kept in the client's persistent state, so it survives restarts. With a
``budget``, a client whose next release would take it past that epsilon
refuses to make it (the server's ledger retires it first; this holds even if
the server's ledger was lost or reset).
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar

import numpy as np

from fedwarden.core.errors import FedwardenError
from fedwarden.core.messages import CLIENT_EPSILON, CLIENT_EPSILON_ROUND, ClientUpdate
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.accounting import compute_spend
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.clipping import clip_to_norm
from fedwarden.privacy.randomness import NoiseSource

RELEASES_KEY = "local_dp/releases"


class LocalBudgetExhausted(FedwardenError):
    """A client's next local-DP release would take it past its own epsilon budget."""


class LocalGaussianNoise(Stage):
    """Clip to ``clip_norm`` and add N(0, (z * 2 C)^2 I) on the client."""

    name: ClassVar[str] = "local_dp"

    def __init__(
        self,
        clip_norm: float,
        noise_multiplier: float,
        delta: float,
        *,
        budget: float | None = None,
        reproducible: bool = False,
    ) -> None:
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.delta = delta
        self.budget = budget
        self.reproducible = reproducible
        self._epsilon_cache: dict[int, float] = {}

    def client_half(self, update: ClientUpdate, context: ClientContext) -> ClientUpdate:
        """Clip, add the noise, and report this client's per-round and cumulative epsilon."""
        releases = int(context.state.get(RELEASES_KEY, np.zeros(1, np.int64))[0]) + 1
        if self.budget is not None and self.epsilon(releases) > self.budget:
            raise LocalBudgetExhausted(
                f"client {context.client_id!r} refuses local-DP release {releases}: it would "
                f"bring its epsilon to {self.epsilon(releases):.3f}, past its budget "
                f"{self.budget} at delta={self.delta}. Leave it out of further rounds"
            )
        noise = NoiseSource.secure_or_testing(self.reproducible, context.test_noise_key)
        clipped, _ = clip_to_norm(update.update, self.clip_norm)
        std = self.noise_multiplier * 2.0 * self.clip_norm
        noisy = (clipped.astype(np.float64) + noise.gaussian(clipped.size, std)).astype(np.float32)
        context.state[RELEASES_KEY] = np.array([releases], dtype=np.int64)
        metrics = {
            **update.metrics,
            CLIENT_EPSILON_ROUND: self.epsilon(1),
            CLIENT_EPSILON: self.epsilon(releases),
        }
        return replace(update, update=noisy, metrics=metrics)

    def epsilon(self, releases: int) -> float:
        """Epsilon at ``delta`` after ``releases`` local releases (cached per count)."""
        cached = self._epsilon_cache.get(releases)
        if cached is None:
            event = dp_event.SelfComposedDpEvent(
                dp_event.GaussianDpEvent(self.noise_multiplier), releases
            )
            cached = compute_spend([event], self.delta).epsilon
            self._epsilon_cache[releases] = cached
        return cached
