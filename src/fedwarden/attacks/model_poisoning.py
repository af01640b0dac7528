"""Model poisoning: malicious clients replace their updates before the server aggregates.

An attack is simulated by :class:`AttackSimulation`, an :class:`Aggregator`
that wraps the real one. Benign updates pass straight to the inner
aggregator while running statistics of them (count, mean, variance) are kept
in O(model size) memory. The malicious clients' own honest updates are held
back; when the round closes, each is replaced by the attack's poisoned
vector, which then goes through the pipeline's server-side stages and into
the inner aggregator like any other update.

Threat model, as in the papers implemented here: the attacker controls the
malicious clients, colludes across them and is omniscient about the round's
benign updates (Baruch et al. 2019 and Xie et al. 2020 both grant this).
Malicious clients keep their honest example counts and metrics; they skip
client-side pipeline halves (clipping, noise) because a malicious client does
not follow the protocol. When no benign update arrived in a round, the
attacker falls back to the statistics of its own honest updates (the
partial-knowledge setting of Baruch et al. 2019).

Attack randomness is deliberately reproducible: it comes from a NumPy
generator seeded by the run seed, the round and the client id, never from the
cryptographic source that privacy noise and masks use. An attack is a
simulation of an adversary, not a protection, so replaying it exactly is the
point.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedwarden.core.channel import ClientChannel
from fedwarden.core.errors import ConfigError, RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate, TrainConfig, client_seed
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.core.records import round_number
from fedwarden.pipeline.stage import Aggregate, Aggregator, Stage

Float64Vector = npt.NDArray[np.float64]

logger = logging.getLogger(__name__)

ATTACK_STREAM = 2
"""Seed stream of attack randomness in :func:`client_seed` (0 is training, 1 fine-tuning)."""


@dataclass(frozen=True)
class RoundKnowledge:
    """What the omniscient attacker knows about one round when it crafts its updates.

    ``benign_mean`` and ``benign_std`` are the per-coordinate mean and
    population standard deviation (``ddof=0``) of the round's benign updates,
    unweighted as in the papers; ``cohort_size`` is ``n`` (clients sampled)
    and ``num_malicious`` is ``f`` (malicious clients among them).
    """

    benign_mean: Float64Vector
    benign_std: Float64Vector
    num_benign: int
    cohort_size: int
    num_malicious: int


class ModelAttack(ABC):
    """One way a malicious client replaces its update: ``poison`` maps honest to poisoned."""

    name: ClassVar[str] = "attack"

    @abstractmethod
    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """The float32 update this malicious client sends instead of ``own_update``."""


def _positive(owner: str, field_name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"attack {owner!r}: {field_name} must be a positive finite number, got {value!r}"
        )


@dataclass(frozen=True)
class SignFlip(ModelAttack):
    """Send ``-scale * own_update``: the sign-flipping Byzantine client.

    As in Li et al. 2019 (RSA, AAAI, Sec. 5) and Allen-Zhu et al. 2021
    (ICLR). We flip the client's own update rather than the benign mean, so
    the attack needs no knowledge of other clients (the weakest attacker of
    this module); ``scale = 1`` is a plain flip, larger values also boost it.
    """

    name: ClassVar[str] = "sign_flip"
    scale: float = 1.0

    def __post_init__(self) -> None:
        _positive(self.name, "scale", self.scale)

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """``-scale * own_update``."""
        return (own_update * -np.float32(self.scale)).astype(VECTOR_DTYPE)


@dataclass(frozen=True)
class GaussianNoise(ModelAttack):
    """Send a vector of independent ``N(0, sigma^2)`` entries: the Gaussian Byzantine client.

    Blanchard et al. 2017 (Krum, NeurIPS, Sec. 5). Each malicious client draws
    its own vector, so these do not collude.
    """

    name: ClassVar[str] = "gaussian"
    sigma: float = 1.0

    def __post_init__(self) -> None:
        _positive(self.name, "sigma", self.sigma)

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """A fresh ``N(0, sigma^2 I)`` vector of the update's size."""
        return rng.normal(0.0, self.sigma, size=own_update.size).astype(VECTOR_DTYPE)


