"""Per-silo accounting of sample-level DP-SGD: each silo's own budget, enforced before sampling.

With DP-SGD at the clients (Abadi et al. 2016), the privacy unit is one
example of one silo: silo ``k`` with ``n_k`` training examples runs, each
round, ``PoissonSampling(n_k, batch).steps(local_epochs)`` steps of the
Poisson sampled Gaussian mechanism with rate ``q_k = batch / n_k`` and noise
multiplier ``z``: the one step count that
:class:`~fedwarden.models.dp_sgd.DpSgdTrainer` takes and the calibration
plans for. The server charges every silo whose update reached it, accepted or
not, after the round, and a silo whose next round would exceed its budget is
no longer sampled; the report names those silos. The run's epsilon is the largest silo's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedwarden.privacy.accounting import (
    calibrate_noise_multiplier,
    compute_spend,
    poisson_gaussian,
)
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.ledger import BudgetExceeded, PrivacyLedger
from fedwarden.privacy.poisson import PoissonSampling


def dp_sgd_round_event(
    num_examples: int, batch_size: int, local_epochs: int, noise_multiplier: float
) -> dp_event.DpEvent:
    """One round of DP-SGD on a silo of ``num_examples``: its Poisson-sampled Gaussian steps."""
    sampling = PoissonSampling(num_examples, batch_size)
    return poisson_gaussian(sampling.rate, noise_multiplier, sampling.steps(local_epochs))


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
    sampling = PoissonSampling(min(silo_sizes), batch_size)
    return calibrate_noise_multiplier(
        epsilon, delta, rounds * sampling.steps(local_epochs), sampling_rate=sampling.rate
    )


class ClientBudgets:
    """Per-client budgets in one ledger: a client whose next release would overspend is retired.

    ``events`` is each client's release in one round. Used by DP-SGD at each
    silo (:class:`SiloPrivacy`) and by local DP (:class:`LocalPrivacy`), where
    every client's data is its own and composes only with its own releases.
    """

    def __init__(self, ledger: PrivacyLedger, events: Mapping[str, dp_event.DpEvent]) -> None:
        self.ledger = ledger
        self.events = dict(events)
        self.retired: list[str] = []

    def eligible(self, client_ids: Sequence[str]) -> list[str]:
        """Clients whose next round stays within their budget; the others are retired for good."""
        for silo in client_ids:
            if silo not in self.retired and self.ledger.client_would_exceed(
                silo, self.events[silo]
            ):
                self.retired.append(silo)
        return [silo for silo in client_ids if silo not in self.retired]

    def before_round(self, round_index: int) -> None:
        """Refuse the round when no client can take part within its budget."""
        if not self.eligible(list(self.events)):
            largest = self._largest_spender()
            charged = [e.event for e in self.ledger.entries if e.client_id == largest]
            raise BudgetExceeded(
                f"round {round_index + 1} (no client can take part within its budget; "
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
        """The largest client's epsilon so far."""
        return self.ledger.client_spent(self._largest_spender()).epsilon

    def projected_epsilon(self, rounds: int) -> float:
        """The largest client epsilon if every client took ``rounds`` more rounds (upper bound)."""
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

    def _largest_report(self) -> dict[str, Any]:
        """The ledger's report with the largest client's spend as the run's epsilon."""
        largest = self.ledger.client_spent(self._largest_spender())
        return {
            **self.ledger.report(),
            "epsilon": largest.epsilon,
            "epsilon_rdp": largest.epsilon_rdp,
            "epsilon_pld": largest.epsilon_pld,
            "accountant": largest.accountant,
            "budget_remaining": max(self.ledger.budget.epsilon - largest.epsilon, 0.0),
            "max_client_epsilon": largest.epsilon,
        }


class SiloPrivacy(ClientBudgets):
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
        super().__init__(
            ledger,
            {
                silo: dp_sgd_round_event(size, batch_size, local_epochs, noise_multiplier)
                for silo, size in silo_sizes.items()
            },
        )
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.batch_size = batch_size
        self.sampling_rates = {
            silo: PoissonSampling(size, batch_size).rate for silo, size in silo_sizes.items()
        }

    def report(self) -> dict[str, Any]:
        """The privacy report: the largest silo's epsilon and which silos were retired.

        ``sampling_rate`` is the largest spender's Poisson rate (batch over its size).
        """
        return {
            **self._largest_report(),
            "mechanism": "sample-level DP-SGD at each silo (Abadi et al. 2016, Opacus)",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.max_grad_norm,
            "sampling_rate": self.sampling_rates[self._largest_spender()],
            "retired_silos": list(self.retired),
        }


class LocalPrivacy(ClientBudgets):
    """Local DP's per-client budget: each round a client takes part is one Gaussian release.

    The client clips its update to ``C`` and adds N(0, (z 2C)^2) itself
    (:class:`~fedwarden.pipeline.local_dp.LocalGaussianNoise`): two updates it
    could send differ by at most 2C, so each release is the Gaussian mechanism
    with noise ``z`` times that sensitivity (Dwork & Roth 2014, Theorem A.1),
    with no amplification, since the client knows it was sampled. The ledger
    reads noise multipliers over ``C`` (see :mod:`fedwarden.privacy.accounting`),
    so under ``replace_one`` neighbours the event is ``GaussianDpEvent(2 z)``.
    A client whose next release would take it past ``privacy.epsilon`` is not
    sampled again, and a round none can join is refused before anyone trains.
    """

    def __init__(
        self,
        ledger: PrivacyLedger,
        *,
        client_ids: Sequence[str],
        noise_multiplier: float,
        clip_norm: float,
    ) -> None:
        self.release = dp_event.GaussianDpEvent(2.0 * noise_multiplier)
        super().__init__(ledger, dict.fromkeys(client_ids, self.release))
        self.noise_multiplier = noise_multiplier
        self.clip_norm = clip_norm

    def report(self) -> dict[str, Any]:
        """The privacy report: the largest client's epsilon, one release's, the clients retired."""
        one_release = compute_spend(
            [self.release], self.ledger.budget.delta, self.ledger.neighboring
        )
        return {
            **self._largest_report(),
            "mechanism": "local DP, Gaussian on each client's clipped update",
            "noise_multiplier": self.noise_multiplier,
            "clip_norm": self.clip_norm,
            "client_epsilon_round": one_release.epsilon,
            "retired_clients": list(self.retired),
        }
