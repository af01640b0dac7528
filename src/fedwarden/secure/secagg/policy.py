"""What one SecAgg+ client accepts, from its own settings: never from the server it guards against.

DESIGN idea 8: clients "never take security settings from the party they
protect themselves from". The server proposes a round (cohort, ``k``, ``t``,
ring, encoding and noise); each client compares it with its own
:class:`SecAggPolicy` and refuses, before it sends anything, a round below it.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedwarden.core.errors import ConfigError
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.secure.secagg.messages import RoundSetup, SecAggRefused
from fedwarden.secure.secagg.parameters import MAX_COHORT, secure_threshold

__all__ = ["SecAggPolicy"]


@dataclass(frozen=True)
class SecAggPolicy:
    """What one client accepts in a round, from its own kit or local settings, never the server.

    A round whose cohort, ``k`` or ``t`` is smaller, whose ``t`` is not more than
    ``(k + 1 + corrupted_clients) / 2``, or whose ring differs is refused
    (:meth:`check`) before the client sends anything. ``distributed_dp``, when
    set, is the noise the client must add (the server's encoding must match it in
    the fields that set the noise, :meth:`check_encoding`);
    ``allow_test_noise`` admits a reproducible (test-mode) noise source.
    """

    min_cohort_size: int = 3
    min_neighbours: int = 2
    min_threshold: int = 2
    corrupted_clients: int = 0
    modulus_bits: int = 32
    distributed_dp: DistributedDiscreteGaussian | None = None
    allow_test_noise: bool = False

    def __post_init__(self) -> None:
        for name in ("min_cohort_size", "min_neighbours", "min_threshold", "corrupted_clients"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"secure aggregation policy: {name} must be an int >= 0, got {value!r}."
                )
        if self.min_cohort_size < 3:
            raise ConfigError(
                "secure aggregation policy: min_cohort_size must be at least 3 (in a round of 2 "
                f"the sum reveals the other's input), got {self.min_cohort_size}."
            )

    def check(self, client_id: str, setup: RoundSetup) -> None:
        """Refuse (``SecAggRefused``, reason ``policy``) a round below this policy."""
        n, k, t = len(setup.cohort), setup.num_neighbours, setup.threshold
        least = max(self.min_threshold, secure_threshold(k, self.corrupted_clients))
        problems = []
        if n < self.min_cohort_size:
            problems.append(f"a cohort of {n} < min_cohort_size={self.min_cohort_size}")
        if len(set(setup.cohort)) != n or n > MAX_COHORT:
            problems.append("a cohort with repeated members")
        if not self.min_neighbours <= k <= n - 1:
            problems.append(f"k={k} outside {self.min_neighbours}..{n - 1}")
        if not least <= t <= k + 1:
            problems.append(
                f"t={t} outside {least}..{k + 1} (t must exceed (k + 1 + "
                f"{self.corrupted_clients} corrupted) / 2 and be at least {self.min_threshold})"
            )
        if setup.modulus_bits != self.modulus_bits:
            problems.append(f"a 2^{setup.modulus_bits} ring, not 2^{self.modulus_bits}")
        _refuse(client_id, problems)

    def check_encoding(
        self,
        client_id: str,
        *,
        modulus_bits: int,
        distributed_dp: DistributedDiscreteGaussian | None,
        reproducible_noise: bool,
    ) -> None:
        """Refuse (reason ``policy``) an encoding or noise this client was not set up for."""
        problems = []
        if modulus_bits != self.modulus_bits:
            problems.append(f"an encoding into 2^{modulus_bits}, not 2^{self.modulus_bits}")
        if reproducible_noise and not self.allow_test_noise:
            problems.append(
                "test-mode (reproducible) noise, which anyone who knows the run's seed can remove"
            )
        wanted = self.distributed_dp
        if wanted is not None:
            if distributed_dp is None:
                problems.append("no distributed-DP noise, which this client's policy requires")
            else:
                differing = [
                    name
                    for name in _NOISE_FIELDS
                    if getattr(distributed_dp, name) != getattr(wanted, name)
                ]
                if differing:
                    problems.append(
                        f"distributed-DP settings {differing} other than this client's policy"
                    )
        _refuse(client_id, problems)


_NOISE_FIELDS = ("clip_norm", "granularity", "local_variance", "modulus_bits", "beta")
"""The fields of a distributed-DP encoding that set how much noise a client adds."""


def _refuse(client_id: str, problems: list[str]) -> None:
    """Raise the policy refusal listing ``problems``, if there are any."""
    if problems:
        raise SecAggRefused(
            "policy",
            f"client {client_id!r} refuses this secure-aggregation round: "
            f"{'; '.join(problems)}. Nothing was sent; a server cannot lower these "
            "limits, the client's own settings (SecAggPolicy) set them.",
        )
