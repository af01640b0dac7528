"""Build a server over a runtime in a few lines, the way the tests need it."""

from __future__ import annotations

from pathlib import Path

from fedwarden.core.messages import TrainConfig
from fedwarden.data import FederatedDataset
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import Runtime, Workload
from fedwarden.server import CentralTestSet, RunDirectory, Server
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
        rounds=rounds,
        seed=seed,
        central_test=CentralTestSet(dataset.x_test, dataset.y_test),
        min_cohort=min_cohort,
        deadline_s=deadline_s,
        run_dir=directory,
    )
    state_dir = None if directory is None else directory.client_state_dir
    runtime.start(Workload(dataset, trainer, pipeline.stages, seed, state_dir))
    return server