@dataclass(frozen=True)
class Scaling(ModelAttack):
    """Send ``factor * own_update``: explicit boosting (Bhagoji et al. 2019, ICML, Sec. 3)."""

    name: ClassVar[str] = "scaling"
    factor: float = 10.0

    def __post_init__(self) -> None:
        _positive(self.name, "factor", self.factor)

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """``factor * own_update``."""
        return (own_update * np.float32(self.factor)).astype(VECTOR_DTYPE)


def alie_z(cohort_size: int, num_malicious: int) -> float:
    """ALIE's deviation ``z`` from the normal quantile (Baruch et al. 2019, Sec. 3, Algorithm 3).

    ``s = floor(n/2 + 1) - f`` benign supporters are needed for the
    malicious update to look like the majority; ``z = Phi^{-1}((n - s) / n)``.
    The paper assumes ``f <= n/2``; when the malicious clients are a majority
    they need no supporter and we take ``s = 1``, the largest finite ``z``.
    """
    if cohort_size < 1 or not 1 <= num_malicious <= cohort_size:
        raise ConfigError(
            f"ALIE needs a cohort of n >= 1 clients with 1 <= f <= n malicious, got "
            f"n={cohort_size}, f={num_malicious}"
        )
    # scipy.stats costs ~1 s to import: only a run that simulates ALIE loads it.
    from scipy.stats import norm

    supporters = max(math.floor(cohort_size / 2 + 1) - num_malicious, 1)
    return float(norm.ppf((cohort_size - supporters) / cohort_size))


@dataclass(frozen=True)
class ALittleIsEnough(ModelAttack):
    """ALIE: send ``mean - z * std`` of the benign updates (Baruch et al. 2019, NeurIPS).

    ``z`` defaults to :func:`alie_z` of the round's cohort size and malicious
    count; set ``z`` to fix it. All malicious clients send the same vector
    (they collude), which stays within the benign spread coordinate by
    coordinate and so passes median- and distance-based defenses.
    """

    name: ClassVar[str] = "alie"
    z: float | None = None

    def __post_init__(self) -> None:
        if self.z is not None and not math.isfinite(self.z):
            raise ConfigError(f"attack 'alie': z must be finite or None, got {self.z!r}")

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """``benign_mean - z * benign_std``, coordinate-wise."""
        z = alie_z(knowledge.cohort_size, knowledge.num_malicious) if self.z is None else self.z
        return (knowledge.benign_mean - z * knowledge.benign_std).astype(VECTOR_DTYPE)


@dataclass(frozen=True)
class InnerProductManipulation(ModelAttack):
    """IPM: send ``-epsilon * mean`` of the benign updates (Xie et al. 2020, UAI, Sec. 4).

    Makes the inner product of the aggregate with the true mean negative.
    The paper pairs a small ``epsilon`` (0.1, our default) against Krum and
    the median, whose chosen update then sits near the mean, with a large one
    (e.g. 100) against the mean and trimmed mean. All malicious clients send
    the same vector.
    """

    name: ClassVar[str] = "ipm"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        _positive(self.name, "epsilon", self.epsilon)

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """``-epsilon * benign_mean``."""
        return (-self.epsilon * knowledge.benign_mean).astype(VECTOR_DTYPE)


