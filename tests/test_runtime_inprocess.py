"""The inprocess runtime and the client engine's cohort training: same bits, same faults.

A client that raises: ``tests/test_runtime_local.py``, for both runtimes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fakes import ScriptedTrainer
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import RuntimeFailure
from fedwarden.core.messages import ClientFailure, ClientUpdate, FitInstruction
from fedwarden.data import FederatedDataset
from fedwarden.data.dataset import ClientData
from fedwarden.models.numpy import softmax_regression
from fedwarden.runtime import ClientEngine, InProcessRuntime, LocalRuntime, Workload
from harness import TRAIN, start_server


def test_a_seeded_run_in_process_is_bit_identical_to_one_on_worker_processes(
    digits_clients: FederatedDataset,
) -> None:
    finals = []
    for runtime in (InProcessRuntime(), LocalRuntime(workers=2)):
        with runtime:
            trainer = softmax_regression(64, 10)
            server = start_server(digits_clients, trainer, runtime, cohort_size=5, seed=7)
            server.run()
            finals.append(server.vector)
    assert np.abs(finals[0] - softmax_regression(64, 10).initial_vector(7)).max() > 0.01
    np.testing.assert_array_equal(finals[0], finals[1])


def test_the_engine_trains_a_stacking_trainers_share_in_one_call_with_the_same_updates(
    digits_clients: FederatedDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = softmax_regression(64, 10)
    engine = ClientEngine(Workload(digits_clients, trainer, (), run_seed=2))
    instructions = [FitInstruction(1, cid, TRAIN) for cid in digits_clients.client_ids]
    vector = trainer.initial_vector(0)
    alone = [engine.fit(vector, instruction) for instruction in instructions]
    calls: list[int] = []
    fit_cohort = type(trainer).fit_cohort

    def counted(self, vector, clients, train):  # type: ignore[no-untyped-def]
        calls.append(len(clients))
        return fit_cohort(self, vector, clients, train)

    monkeypatch.setattr(type(trainer), "fit_cohort", counted)
    together = list(engine.fit_each(vector, instructions))
    assert calls == [len(instructions)]
    for cohort, single in zip(together, alone, strict=True):
        assert isinstance(cohort, ClientUpdate)
        assert cohort.client_id == single.client_id
        assert cohort.update.tobytes() == single.update.tobytes()


def test_a_client_that_breaks_the_cohort_call_costs_only_itself(
    digits_clients: FederatedDataset,
) -> None:
    broken_id = digits_clients.client_ids[3]
    good = digits_clients.clients[broken_id]
    labels = np.full_like(good.y_train, 10)  # no class 10 among digits' 0-9
    broken = ClientData(broken_id, good.x_train, labels, good.x_test, good.y_test)
    dataset = replace(digits_clients, clients={**digits_clients.clients, broken_id: broken})
    trainer = softmax_regression(64, 10)
    with InProcessRuntime() as runtime:
        runtime.start(Workload(dataset, trainer, (), run_seed=1))
        instructions = [FitInstruction(0, cid, TRAIN) for cid in dataset.client_ids]
        replies = list(runtime.fit(trainer.initial_vector(0), instructions))
    failures = [reply for reply in replies if isinstance(reply, ClientFailure)]
    assert [(failure.client_id, failure.reason) for failure in failures] == [(broken_id, "error")]
    assert "IndexError" in failures[0].message
    updates = [reply for reply in replies if isinstance(reply, ClientUpdate)]
    assert len(updates) == len(instructions) - 1
    engine = ClientEngine(Workload(dataset, trainer, (), run_seed=1))
    for update in updates:
        instruction = next(i for i in instructions if i.client_id == update.client_id)
        expected = engine.fit(trainer.initial_vector(0), instruction)
        assert update.update.tobytes() == expected.update.tobytes()


def test_past_the_deadline_the_late_client_and_every_later_one_are_dropped_untrained(
    digits_clients: FederatedDataset,
) -> None:
    ids = digits_clients.client_ids
    trainer = ScriptedTrainer(slow=frozenset({ids[2]}), sleep_s=0.5)
    with InProcessRuntime() as runtime:
        start_server(digits_clients, trainer, runtime)
        vector = trainer.initial_vector(0)
        replies = list(
            runtime.fit(vector, [FitInstruction(0, cid, TRAIN) for cid in ids], deadline_s=0.3)
        )
        # Client state counts fits: the clients after the late one never trained.
        later = list(runtime.fit(vector, [FitInstruction(1, cid, TRAIN) for cid in ids[3:]]))
    assert [type(reply) for reply in replies[:2]] == [ClientUpdate, ClientUpdate]
    assert all(
        isinstance(reply, ClientFailure) and reply.reason == "deadline" for reply in replies[2:]
    )
    assert all(isinstance(reply, ClientUpdate) for reply in later)
    assert [reply.metrics["fits"] for reply in later if isinstance(reply, ClientUpdate)] == [
        1.0
    ] * len(ids[3:])


def test_the_clients_train_a_copy_of_the_trainer_the_server_holds(
    digits_clients: FederatedDataset,
) -> None:
    trainer = softmax_regression(64, 10)
    with InProcessRuntime() as runtime:
        runtime.start(Workload(digits_clients, trainer, (), run_seed=1))
        assert runtime.engine.trainer is not trainer
        assert runtime.engine.trainer.spec == trainer.spec
    with pytest.raises(RuntimeFailure, match="call start first"):
        runtime.engine  # noqa: B018


def test_the_inprocess_runtime_takes_no_workers() -> None:
    with pytest.raises(ValueError, match="drop workers"):
        RunConfig.model_validate({"runtime": {"kind": "inprocess", "workers": 2}})
