"""Simulation throughput: fedwarden against Flower and pfl-research on one workload.

Workload (issue 2): FedProx Synthetic(1, 1) with N clients, softmax regression
60 -> 10, one local epoch of SGD with batch 10, FedAvg, a cohort of 50% or 20%
of the clients per round, the same rounds for every framework. Each framework
gets the same client arrays, built once and held in memory (``resident()``);
throughput is client-rounds per second of the training loop, engine start
included; accuracy is the final global model's on the central test set.
Flower (``flwr``) and pfl (``pfl``) rows appear when the
``bench`` extra is installed.

Run: ``python -m benchmarks.throughput`` (all four workloads) or
``python -m benchmarks.throughput --clients 100 --cohort 0.2 --rounds 5``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

# fedwarden's server imports SciPy's BLAS at its first aggregation; a framework's imports stay
# off its clock (PeerResult), so it is imported here with the rest.
import scipy.linalg.blas  # noqa: F401

from benchmarks.peers._workload import (
    LOCAL_BATCH_SIZE,
    LOCAL_EPOCHS,
    NUM_CLASSES,
    AccuracyTrace,
    ClientArrays,
    PeerResult,
)
from fedwarden.core.config import DataConfig
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.data import FederatedDataset, load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import LocalRuntime, Runtime, Workload
from fedwarden.server import Server, ServerSettings
from fedwarden.strategies import FedAvg, UniformSampler


def run_fedwarden(
    dataset: FederatedDataset,
    trainer: Trainer,
    label: str,
    *,
    rounds: int,
    cohort_size: int,
    lr: float,
    seed: int,
    trace: AccuracyTrace | None = None,
    runtime: Callable[[], Runtime] = LocalRuntime,
) -> PeerResult:
    """fedwarden on the workload, by default on its local runtime (one worker per core).

    With a ``trace``, the global model is scored once the runtime has started
    (round 0) and after every round, and that time is left out of ``wall_s``.
    """
    train = TrainConfig(LOCAL_EPOCHS, LOCAL_BATCH_SIZE, lr)
    pipeline = Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean())
    initial = _peers_initial_parameters(seed, trainer.spec)
    if trace is not None:
        trace.start()
    started = time.perf_counter()
    with runtime() as clients:
        server = Server(
            trainer=trainer,
            strategy=FedAvg(train),
            sampler=UniformSampler(cohort_size),
            pipeline=pipeline,
            runtime=clients,
            client_ids=dataset.client_ids,
            settings=ServerSettings(rounds=rounds, seed=seed),
        )
        server.vector = trainer.spec.flatten(initial)
        clients.start(Workload(dataset, trainer, pipeline.stages, seed))
        if trace is not None:
            trace.record(0, *_linear_layer(trainer.spec, server.vector))
        for round_index in range(rounds):
            server.run_round(round_index)
            if trace is not None:
                trace.record(round_index + 1, *_linear_layer(trainer.spec, server.vector))
        wall = time.perf_counter() - started - (0.0 if trace is None else trace.evaluation_seconds)
    accuracy = trainer.evaluate(server.vector, dataset.x_test, dataset.y_test)["accuracy"]
    return {
        "framework": label,
        "client_rounds_per_s": rounds * cohort_size / wall,
        "accuracy": accuracy,
        "wall_s": wall,
    }


def _linear_layer(spec: ParamSpec, vector: Vector) -> tuple[Vector, Vector]:
    """The softmax regression's weight ``[classes, features]`` and bias held in ``vector``.

    The NumPy model stores its weight ``features x classes``, PyTorch's
    ``nn.Linear`` ``classes x features``; the peers' evaluation takes the latter.
    """
    weight, bias = spec.views(vector).values()
    return (weight if weight.shape[0] == NUM_CLASSES else weight.T), bias


def _peers_initial_parameters(seed: int, spec: ParamSpec) -> list[np.ndarray]:
    """The weights every peer starts from (PyTorch's default ``nn.Linear`` draw for ``seed``).

    Laid out as ``spec`` wants them: PyTorch's ``classes x features`` weight, or
    its transpose for the NumPy model's ``features x classes``.
    """
    from benchmarks.peers._softmax_regression import SoftmaxRegression, initial_model

    linear = initial_model(SoftmaxRegression, 60, seed).linear
    weight = linear.weight.detach().numpy()
    if spec.tensors[0].shape != weight.shape:
        weight = weight.T
    return [weight.copy(), linear.bias.detach().numpy().copy()]


def torch_linear_trainer(num_features: int, num_classes: int) -> Trainer:
    from fedwarden.models.torch import TorchTrainer, mlp

    return TorchTrainer(partial(mlp, num_features, num_classes, ()))


def peers() -> dict[str, Callable[..., PeerResult]]:
    """The installed peer runners by name (``flwr``, ``pfl``); empty without the bench extra."""
    peers: dict[str, Callable[..., PeerResult]] = {}
    try:
        from benchmarks.peers.flower_sim import run_flower

        peers["flwr"] = run_flower
    except ImportError:
        pass
    try:
        from benchmarks.peers.pfl_sim import run_pfl

        peers["pfl"] = run_pfl
    except ImportError:
        pass
    return peers


def synthetic_workload(
    num_clients: int, seed: int
) -> tuple[FederatedDataset, list[ClientArrays], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Build the Synthetic(1, 1) population once: fedwarden's data set and the peers' arrays.

    Every client is built and held in memory (``resident()``), so all frameworks
    train on the same arrays and none pays for generating them.
    """
    dataset = load_dataset(
        DataConfig(source="synthetic", num_clients=num_clients, client_test_fraction=0.2), seed
    ).resident()
    clients: list[ClientArrays] = [
        (c.x_train.astype(np.float32), c.y_train.astype(np.int64)) for c in dataset.clients.values()
    ]
    return dataset, clients, dataset.x_test.astype(np.float32), dataset.y_test.astype(np.int64)


def cohort_of(num_clients: int, cohort_fraction: float) -> int:
    """Clients per round for a cohort of ``cohort_fraction`` of ``num_clients`` (at least one)."""
    return max(1, round(cohort_fraction * num_clients))


def benchmark(
    num_clients: int, cohort_fraction: float, rounds: int, lr: float, seed: int, skip: set[str]
) -> dict[str, Any]:
    """Every framework on one workload; returns the rows and the ratios."""
    dataset, clients, x_test, y_test = synthetic_workload(num_clients, seed)
    cohort = cohort_of(num_clients, cohort_fraction)
    options: dict[str, Any] = {"rounds": rounds, "cohort_size": cohort, "lr": lr, "seed": seed}
    rows = [run_fedwarden(dataset, softmax_regression(60, 10), "fedwarden (NumPy)", **options)]
    if "torch" not in skip:
        rows.append(
            run_fedwarden(dataset, torch_linear_trainer(60, 10), "fedwarden (PyTorch)", **options)
        )
    for name, peer in peers().items():
        if name not in skip:
            rows.append(peer(clients, x_test, y_test, **options))
    ours = rows[0]["client_rounds_per_s"]
    ratios = {
        f"fedwarden (NumPy) / {row['framework']}": ours / row["client_rounds_per_s"]
        for row in rows[1:]
    }
    return {
        "clients": num_clients,
        "cohort": cohort,
        "rounds": rounds,
        "rows": rows,
        "ratios": ratios,
    }


def main() -> None:
    """Run the workloads and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--cohort", type=float, nargs="*", default=[0.5, 0.2])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="frameworks to leave out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    for num_clients in args.clients:
        for fraction in args.cohort:
            result = benchmark(
                num_clients, fraction, args.rounds, args.lr, args.seed, set(args.skip)
            )
            results.append(result)
            print(
                f"\nN = {num_clients}, cohort {result['cohort']} ({fraction:.0%}), "
                f"{args.rounds} rounds"
            )
            for row in result["rows"]:
                print(
                    f"  {row['framework']:<28} {row['client_rounds_per_s']:>10.1f} client-rounds/s"
                    f"   accuracy {row['accuracy']:.4f}   wall {row['wall_s']:.1f} s"
                )
            for name, ratio in result["ratios"].items():
                print(f"  {name:<44} {ratio:>8.1f}x")
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
