"""The workload every peer benchmark runs, its argument checks and its result.

Workload: FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", Algorithm 1) on FedProx Synthetic
data (Li et al. 2020, "Federated Optimization in Heterogeneous Networks",
Section 5.1), given as plain arrays. The model is softmax regression, one
linear layer 60 -> 10 with bias under cross-entropy. Each round a cohort of
``cohort_size`` clients is sampled uniformly without replacement; each runs
``LOCAL_EPOCHS`` epoch of plain SGD with learning rate ``lr`` over minibatches
of ``LOCAL_BATCH_SIZE`` examples, shuffled each epoch; the server replaces the
global model with the average of the local models weighted by each client's
number of examples. Every peer module implements exactly this and nothing
more, so that only the framework differs between the rows of a benchmark.

Only NumPy and fedwarden are imported here: this module is safe to import
whether or not the ``bench`` extra is installed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypedDict

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from fedwarden.core.errors import ConfigError, FedwardenError

LOCAL_BATCH_SIZE: Final = 10
"""Examples per local SGD step (the last minibatch of an epoch may be smaller)."""

LOCAL_EPOCHS: Final = 1
"""Passes over its own data a client makes each round."""

NUM_CLASSES: Final = 10
"""Labels are class indices in ``0..NUM_CLASSES - 1``."""

BENCH_EXTRA_HINT: Final = (
    "the peers live in .venv-bench: run `make bench`, then use .venv-bench/bin/python"
)
"""What to do when a peer framework is missing."""

ClientArrays = tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]
"""One client's training data: features ``[n_k, 60]`` and labels ``[n_k]`` in ``0..9``."""


class PeerResult(TypedDict):
    """What one peer benchmark run reports.

    ``client_rounds_per_s`` is ``rounds * cohort_size / wall_s``; ``wall_s``
    covers the training loop including the framework's simulation engine start
    and stop, but not Python imports, data conversion before the engine starts,
    the central evaluations of an :class:`AccuracyTrace` or the final
    evaluation; ``accuracy`` is the final global model's accuracy on the
    central test set (:func:`central_accuracy`).
    """

    framework: str
    client_rounds_per_s: float
    accuracy: float
    wall_s: float


def central_accuracy(
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32],
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[np.int64],
) -> float:
    """Return the fraction of ``x_test`` whose arg-max logit ``x W^T + b`` equals ``y_test``.

    ``weight`` is laid out as PyTorch's ``nn.Linear`` holds it, ``[NUM_CLASSES, d]``.
    Every framework's model is scored by this one function, so accuracies differ
    only by the model, never by how it was evaluated. BLAS runs on one thread
    here: Flower calls this from its ServerApp's thread, and a multithreaded
    OpenBLAS product called there spun forever twice in ``exec_blas``.
    """
    with threadpool_limits(1, user_api="blas"):
        weights = np.asarray(weight, dtype=np.float32).T
        logits = x_test @ weights + np.asarray(bias, dtype=np.float32)
    return float((logits.argmax(axis=1) == y_test).mean())


@dataclass(frozen=True)
class RoundAccuracy:
    """The global model's central test accuracy after ``round_number`` rounds.

    Round 0 is the initial model, scored when the framework is about to train its
    first round, so its ``seconds`` is the framework's start-up (except Flower's:
    its ServerApp scores round 0 while Ray is still starting beside it).
    ``seconds`` counts from the start of the run's clock and leaves out every
    central evaluation.
    """

    round_number: int
    accuracy: float
    seconds: float