@dataclass(frozen=True)
class ModelReplacement(ModelAttack):
    """Backdoor by model replacement: boost the backdoor-trained update (Bagdasaryan et al. 2020).

    AISTATS, Sec. 3.2, eq. 3: the attacker sends ``gamma * (X - G)`` with
    ``gamma = n / eta`` so that averaging over ``n`` clients with server
    learning rate ``eta`` replaces the global model ``G`` by its backdoored
    ``X``. The malicious clients train on backdoored data (see
    :func:`fedwarden.attacks.add_backdoor`), so ``own_update`` is ``X - G``.
    ``boost`` defaults to ``n / f`` for ``f`` malicious clients in the
    cohort: exactly the paper's ``n`` (with ``eta = 1``) for one attacker, and
    a total boost of ``n`` shared among colluders rather than ``f * n``.
    Under example weighting the replacing factor is ``total weight / own
    weight`` instead; set ``boost`` to match.
    """

    name: ClassVar[str] = "model_replacement"
    boost: float | None = None

    def __post_init__(self) -> None:
        if self.boost is not None:
            _positive(self.name, "boost", self.boost)

    def poison(
        self, own_update: Vector, knowledge: RoundKnowledge, rng: np.random.Generator
    ) -> Vector:
        """``boost * own_update``."""
        boost = (
            knowledge.cohort_size / knowledge.num_malicious if self.boost is None else self.boost
        )
        return (own_update * np.float32(boost)).astype(VECTOR_DTYPE)


MODEL_ATTACKS: Mapping[str, type[ModelAttack]] = {
    attack.name: attack
    for attack in (
        SignFlip,
        GaussianNoise,
        Scaling,
        ALittleIsEnough,
        InnerProductManipulation,
        ModelReplacement,
    )
}
"""Model attacks by name, for run configurations."""


class RunningMoments:
    """Running count, mean and population variance of vectors (Welford 1962), in float64.

    One update at a time in O(size) memory: ``delta = x - mean``,
    ``mean += delta / n``, ``m2 += delta * (x - mean)``; the variance is
    ``m2 / n``.
    """

    def __init__(self, size: int) -> None:
        self.count = 0
        self._mean: Float64Vector = np.zeros(size, dtype=np.float64)
        self._m2: Float64Vector = np.zeros(size, dtype=np.float64)

    def add(self, vector: npt.NDArray[np.floating[Any]]) -> None:
        """Fold one vector into the moments."""
        self.count += 1
        delta = vector.astype(np.float64)
        delta -= self._mean
        self._mean += delta / self.count
        self._m2 += delta * (vector - self._mean)

    @property
    def mean(self) -> Float64Vector:
        """Coordinate-wise mean of the vectors added (zeros before the first)."""
        return self._mean.copy()

    @property
    def variance(self) -> Float64Vector:
        """Coordinate-wise population variance (``ddof=0``) of the vectors added."""
        return self._m2 / max(self.count, 1)


