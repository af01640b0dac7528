"""ServerApp and ClientApp that time Flower's deployment runtime per round.

The ServerApp runs Flower's ``FedAvg`` over one flat ``float32`` array of
``model-size`` parameters on all ``num-nodes`` SuperNodes, with federated
evaluation off, and appends one JSON line per round to ``timings-path``:
``{"round": r, "seconds": s}``, from the start of ``configure_train`` to the end
of ``aggregate_train`` (the same span as a fedwarden round: sample, send,
receive, aggregate).

The ClientApp answers at once with the received model plus a constant that
differs per node. Flower 1.42 stores arrays as content-addressed chunks and
skips chunks it already holds, so a reply equal to the model (or to another
node's reply), or an all-constant model, would not travel in full; a random
initial model and a per-node offset make every byte travel, as a trained
update's would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

WEIGHT_KEY = "num-examples"
"""MetricRecord key FedAvg weights each reply by (Flower's default)."""

client_app = ClientApp()
server_app = ServerApp()


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """Reply at once with the model plus a node-specific constant (no training)."""
    model = message.content.array_records["arrays"].to_numpy_ndarrays()[0]
    partition_id = int(context.node_config["partition-id"])
    reply = model + np.float32(1e-3 * (partition_id + 1))
    content = RecordDict({"arrays": ArrayRecord([reply]), "metrics": MetricRecord({WEIGHT_KEY: 1})})
    return Message(content=content, reply_to=message)


class TimedFedAvg(FedAvg):
    """Flower's FedAvg on all ``num_nodes`` nodes, writing each round's wall time to a file."""

    def __init__(self, timings_path: Path, num_nodes: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=num_nodes,
            min_available_nodes=num_nodes,
        )
        self.timings_path = timings_path
        self.round_started: dict[int, float] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Note when the round starts, then configure it as FedAvg does."""
        self.round_started[server_round] = time.perf_counter()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Refuse a round with a failed reply, aggregate as FedAvg does, record the time."""
        replies = list(replies)
        failures = [reply for reply in replies if reply.has_error()]
        if failures:
            raise RuntimeError(
                f"{len(failures)} Flower client replies failed in round {server_round} "
                f"(first: {failures[0].error.reason}); the round time would not cover "
                "the whole cohort"
            )
        result = super().aggregate_train(server_round, replies)
        seconds = time.perf_counter() - self.round_started[server_round]
        with self.timings_path.open("a") as timings:
            timings.write(
                json.dumps({"round": server_round, "seconds": seconds, "replies": len(replies)})
                + "\n"
            )
        return result


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FedAvg for ``num-server-rounds`` rounds on every node, timing each round."""
    settings = context.run_config
    strategy = TimedFedAvg(Path(str(settings["timings-path"])), int(settings["num-nodes"]))
    model_size = int(settings["model-size"])
    initial = np.random.default_rng(0).standard_normal(model_size, dtype=np.float32)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([initial]),
        num_rounds=int(settings["num-server-rounds"]),
    )
