"""What a round of user-level DP-FedAvg releases, checked and charged to the ledger.

Per round (McMahan et al. 2018): the noisy sum of clipped updates of a
sampled cohort, a sampled Gaussian mechanism with noise multiplier ``z``;
with adaptive clipping (Andrew et al. 2021) also the noisy count of unclipped
updates, a second sampled Gaussian with sensitivity 1, composed with the
first. Poisson sampling with rate ``q`` is accounted as ``PoissonSampled(q,
Gaussian(z))`` under add/remove-one neighbours; a fixed-size uniform cohort
of ``m`` from ``N`` as sampling without replacement under replace-one
neighbours (RDP only: dp-accounting's PLD does not cover it).

Under secure aggregation the clients add the noise (the distributed discrete
Gaussian of Kairouz, Liu & Steinke 2021); a round then releases that
mechanism's sum, charged as the zCDP event of its ``t`` guaranteed survivors
(:meth:`fedwarden.secure.distributed_dp.DistributedDiscreteGaussian.dp_event`),
with no amplification by sampling claimed. The accounting needs only what
:class:`ClientAddedNoise` names, so it does not depend on the secure layer above it.

FedBuff (Nguyen et al., AISTATS 2022), asynchronous: every buffer release is
the Gaussian sum of at most ``K`` clipped updates, each from a different
client, ``N(0, (z C)^2)`` added once per release, divided by ``K``. Which
clients fill a buffer is decided by who is idle and who finishes first (the
scheduler draws uniformly among the idle clients, and a slow client's update
lands in a later buffer): that is neither Poisson sampling nor a fixed-size
draw from the population per release, so no known amplification-by-sampling
bound applies (staleness-dependent participation breaks both analyses;
Huba et al., MLSys 2022, "Papaya", discuss the same gap for asynchronous DP).
Each release is therefore charged as the unsampled ``GaussianDpEvent(z)``:
every client is assumed to be in every release, conservative and correct.
The neighbours are ``replace_one`` (a client's data replaced, its
participation and timing unchanged): under add/remove, removing a client
would shift later arrivals into earlier buffers and change every release
after it, a cascade no per-release sensitivity bounds. Replacing a client's
update moves one release's sum by at most ``2C``, which the accountant
charges for ``replace_one`` (the accounting package's "Units").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fedwarden.privacy.accounting import Neighboring, fixed_size_gaussian, poisson_gaussian
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.clipping import AdaptiveClipping, ClipNorm
from fedwarden.privacy.ledger import PrivacyLedger


@dataclass(frozen=True)
class CohortSampling:
    """How cohorts are drawn, as the accountant needs it.

    Exactly one of ``rate`` (Poisson), ``cohort_size`` (uniform, fixed size)
    or ``buffer_size`` (FedBuff's buffers of ``K`` updates, no sampling
    amplification claimed: the module docstring) is set; ``population`` is the
    number of clients.
    """

    population: int
    rate: float | None = None
    cohort_size: int | None = None
    buffer_size: int | None = None

    @property
    def expected_cohort_size(self) -> float:
        """``q N`` (Poisson), ``m`` (fixed-size cohorts), ``K`` (buffers): the fixed denominator."""
        if self.rate is not None:
            return self.rate * self.population
        if self.buffer_size is not None:
            return float(self.buffer_size)
        assert self.cohort_size is not None
        return float(min(self.cohort_size, self.population))

    @property
    def sampling_rate(self) -> float:
        """Probability that a given client is in a round's cohort (1 for buffers: no claim)."""
        if self.buffer_size is not None:
            return 1.0
        return self.expected_cohort_size / self.population

    def event(self, noise_multiplier: float) -> dp_event.DpEvent:
        """One round's sampled Gaussian release with this noise multiplier."""
        if self.rate is not None:
            return poisson_gaussian(self.rate, noise_multiplier)
        if self.buffer_size is not None:
            return poisson_gaussian(1.0, noise_multiplier)
        assert self.cohort_size is not None
        return fixed_size_gaussian(
            self.population, min(self.cohort_size, self.population), noise_multiplier
        )


