"""Per-silo accounting of sample-level DP-SGD: each silo's own budget, enforced before sampling.

With DP-SGD at the clients (Abadi et al. 2016), the privacy unit is one
example of one silo: silo ``k`` with ``n_k`` training examples runs, each
round, ``local_epochs * max(1, round(n_k / batch))`` steps of the Poisson
sampled Gaussian mechanism with rate ``q_k = batch / n_k`` and noise
multiplier ``z`` (the steps :class:`~fedwarden.models.dp_sgd.DpSgdTrainer`
takes). The server charges every silo whose update reached it, accepted or
not, after the round, and a silo whose next round would exceed its budget is
no longer sampled; the report names those silos. The run's epsilon is the largest silo's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dp_accounting import dp_event

from fedwarden.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_spend,
    poisson_gaussian,
)
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyLedger


def dp_sgd_round_event(
    num_examples: int, batch_size: int, local_epochs: int, noise_multiplier: float
) -> dp_event.DpEvent:
    """One round of DP-SGD on a silo of ``num_examples``: its Poisson-sampled Gaussian steps."""
    rate = min(1.0, batch_size / num_examples)
    steps = local_epochs * max(1, round(num_examples / batch_size))
    return poisson_gaussian(rate, noise_multiplier, steps)


def calibrate_silo_noise_multiplier(
    epsilon: float,
    delta: float,
    *,
    silo_sizes: Sequence[int],
    batch_size: int,
    local_epochs: int,
    rounds: int,
) -> float:
    """The DP-SGD noise multiplier with which no silo's ``rounds`` rounds spend over ``epsilon``.

    The smallest silo samples at the highest rate and so spends the most; the
    noise is calibrated for it (through dp-accounting's calibration, as in
    :func:`~fedwarden.privacy.accounting.calibrate_noise_multiplier`), and every
    larger silo then spends less than its budget.
    """
    smallest = min(silo_sizes)
    steps = local_epochs * max(1, round(smallest / batch_size))
    return calibrate_noise_multiplier(
        epsilon, delta, rounds * steps, sampling_rate=min(1.0, batch_size / smallest)
    )


class SiloPrivacy:
    """Each silo's DP-SGD spend in one ledger with a per-silo budget."""

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        silo_sizes: Mapping[str, int],
        batch_size: int,
        local_epochs: int,
        noise_multiplier: float,
        max_grad_norm: float,
    ) -> None:
        self.ledger = ledger
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.batch_size = batch_size
        self.sampling_rates = {
            silo: min(1.0, batch_size / size) for silo, size in silo_sizes.items()
        }
        self.events = {
            silo: dp_sgd_round_event(size, batch_size, local_epochs, noise_multiplier)
            for silo, size in silo_sizes.items()
        }
        self.retired: list[str] = []

    def eligible(self, client_ids: Sequence[str]) -> list[str]:
        """Silos whose next round stays within their budget; the others are retired for good."""
        for silo in client_ids:
            if silo not in self.retired and self.ledger.client_would_exceed(
                silo, self.events[silo]
            ):
                self.retired.append(silo)
        return [silo for silo in client_ids if silo not in self.retired]

    def before_round(self, round_index: int) -> None:
        """Refuse the round when no silo can train within its budget."""
        if not self.eligible(list(self.events)):
            largest = self._largest_spender()
            charged = [e.event for e in self.ledger.entries if e.client_id == largest]
            raise BudgetExceeded(
                f"round {round_index + 1} (no silo can train within its budget; "
                f"largest spender {largest!r})",
                self.ledger.client_spent(largest),
                compute_spend(
                    [*charged, self.events[largest]],
                    self.ledger.budget.delta,
                    self.ledger.neighboring,
                ),
                self.ledger.budget,
            )

    def after_round(self, round_index: int, released: Sequence[str], applied: bool) -> None:
        """Charge one round of DP-SGD to each silo whose update reached the server.

        The update is the silo's release whatever the server then does with it:
        refused by a check, or left out of a round below ``min_cohort`` (``applied``
        False), it was still seen, so it is charged (issue 15, finding 6).
        """
        for silo in dict.fromkeys(released):
            if silo in self.events:
                self.ledger.charge_client(silo, round_index, self.events[silo])

    def _largest_spender(self) -> str:
        return max(self.events, key=lambda silo: self.ledger.client_spent(silo).epsilon)

    def epsilon(self) -> float:
        """The largest silo's epsilon so far."""
        return self.ledger.client_spent(self._largest_spender()).epsilon

    def projected_epsilon(self, rounds: int) -> float:
        """The largest silo epsilon if every silo trained ``rounds`` more rounds (upper bound)."""
        projections = []
        for silo, event in self.events.items():
            charged = [e.event for e in self.ledger.entries if e.client_id == silo]
            planned = [*charged, *([event] * rounds)]
            spend = compute_spend(planned, self.ledger.budget.delta, self.ledger.neighboring)
            projections.append(spend.epsilon)
        return max(projections, default=0.0)

    def state(self) -> dict[str, float]:
        """Nothing beyond the ledger file."""
        return {}

    def load_state(self, state: dict[str, float]) -> None:
        """Nothing to restore beyond the ledger file."""

    def report(self) -> dict[str, Any]:
        """The privacy report: the largest silo's epsilon and which silos were retired.

        ``sampling_rate`` is the largest spender's Poisson rate (batch over its size).
        """
        spender = self._largest_spender()
        largest = self.ledger.client_spent(spender)
        return {
            **self.ledger.report(),
            "mechanism": "sample-level DP-SGD at each silo (Abadi et al. 2016, Opacus)",
            "epsilon": largest.epsilon,
            "epsilon_rdp": largest.epsilon_rdp,
            "epsilon_pld": largest.epsilon_pld,
            "accountant": largest.accountant,
            "budget_remaining": max(self.ledger.budget.epsilon - largest.epsilon, 0.0),
            "max_client_epsilon": largest.epsilon,
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.max_grad_norm,
            "sampling_rate": self.sampling_rates[spender],
            "retired_silos": list(self.retired),
        }
