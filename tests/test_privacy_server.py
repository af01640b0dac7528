"""User-level DP-FedAvg in the server: refused before anyone trains, charged exactly, persisted."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import rdp_privacy_accountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from fakes import RecordingRuntime, ScriptedTrainer
from fedwarden.core.messages import TrainConfig
from fedwarden.data import FederatedDataset
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.dp_mean import GaussianMean
from fedwarden.privacy.clipping import ClipNorm
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import COHORT_STREAM
from fedwarden.privacy.silo import SiloPrivacy
from fedwarden.privacy.user_level import CohortSampling, UserLevelPrivacy
from fedwarden.runtime import Workload
from fedwarden.server import Server, ServerSettings
from fedwarden.strategies import FedAvg, PoissonSampler, UniformSampler

RATE, Z, DELTA = 0.5, 1.0, 1e-5


def dp_fedavg_epsilon(rounds: int) -> tuple[float, float]:
    """dp-accounting's (PLD, RDP) epsilon of ``rounds`` Poisson-sampled Gaussian rounds.

    The oracle: dp-accounting's accountants called directly, never fedwarden's accounting.
    """
    event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(RATE, dp_event.GaussianDpEvent(Z)), rounds
    )
    pld = pld_privacy_accountant.PLDAccountant().compose(event).get_epsilon(DELTA)
    rdp = rdp_privacy_accountant.RdpAccountant().compose(event).get_epsilon(DELTA)
    return pld, rdp


def _privacy(dataset: FederatedDataset, budget: float, path: Path | None) -> UserLevelPrivacy:
    ledger = PrivacyLedger(
        PrivacyBudget(budget, DELTA), privacy_unit="client", neighboring="add_remove", path=path
    )
    return UserLevelPrivacy(
        ledger,
        noise_multiplier=Z,
        sampling=CohortSampling(len(dataset.clients), rate=RATE),
        clip_norm=ClipNorm(0.5),
    )


def _server(
    dataset: FederatedDataset, privacy: UserLevelPrivacy, runtime: RecordingRuntime
) -> Server:
    trainer = ScriptedTrainer()
    pipeline = Pipeline(
        [ValidateUpdate(trainer.spec.size), ClipUpdate(privacy.clip_norm)],
        GaussianMean(
            noise_multiplier=Z,
            clip_norm=privacy.clip_norm,
            expected_cohort_size=privacy.sampling.expected_cohort_size,
            noise=NoiseSource.for_testing(0),
        ),
    )
    server = Server(
        trainer=trainer,
        strategy=FedAvg(TrainConfig(1, 16, 0.1)),
        sampler=PoissonSampler(RATE),
        pipeline=pipeline,
        runtime=runtime,
        client_ids=dataset.client_ids,
        settings=ServerSettings(rounds=10, seed=0),
        privacy=privacy,
        # Seeded cohorts (these tests are about accounting, not cohort secrecy): with secure
        # ones a Poisson cohort is empty with probability 1/256, and an empty round releases
        # nothing and is not charged, so the expected epsilon would vary from run to run.
        cohort_randomness=NoiseSource.for_testing(0, COHORT_STREAM),
    )
    runtime.start(Workload(dataset, trainer, pipeline.stages, 0))
    return server


def test_a_round_that_would_overspend_is_refused_before_any_client_trains(
    digits_clients: FederatedDataset,
) -> None:
    (three_rounds, _), (four_rounds, _) = dp_fedavg_epsilon(3), dp_fedavg_epsilon(4)
    runtime = RecordingRuntime()
    budget = (three_rounds + four_rounds) / 2
    server = _server(digits_clients, _privacy(digits_clients, budget, None), runtime)

    result = server.run()

    assert result.rounds == 3
    assert {instruction.round_index for instruction in runtime.delivered} == {0, 1, 2}
    assert result.stopped_early is not None
    assert "round 4" in result.stopped_early
    assert result.history[-1].epsilon == pytest.approx(three_rounds, rel=1e-3)


def test_the_ledger_charges_exactly_the_accountants_value_and_survives_a_restart(
    digits_clients: FederatedDataset, tmp_path: Path
) -> None:
    path = tmp_path / "privacy_ledger.json"
    privacy = _privacy(digits_clients, 100.0, path)
    server = _server(digits_clients, privacy, RecordingRuntime())
    for round_index in range(4):
        server.run_round(round_index)
    expected_pld, expected_rdp = dp_fedavg_epsilon(4)
    assert privacy.ledger.spent().epsilon_rdp == pytest.approx(expected_rdp, rel=1e-9)
    assert privacy.ledger.spent().epsilon == pytest.approx(expected_pld, rel=1e-3)

    ten_rounds, _ = dp_fedavg_epsilon(10)
    assert server.history[0].epsilon_projected == pytest.approx(ten_rounds, rel=1e-3)
    assert server.history[-1].epsilon_projected == pytest.approx(ten_rounds, rel=1e-3)

    reopened = _privacy(digits_clients, 100.0, path)
    assert reopened.ledger.spent() == privacy.ledger.spent()
    assert len(reopened.ledger.entries) == 4


def test_every_accepted_contribution_is_clipped_to_the_rounds_norm(
    digits_clients: FederatedDataset,
) -> None:
    runtime = RecordingRuntime()
    privacy = _privacy(digits_clients, 100.0, None)
    server = _server(digits_clients, privacy, runtime)
    vector = server.vector.copy()
    server.run_round(0)
    assert runtime.delivered
    for instruction in runtime.delivered:
        update = runtime.engine.fit(vector, instruction)
        assert np.linalg.norm(update.update.astype(np.float64)) <= privacy.clip_norm.value


def _silo_server(
    dataset: FederatedDataset, trainer: ScriptedTrainer, min_cohort: int
) -> tuple[Server, SiloPrivacy]:
    """Every client a silo of 64 examples running DP-SGD with batches of 16 (one epoch)."""
    privacy = SiloPrivacy(
        PrivacyLedger(PrivacyBudget(100.0, DELTA), privacy_unit="example", client_budget=100.0),
        silo_sizes=dict.fromkeys(dataset.client_ids, 64),
        batch_size=16,
        local_epochs=1,
        noise_multiplier=Z,
        max_grad_norm=1.0,
    )
    runtime = RecordingRuntime()
    pipeline = Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean())
    server = Server(
        trainer=trainer,
        strategy=FedAvg(TrainConfig(1, 16, 0.1)),
        sampler=UniformSampler(len(dataset.clients)),
        pipeline=pipeline,
        runtime=runtime,
        client_ids=dataset.client_ids,
        settings=ServerSettings(rounds=1, seed=0, min_cohort=min_cohort),
        privacy=privacy,
    )
    runtime.start(Workload(dataset, trainer, pipeline.stages, 0))
    return server, privacy


def _one_round_of_dp_sgd() -> float:
    """dp-accounting's epsilon for 4 steps of the Poisson-sampled Gaussian at q = 16 / 64."""
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(
        dp_event.SelfComposedDpEvent(
            dp_event.PoissonSampledDpEvent(0.25, dp_event.GaussianDpEvent(Z)), 4
        )
    )
    return float(accountant.get_epsilon(DELTA))