class AccuracyTrace:
    """Central accuracy after every round, on a clock that stops while it evaluates.

    A benchmark runner calls :meth:`start` where its wall clock starts and
    :meth:`record` with the global model whenever a round has been applied (and
    once with round 0 before the first). The time spent scoring is kept apart in
    ``evaluation_seconds``, so time to a target accuracy is training time alone
    whatever each framework's evaluation hook costs.
    """

    def __init__(self, x_test: npt.NDArray[np.float32], y_test: npt.NDArray[np.int64]) -> None:
        self._x_test = x_test
        self._y_test = y_test
        self._started: float | None = None
        self.evaluation_seconds = 0.0
        self.rounds: list[RoundAccuracy] = []

    def start(self) -> None:
        """Start the clock: the framework's run begins now."""
        self._started = time.perf_counter()

    def record(
        self,
        round_number: int,
        weight: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
    ) -> None:
        """Score the global model after ``round_number`` rounds, off the clock."""
        if self._started is None:
            raise FedwardenError("AccuracyTrace.record was called before start()")
        scoring_started = time.perf_counter()
        seconds = scoring_started - self._started - self.evaluation_seconds
        accuracy = central_accuracy(weight, bias, self._x_test, self._y_test)
        self.rounds.append(RoundAccuracy(round_number, accuracy, seconds))
        self.evaluation_seconds += time.perf_counter() - scoring_started


def missing_bench_extra(framework: str, error: ImportError) -> ImportError:
    """Build the ImportError raised when ``framework``'s benchmark lacks a package."""
    missing = error.name.partition(".")[0] if error.name else str(error)
    return ImportError(
        f"the {framework} peer benchmark needs the package `{missing}`, which is not "
        f"installed; {BENCH_EXTRA_HINT}"
    )


def check_workload(
    clients: Sequence[ClientArrays],
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[np.int64],
    *,
    rounds: int,
    cohort_size: int,
    lr: float,
) -> None:
    """Refuse a workload no peer can run as specified, naming the bad argument.

    Raises:
        ConfigError: if a count is out of range, an array has the wrong shape or
            dtype, a label is not a class index, or a client has no examples.
    """
    if not clients:
        raise ConfigError("clients is empty; pass at least one (x_train, y_train) pair")
    if rounds < 1:
        raise ConfigError(f"rounds={rounds} is not allowed; it must be at least 1")
    if not 1 <= cohort_size <= len(clients):
        raise ConfigError(
            f"cohort_size={cohort_size} is not allowed; it must be between 1 and the "
            f"number of clients ({len(clients)})"
        )
    if not lr > 0:
        raise ConfigError(f"lr={lr} is not allowed; it must be a positive learning rate")
    _check_examples("(x_test, y_test)", x_test, y_test, num_features=None)
    for index, (x_train, y_train) in enumerate(clients):
        _check_examples(f"clients[{index}]", x_train, y_train, num_features=x_test.shape[1])


def peer_result(
    framework: str, *, rounds: int, cohort_size: int, wall_s: float, accuracy: float
) -> PeerResult:
    """Report a finished run: throughput in client-rounds per second of ``wall_s``."""
    return PeerResult(
        framework=framework,
        client_rounds_per_s=rounds * cohort_size / wall_s,
        accuracy=accuracy,
        wall_s=wall_s,
    )


def _check_examples(
    where: str,
    features: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    *,
    num_features: int | None,
) -> None:
    """Refuse examples that are not ``[n, num_features]`` floats and ``[n]`` class indices.

    ``num_features=None`` accepts any width (the test set defines it for the clients).
    """
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"{where} has features of shape {features.shape} and labels of shape "
            f"{labels.shape}; expected [n, d] and [n] with the same n"
        )
    if num_features is not None and features.shape[1] != num_features:
        raise ConfigError(
            f"{where} has {features.shape[1]} features per example, but the test set has "
            f"{num_features}; every client must have the test set's features"
        )
    if features.shape[0] == 0:
        raise ConfigError(f"{where} has no examples; every client needs at least one")
    if not np.issubdtype(features.dtype, np.floating) or not np.issubdtype(
        labels.dtype, np.integer
    ):
        raise ConfigError(
            f"{where} has features of dtype {features.dtype} and labels of dtype "
            f"{labels.dtype}; expected floating-point features and integer labels"
        )
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ConfigError(
            f"{where} has labels from {labels.min()} to {labels.max()}; labels must be "
            f"class indices in 0..{NUM_CLASSES - 1}"
        )
