"""The Flower side of the peer benchmark: a ClientApp and a ServerApp (Message API).

Written as a Flower user writes a PyTorch app: the ``ClientApp`` loads its
partition by ``partition-id``, trains ``SoftmaxRegression`` with
``torch.optim.SGD`` over a shuffling ``DataLoader`` and replies with its
``state_dict`` and ``num-examples``; the ``ServerApp`` runs Flower's
``FedAvg`` strategy, which samples the cohort and averages the replies
weighted by ``num-examples``. Federated evaluation is off; the final global
model is handed back to the caller, who evaluates it centrally.

The ClientApp runs in Ray actors, which import this module by name. Client data
therefore travels as a file path in the train config, never inside the
pickled app: an ``.npz`` with ``x_<k>`` and ``y_<k>`` for partition ``k``,
opened once per actor.

Imports Flower and PyTorch at the top: import this module only through
:func:`benchmarks.peers.flower_sim.run_flower`, which checks that they exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.peers._softmax_regression import SoftmaxRegression
from benchmarks.peers._workload import LOCAL_BATCH_SIZE, LOCAL_EPOCHS, AccuracyTrace
from fedwarden.core.errors import FedwardenError

WEIGHT_KEY = "num-examples"
"""MetricRecord key FedAvg weights each reply by (Flower's default)."""

Setting = TypeVar("Setting", int, float, str)

client_app = ClientApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Train the received global model for the local epochs on this node's partition."""
    config = message.content.config_records["config"]
    partition_id = int(context.node_config["partition-id"])
    features, labels = _partition(_setting(config, "data-path", str), partition_id)

    model = SoftmaxRegression(features.shape[1])
    model.load_state_dict(message.content.array_records["arrays"].to_torch_state_dict())
    shuffle_seed = _shuffle_seed(
        _setting(config, "seed", int), _setting(config, "server-round", int), partition_id
    )
    batches = DataLoader(
        TensorDataset(torch.from_numpy(features), torch.from_numpy(labels)),
        batch_size=LOCAL_BATCH_SIZE,
        shuffle=True,
        generator=torch.Generator().manual_seed(shuffle_seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=_setting(config, "lr", float))
    model.train()
    for _ in range(LOCAL_EPOCHS):
        for batch_features, batch_labels in batches:
            optimizer.zero_grad()
            model.loss(batch_features, batch_labels).backward()
            optimizer.step()

    reply = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({WEIGHT_KEY: len(labels)}),
        }
    )
    return Message(content=reply, reply_to=message)


@dataclass
class FinalModel:
    """Where the ServerApp leaves the global model after its last round."""

    arrays: ArrayRecord | None = None


class StrictFedAvg(FedAvg):
    """Flower's FedAvg, except that a failed client reply stops the run.

    Plain ``FedAvg`` logs a failed reply and averages the rest, which would let a
    broken benchmark report a throughput for work it did not do. The math is
    Flower's own ``aggregate_train``.
    """

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Refuse the round if any reply carries an error, then aggregate as FedAvg does."""
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                raise FedwardenError(
                    f"Flower client node {reply.metadata.src_node_id} failed in round "
                    f"{server_round}: {reply.error.reason}; the benchmark result would "
                    "not cover the whole cohort, fix the ClientApp error first"
                )
        return super().aggregate_train(server_round, replies)


def build_server_app(
    *,
    num_clients: int,
    rounds: int,
    cohort_size: int,
    lr: float,
    seed: int,
    data_path: str,
    initial_model: SoftmaxRegression,
    trace: AccuracyTrace | None = None,
) -> tuple[ServerApp, FinalModel]:
    """Build the ServerApp that runs ``rounds`` of FedAvg and where its final model lands.

    With a ``trace``, the strategy's central evaluation (``evaluate_fn``, called
    by Flower with round 0 before training and after each round) records the
    global model's accuracy there.
    """
    server_app = ServerApp()
    final_model = FinalModel()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = StrictFedAvg(
            fraction_train=cohort_size / num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=cohort_size,
            min_available_nodes=num_clients,
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_model.state_dict()),
            num_rounds=rounds,
            train_config=ConfigRecord({"lr": float(lr), "seed": seed, "data-path": data_path}),
            evaluate_fn=None if trace is None else _central_evaluation(trace),
        )
        final_model.arrays = result.arrays

    return server_app, final_model


def _central_evaluation(trace: AccuracyTrace) -> Callable[[int, ArrayRecord], None]:
    """Flower's ``evaluate_fn`` that records the global model's accuracy in ``trace``."""

    def evaluate(server_round: int, arrays: ArrayRecord) -> None:
        state = arrays.to_torch_state_dict()
        trace.record(server_round, state["linear.weight"].numpy(), state["linear.bias"].numpy())

    return evaluate


def _setting(config: ConfigRecord, key: str, kind: type[Setting]) -> Setting:
    """Read one train setting the ServerApp sent, refusing a value of another type."""
    value = config[key]
    if not isinstance(value, kind):
        raise FedwardenError(
            f"train config {key!r} holds {value!r}, but the benchmark ServerApp sends a "
            f"{kind.__name__}; the ClientApp and ServerApp come from different versions"
        )
    return value


@cache
def _partitions(path: str) -> np.lib.npyio.NpzFile:
    """Open the partitions file once per process; members are read on demand."""
    partitions: np.lib.npyio.NpzFile = np.load(path)
    return partitions


def _partition(
    path: str, partition_id: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Read partition ``partition_id``'s features and labels from the partitions file."""
    partitions = _partitions(path)
    return partitions[f"x_{partition_id}"], partitions[f"y_{partition_id}"]


def _shuffle_seed(seed: int, round_index: int, partition_id: int) -> int:
    """Derive the seed of one client's minibatch shuffle in one round from the run's seed."""
    return int(np.random.SeedSequence([seed, round_index, partition_id]).generate_state(1)[0])