class AttackSimulation(Aggregator):
    """Wrap an aggregator so that the ``malicious`` clients' updates are poisoned by ``attack``.

    ``stages`` are the pipeline's stages: their server halves already screened
    the honest updates before ``add``, and they screen each poisoned update
    again before it reaches ``inner`` (a poisoned update a stage rejects is
    counted and dropped, as a real one would be). Malicious clients' poisoned
    updates are added in client-id order after all benign ones.
    """

    def __init__(
        self,
        inner: Aggregator,
        attack: ModelAttack,
        malicious: Collection[str],
        seed: int,
        stages: Sequence[Stage] = (),
    ) -> None:
        if not malicious:
            raise ConfigError(
                f"attack {attack.name!r} has no malicious client; choose some with "
                "choose_malicious(...) or run without an attack"
            )
        self.inner = inner
        self.attack = attack
        self.malicious = frozenset(malicious)
        self.seed = seed
        self.stages = tuple(stages)
        self.name = f"attacked_{inner.name}"  # type: ignore[misc]
        self.needs_individual_updates = inner.needs_individual_updates
        self.hides_individual_updates = inner.hides_individual_updates
        self._moments = RunningMoments(0)
        self._held: dict[str, ClientUpdate] = {}
        self._cohort_size = 0
        self._malicious_in_cohort = 0
        self.poisoned_total = 0
        self.rejected_total = 0

    def client_scores(self) -> Mapping[str, Any]:
        """The inner aggregator's scores (poisoned updates included)."""
        return self.inner.client_scores()

    def attach(self, channel: ClientChannel | None) -> None:
        """Pass the runtime's channel to the wrapped aggregator."""
        self.inner.attach(channel)

    def round_model(self, vector: Vector, train: TrainConfig) -> None:
        """Pass the round's global vector and training settings to the wrapped aggregator."""
        self.inner.round_model(vector, train)

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Start the inner round and reset the benign statistics and held updates."""
        self.inner.start(size, cohort)
        self._moments = RunningMoments(size)
        self._held = {}
        self._cohort_size = len(cohort)
        self._malicious_in_cohort = sum(1 for client in cohort if client in self.malicious)

    def add(self, update: ClientUpdate) -> None:
        """Pass a benign update on (and into the statistics); hold a malicious one back."""
        if update.client_id in self.malicious:
            self._held[update.client_id] = update
            return
        self.inner.add(update)
        self._moments.add(update.update)

    def result(self) -> Aggregate:
        """Poison each held update, screen it, add it to the inner aggregator, then reduce."""
        accepted = 0
        if self._held:
            knowledge = self._knowledge()
            accepted = sum(
                self._add_poisoned(self._held[client_id], knowledge)
                for client_id in sorted(self._held)
            )
        if self._moments.count == 0 and accepted == 0:
            raise RoundAborted(
                f"{self.name}: the pipeline rejected every poisoned update and no benign update "
                "arrived, so there is nothing to aggregate"
            )
        return self.inner.result()

    def round_parameters(self) -> dict[str, float]:
        """The inner aggregator's client settings."""
        return self.inner.round_parameters()

    def report(self) -> dict[str, Any]:
        """The inner aggregator's report plus what the attack did over the run."""
        return {
            **self.inner.report(),
            "attack": {
                "name": self.attack.name,
                "malicious_clients": len(self.malicious),
                "poisoned_updates": self.poisoned_total,
                "poisoned_rejected": self.rejected_total,
            },
        }

    def _knowledge(self) -> RoundKnowledge:
        if self._moments.count > 0:
            mean, std = self._moments.mean, np.sqrt(self._moments.variance)
        else:
            own = np.stack([held.update for held in self._held.values()]).astype(np.float64)
            mean, std = own.mean(axis=0), own.std(axis=0)
        return RoundKnowledge(
            benign_mean=mean,
            benign_std=std,
            num_benign=self._moments.count,
            cohort_size=max(self._cohort_size, len(self._held)),
            num_malicious=max(self._malicious_in_cohort, len(self._held)),
        )

    def _add_poisoned(self, honest: ClientUpdate, knowledge: RoundKnowledge) -> bool:
        """Poison one held update and add it to ``inner``; ``False`` if a stage rejected it."""
        rng = np.random.default_rng(
            client_seed(self.seed, honest.round_index, honest.client_id, ATTACK_STREAM)
        )
        vector = np.ascontiguousarray(
            self.attack.poison(honest.update, knowledge, rng), dtype=VECTOR_DTYPE
        )
        if vector.shape != honest.update.shape:
            raise ConfigError(
                f"attack {self.attack.name!r} returned shape {vector.shape} for an update of "
                f"shape {honest.update.shape}; an attack must keep the update's size"
            )
        poisoned = replace(honest, update=vector)
        self.poisoned_total += 1
        try:
            for stage in self.stages:
                poisoned = stage.server_half(poisoned)
            self.inner.add(poisoned)
        except UpdateRejected as rejection:
            self.rejected_total += 1
            logger.warning(
                "round %d: poisoned update of %s rejected: %s",
                round_number(honest.round_index),
                honest.client_id,
                rejection,
            )
            return False
        return True
