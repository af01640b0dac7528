"""Build a server over a runtime in a few lines, the way the tests need it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedwarden.core.messages import FitResult, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data import FederatedDataset
from fedwarden.data.dataset import ClientData
from fedwarden.models.trainer import ClientContext, ClientState, Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import Runtime, Workload
from fedwarden.server import CentralTestSet, RunDirectory, Server, ServerSettings
from fedwarden.strategies import FedAvg, UniformSampler

TRAIN = TrainConfig(local_epochs=1, batch_size=16, learning_rate=0.1)


def start_server(
    dataset: FederatedDataset,
    trainer: Trainer,
    runtime: Runtime,
    *,
    rounds: int = 3,
    cohort_size: int | None = None,
    deadline_s: float | None = None,
    min_cohort: int = 1,
    run_dir: Path | None = None,
    seed: int = 0,
) -> Server:
    """A FedAvg server with validation, its runtime started with the data set's clients."""
    pipeline = Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean())
    directory = None if run_dir is None else RunDirectory(run_dir)
    server = Server(
        trainer=trainer,
        strategy=FedAvg(TRAIN),
        sampler=UniformSampler(cohort_size or len(dataset.clients)),
        pipeline=pipeline,
        runtime=runtime,
        client_ids=dataset.client_ids,
        settings=ServerSettings(
            rounds=rounds, seed=seed, min_cohort=min_cohort, deadline_s=deadline_s
        ),
        central_test=CentralTestSet(dataset.x_test, dataset.y_test),
        run_dir=directory,
    )
    state_dir = None if directory is None else directory.client_state_dir
    runtime.start(Workload(dataset, trainer, pipeline.stages, seed, state_dir))
    return server


def fedavg_in_process(
    trainer: Trainer,
    clients: list[ClientData],
    train: TrainConfig,
    rounds: int,
    states: list[ClientState] | None = None,
) -> tuple[Vector, list[FitResult]]:
    """FedAvg by hand, no runtime: every client trains every round; example-weighted mean.

    Returns the final vector and the last round's results. Client ``i``'s
    generator in round ``r`` is seeded ``[r, i]``; ``states`` persist per client.
    """
    vector = trainer.initial_vector(0)
    states = states if states is not None else [{} for _ in clients]
    results: list[FitResult] = []
    for round_index in range(rounds):
        results = [
            trainer.fit(
                vector,
                ClientContext(
                    client.client_id,
                    client,
                    round_index,
                    np.random.default_rng([round_index, index]),
                    states[index],
                ),
                train,
            )
            for index, client in enumerate(clients)
        ]
        total = sum(result.num_examples for result in results)
        vector = vector + sum(
            result.update * np.float32(result.num_examples / total) for result in results
        )
    return vector, results


def digits_silos(count: int) -> tuple[list[ClientData], np.ndarray, np.ndarray]:
    """Digits (pixels / 16) split IID into ``count`` silos, and a 360-example test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, train_parts = order[:360], np.array_split(order[360:], count)
    clients = [
        ClientData(f"c{i}", x[p], y[p], x[p[:1]], y[p[:1]]) for i, p in enumerate(train_parts)
    ]
    return clients, x[test], y[test]
