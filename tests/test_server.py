"""The server's round: what is aggregated, what is refused, what is counted."""

from __future__ import annotations

import numpy as np
import pytest

from fakes import RecordingListener, RecordingRuntime, ScriptedTrainer
from fedwarden.core.messages import FitInstruction
from fedwarden.data import FederatedDataset
from fedwarden.runtime import ClientEngine, LocalRuntime, Workload
from harness import TRAIN, start_server

pytestmark = pytest.mark.slow


def test_a_nan_update_is_rejected_counted_and_never_aggregated(
    digits_clients: FederatedDataset,
) -> None:
    poisoned = digits_clients.client_ids[3]
    trainer = ScriptedTrainer(nan=frozenset({poisoned}))
    with LocalRuntime(workers=2) as runtime:
        server = start_server(digits_clients, trainer, runtime, rounds=1, seed=4)
        before = server.vector.copy()
        record = server.run_round(0)
    assert record.rejected == 1
    assert record.rejection_reasons == {"non_finite": 1}
    assert record.participants == 7
    engine = ClientEngine(Workload(digits_clients, ScriptedTrainer(), (), 4))
    honest = [
        engine.fit(before, FitInstruction(0, cid, TRAIN))
        for cid in digits_clients.client_ids
        if cid != poisoned
    ]
    expected = before + np.average(
        [u.update for u in honest], axis=0, weights=[u.num_examples for u in honest]
    )
    np.testing.assert_allclose(server.vector, expected, rtol=1e-5, atol=1e-6)
    assert np.isfinite(server.vector).all()


def test_the_listeners_are_told_each_cohort_and_which_update_the_servers_checks_refused(
    digits_clients: FederatedDataset,
) -> None:
    poisoned = digits_clients.client_ids[2]
    listener = RecordingListener()
    server = start_server(
        digits_clients,
        ScriptedTrainer(nan=frozenset({poisoned})),
        RecordingRuntime(),
        rounds=2,
        seed=4,
    )
    server.listeners.append(listener)
    server.run_round(0)
    server.run_round(1)
    assert sorted(listener.cohorts) == [0, 1]
    assert all(poisoned in cohort for cohort in listener.cohorts.values())
    assert listener.refused == [(0, poisoned, "non_finite"), (1, poisoned, "non_finite")]


def test_a_round_below_the_minimum_cohort_leaves_the_model_unchanged(
    digits_clients: FederatedDataset,
) -> None:
    broken = frozenset(digits_clients.client_ids[:6])
    with LocalRuntime(workers=2) as runtime:
        server = start_server(
            digits_clients, ScriptedTrainer(error=broken), runtime, rounds=1, min_cohort=3
        )
        before = server.vector.copy()
        record = server.run_round(0)
    assert record.failed == 6
    assert record.participants == 2
    assert not record.applied
    assert "min_cohort=3" in record.note
    np.testing.assert_array_equal(server.vector, before)


def test_round_records_count_bytes_and_report_central_accuracy(
    digits_clients: FederatedDataset,
) -> None:
    with LocalRuntime(workers=2) as runtime:
        server = start_server(digits_clients, ScriptedTrainer(), runtime, rounds=5, cohort_size=4)
        result = server.run()
    record = result.history[0]
    vector_bytes = ScriptedTrainer().spec.size * 4
    assert record.bytes_up == record.bytes_down == 4 * vector_bytes
    # Ten classes (chance 0.1); five rounds of four of eight clients reach 0.58 to 0.79
    # depending on which cohorts the seeded stream draws (seeds 0 to 4).
    assert result.accuracy is not None and result.accuracy > 0.5
    assert result.client_accuracy is not None and result.client_accuracy > 0.5
    assert result.history[-1].loss is not None
    assert result.history[-1].loss < result.history[0].loss