class ClientAddedNoise(Protocol):
    """What the accounting reads of noise the clients add under secure aggregation.

    :class:`fedwarden.secure.distributed_dp.DistributedDiscreteGaussian` is one.
    """

    @property
    def min_survivors(self) -> int:
        """The fewest clients whose noise is in every released sum (SecAgg's threshold t)."""
        ...

    @property
    def granularity(self) -> float:
        """The grid step of the integer encoding, in update units."""
        ...

    @property
    def local_variance(self) -> int:
        """Each client's noise variance, in ring units."""
        ...

    def dp_event(self, neighboring: Neighboring = "add_remove") -> dp_event.DpEvent:
        """The ledger's event for one round's release."""
        ...


class UserLevelPrivacy:
    """Per-round accounting of user-level DP-FedAvg against one ledger."""

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        noise_multiplier: float,
        sampling: CohortSampling,
        clip_norm: ClipNorm,
        adaptive: AdaptiveClipping | None = None,
        distributed: ClientAddedNoise | None = None,
    ) -> None:
        self.ledger = ledger
        self.noise_multiplier = noise_multiplier
        self.sampling = sampling
        self.clip_norm = clip_norm
        self.adaptive = adaptive
        self.distributed = distributed

    def round_releases(self) -> list[tuple[str, dp_event.DpEvent]]:
        """``(kind, event)`` of everything one round releases."""
        if self.distributed is not None:
            return [("model_update", self.distributed.dp_event(self.ledger.neighboring))]
        releases = [("model_update", self.sampling.event(self.noise_multiplier))]
        if self.adaptive is not None:
            releases.append(
                ("clip_count", self.sampling.event(self.adaptive.count_noise_multiplier))
            )
        return releases

    def eligible(self, client_ids: Sequence[str]) -> list[str]:
        """Every client: under user-level DP the run's budget is every client's budget."""
        return list(client_ids)

    def before_round(self, round_index: int) -> None:
        """Refuse (``BudgetExceeded``) a round that would overspend, before anyone is sampled."""
        self.ledger.check([event for _, event in self.round_releases()], f"round {round_index + 1}")

    def after_round(self, round_index: int, released: Sequence[str], applied: bool) -> None:
        """Charge the round's releases when its aggregate was released (``applied``).

        Under user-level DP what leaves the trusted aggregation is the noisy
        aggregate; a round aborted before it (too few updates, unmasking failed)
        released nothing and is not charged.
        """
        if not applied:
            return
        for kind, event in self.round_releases():
            note = f"z={self.noise_multiplier:g}, C={self.clip_norm.value:.6g}"
            self.ledger.charge(round_index, kind, event, note)

    def epsilon(self) -> float:
        """Epsilon spent so far (the ledger's reported accountant)."""
        return self.ledger.spent().epsilon

    def projected_epsilon(self, rounds: int) -> float:
        """Epsilon once ``rounds`` more rounds like this one have been released."""
        events = [event for _, event in self.round_releases()]
        return self.ledger.projection(events, rounds).epsilon

    def state(self) -> dict[str, float]:
        """What must survive a restart besides the ledger file: the adaptive clip norm."""
        return {"clip_norm": self.clip_norm.value}

    def load_state(self, state: dict[str, float]) -> None:
        """Restore :meth:`state`."""
        self.clip_norm.value = state["clip_norm"]

    def report(self) -> dict[str, Any]:
        """The privacy report's fields (issue 3, item 8)."""
        distributed = self.distributed
        mechanism = "user-level DP-FedAvg (McMahan et al. 2018)"
        extra: dict[str, Any] = {}
        if self.sampling.buffer_size is not None:
            mechanism += (
                f", over FedBuff's buffers of {self.sampling.buffer_size} updates (Nguyen et al. "
                "2022), each release charged as an unsampled Gaussian: no amplification by "
                "sampling claimed"
            )
        if distributed is not None:
            mechanism += (
                ", noise added by the clients under secure aggregation: distributed discrete "
                "Gaussian (Kairouz et al. 2021), charged for t survivors without sampling "
                "amplification"
            )
            extra = {
                "secure_aggregation_threshold": distributed.min_survivors,
                "granularity": distributed.granularity,
                "client_noise_variance": distributed.local_variance,
            }
        return {
            **self.ledger.report(),
            **extra,
            "mechanism": mechanism,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm.value,
            "adaptive_clipping": self.adaptive is not None,
            "sampling_rate": self.sampling.sampling_rate,
            "expected_cohort_size": self.sampling.expected_cohort_size,
        }
