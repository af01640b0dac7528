"""Cohort samplers: which clients train in a round.

Poisson sampling (each client independently with probability ``rate``) is the
scheme DP-FedAvg's accounting assumes (McMahan et al. 2018); fixed-size
uniform sampling without replacement is Flower's and FedAvg's default;
stratified sampling keeps each group's share of the population (urban and
rural hospitals, regions, device classes).

Every sampler draws from a :class:`~fedwarden.privacy.randomness.NoiseSource`.
When a DP guarantee is amplified by sampling, the cohort must be as secret as
the noise (the amplification theorems assume the adversary does not know who
was sampled), so the server passes ``NoiseSource.secure()``: the same public
seed then gives different cohorts. Only runs without DP, and DP runs in test
mode, draw from a seeded keystream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.randomness import NoiseSource


class Sampler(ABC):
    """Draws a cohort from the eligible clients with the server's randomness."""

    @abstractmethod
    def sample(self, client_ids: Sequence[str], randomness: NoiseSource) -> list[str]:
        """The cohort, in the population's order."""


class UniformSampler(Sampler):
    """``cohort_size`` clients uniformly without replacement (all of them if fewer)."""

    def __init__(self, cohort_size: int) -> None:
        self.cohort_size = cohort_size

    def sample(self, client_ids: Sequence[str], randomness: NoiseSource) -> list[str]:
        """Uniform draw without replacement."""
        size = min(self.cohort_size, len(client_ids))
        return [client_ids[i] for i in randomness.subset(len(client_ids), size)]


class PoissonSampler(Sampler):
    """Each client independently with probability ``rate``; the cohort size varies."""

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def sample(self, client_ids: Sequence[str], randomness: NoiseSource) -> list[str]:
        """Independent Bernoulli(rate) draw per client."""
        chosen = np.flatnonzero(randomness.bernoulli(self.rate, len(client_ids)))
        return [client_ids[i] for i in chosen.tolist()]


class StratifiedSampler(Sampler):
    """``cohort_size`` clients split across the values of one attribute by population share.

    Seats go to strata by the largest-remainder method, then clients are drawn
    uniformly within each stratum.
    """

    def __init__(self, cohort_size: int, attribute: str, strata: Mapping[str, str]) -> None:
        self.cohort_size = cohort_size
        self.attribute = attribute
        self.strata = strata

    def sample(self, client_ids: Sequence[str], randomness: NoiseSource) -> list[str]:
        """Proportional allocation, then uniform draws inside each stratum."""
        missing = [cid for cid in client_ids if cid not in self.strata]
        if missing:
            raise ConfigError(
                f"stratified sampling by {self.attribute!r}: clients {missing[:5]} have no such "
                "attribute; give every client one or sample uniformly"
            )
        groups: dict[str, list[int]] = {}
        for position, cid in enumerate(client_ids):
            groups.setdefault(self.strata[cid], []).append(position)
        names = sorted(groups)
        sizes = np.array([len(groups[name]) for name in names], dtype=float)
        total = min(self.cohort_size, len(client_ids))
        quotas = sizes / sizes.sum() * total
        seats = np.floor(quotas).astype(int)
        by_remainder = np.argsort(-(quotas - seats), kind="stable")
        seats[by_remainder[: total - seats.sum()]] += 1
        chosen: list[int] = []
        for name, count in zip(names, seats, strict=True):
            members = groups[name]
            chosen.extend(members[i] for i in randomness.subset(len(members), int(count)))
        return [client_ids[i] for i in sorted(chosen)]
