"""Run the peer-benchmark workload with Apple's pfl-research and time it.

pfl keeps four objects apart and joins them in one ``run`` call; here they are:

- data: a ``FederatedDataset`` whose users are ``PyTorchTensorDataset`` objects, drawn
  by :class:`UniformCohortSampler` (pfl's own samplers draw each user
  independently or cycle through the users in order);
- model: ``PyTorchModel`` around softmax regression, with local ``SGD(lr)``
  and central ``SGD(lr=1.0)``, which adds the aggregated model difference to
  the global model unchanged;
- postprocessor: ``WeightByDatapoints``, so the aggregate is
  ``sum_k n_k (w_k - w) / sum_k n_k`` and the new model the weighted average;
- algorithm and backend: ``FederatedAveraging`` on a ``SimulatedBackend``.

pfl trains a cohort's users one after another in one process. Its
multi-worker mode shards each cohort over processes, but each worker is its
own launch of the whole script (``PFL_WORKER_ADDRESSES`` or ``torchrun``),
which a function called from a benchmark script cannot start; one process is
pfl's configuration for this call. PyTorch runs with one intra-op thread
during the call: a 60 x 10 layer is far too small for intra-op parallelism to
help, and idle OpenMP threads spinning on a shared core slow each step by an
order of magnitude whenever another process runs (measured here: 60 us per
step with one thread, 0.8 to 1.2 ms with two). Flower's one-CPU actors and
fedwarden's workers run one thread each as well.

Two pfl behaviours to know when reading the numbers: pfl always evaluates the
cohort's users before and after local training in the first central iteration
(one forward pass over each user's data each time; later iterations are not
evaluated); and pfl's ``Dataset`` batches a user's examples in stored order,
so they are reshuffled each time the user is sampled, which with one local
epoch is the specified shuffle per epoch.

``seed`` controls the initial model, cohort sampling and every shuffle.
pfl and PyTorch are imported when :func:`run_pfl` is called, not before.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from typing import cast

import numpy as np
import numpy.typing as npt

from benchmarks.peers._workload import (
    LOCAL_BATCH_SIZE,
    LOCAL_EPOCHS,
    AccuracyTrace,
    ClientArrays,
    PeerResult,
    central_accuracy,
    check_workload,
    missing_bench_extra,
    peer_result,
)


class UniformCohortSampler:
    """pfl user sampler drawing each cohort uniformly without replacement.

    pfl asks a user sampler for one user id per call; this one draws a whole
    cohort of distinct ids whenever the previous cohort is used up. That matches
    rounds only when pfl asks for exactly ``cohort_size`` users per round, as it
    does in one process with no overshoot and no validation cohort.
    """

    def __init__(self, num_users: int, cohort_size: int, rng: np.random.Generator) -> None:
        self._num_users = num_users
        self._cohort_size = cohort_size
        self._rng = rng
        self._pending: list[int] = []

    def __call__(self) -> int:
        """Return the next user id of the current cohort, drawing a new cohort if needed."""
        if not self._pending:
            cohort = self._rng.choice(self._num_users, size=self._cohort_size, replace=False)
            self._pending = [int(user_id) for user_id in cohort]
        return self._pending.pop()


def run_pfl(
    clients: Sequence[ClientArrays],
    x_test: npt.NDArray[np.float32],
    y_test: npt.NDArray[np.int64],
    *,
    rounds: int,
    cohort_size: int,
    lr: float,
    seed: int,
    trace: AccuracyTrace | None = None,
) -> PeerResult:
    """Train softmax regression with pfl's FederatedAveraging on a SimulatedBackend and time it.

    ``wall_s`` runs from building pfl's federated dataset and backend to the
    return of ``FederatedAveraging.run``. Wrapping the client arrays as tensors
    and building the model happen before it, as in the Flower benchmark (the
    first PyTorch optimizer also imports ``torch._dynamo``, one to two seconds
    of import time); the central evaluation of the final model comes after it.
    With a ``trace``, a pfl training-process callback scores the global model
    before the first central iteration and after each one, and that time is
    left out of ``wall_s``.

    Raises:
        ImportError: if pfl or PyTorch is not installed.
        ConfigError: if the workload arguments are out of range.
    """
    check_workload(clients, x_test, y_test, rounds=rounds, cohort_size=cohort_size, lr=lr)
    try:
        import torch
        from pfl.aggregate.simulate import SimulatedBackend
        from pfl.aggregate.weighting import WeightByDatapoints
        from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
        from pfl.data.federated_dataset import FederatedDataset
        from pfl.data.pytorch import PyTorchTensorDataset
        from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
        from pfl.model.pytorch import PyTorchModel

        from benchmarks.peers._pfl_model import CentralAccuracyCallback, PflSoftmaxRegression
        from benchmarks.peers._softmax_regression import initial_model, linear_layer
    except ImportError as error:
        raise missing_bench_extra("pfl", error) from error

    rng = np.random.default_rng(seed)
    user_tensors = [
        (torch.as_tensor(features, dtype=torch.float32), torch.as_tensor(labels, dtype=torch.int64))
        for features, labels in clients
    ]

    def make_user_dataset(user_id: int) -> PyTorchTensorDataset:
        """Build a sampled user's dataset, its examples in a fresh random order."""
        features, labels = user_tensors[user_id]
        order = torch.from_numpy(rng.permutation(len(labels)))
        return PyTorchTensorDataset((features[order], labels[order]), user_id=str(user_id))

    module = initial_model(PflSoftmaxRegression, x_test.shape[1], seed)
    model = PyTorchModel(
        model=module,
        local_optimizer_create=torch.optim.SGD,
        central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0),
    )
    with _one_torch_thread():
        if trace is not None:
            trace.start()
        start = time.perf_counter()
        training_data = FederatedDataset(
            make_user_dataset, UniformCohortSampler(len(clients), cohort_size, rng)
        )
        backend = SimulatedBackend(
            training_data=training_data, val_data=None, postprocessors=[WeightByDatapoints()]
        )
        trained = FederatedAveraging().run(
            algorithm_params=NNAlgorithmParams(
                central_num_iterations=rounds,
                evaluation_frequency=rounds,
                train_cohort_size=cohort_size,
                val_cohort_size=None,
            ),
            backend=backend,
            model=model,
            model_train_params=NNTrainHyperParams(
                local_learning_rate=lr,
                local_num_epochs=LOCAL_EPOCHS,
                local_batch_size=LOCAL_BATCH_SIZE,
            ),
            model_eval_params=NNEvalHyperParams(local_batch_size=None),
            send_metrics_to_platform=False,
            callbacks=None if trace is None else [CentralAccuracyCallback(trace)],
        )
        wall_s = time.perf_counter() - start - (0.0 if trace is None else trace.evaluation_seconds)

    return peer_result(
        f"pfl {version('pfl')}",
        rounds=rounds,
        cohort_size=cohort_size,
        wall_s=wall_s,
        accuracy=central_accuracy(
            *linear_layer(cast(PflSoftmaxRegression, trained.pytorch_model)), x_test, y_test
        ),
    )


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run the block with one PyTorch intra-op thread, then restore the caller's count."""
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