def test_a_silos_rejected_dp_sgd_update_is_still_charged_to_it(
    digits_clients: FederatedDataset,
) -> None:
    rejected = digits_clients.client_ids[1]
    server, privacy = _silo_server(digits_clients, ScriptedTrainer(nan=frozenset({rejected})), 1)

    record = server.run_round(0)

    assert record.applied and record.rejection_reasons == {"non_finite": 1}
    for silo in digits_clients.client_ids:
        spend = privacy.ledger.client_spent(silo)
        assert spend.epsilon_rdp == pytest.approx(_one_round_of_dp_sgd(), rel=1e-6), silo


def test_silo_updates_of_a_round_below_min_cohort_are_still_charged(
    digits_clients: FederatedDataset,
) -> None:
    server, privacy = _silo_server(
        digits_clients, ScriptedTrainer(), len(digits_clients.clients) + 1
    )

    record = server.run_round(0)

    assert not record.applied
    assert record.epsilon == pytest.approx(privacy.ledger.client_spent("client_0").epsilon)
    for silo in digits_clients.client_ids:
        spend = privacy.ledger.client_spent(silo)
        assert spend.epsilon_rdp == pytest.approx(_one_round_of_dp_sgd(), rel=1e-6), silo


def test_a_user_level_round_that_released_no_aggregate_is_not_charged(
    digits_clients: FederatedDataset,
) -> None:
    privacy = _privacy(digits_clients, 100.0, None)
    server = _server(digits_clients, privacy, RecordingRuntime())
    server.settings = replace(server.settings, min_cohort=len(digits_clients.clients) + 1)

    record = server.run_round(0)

    assert not record.applied and record.participants > 0
    assert privacy.ledger.entries == ()
