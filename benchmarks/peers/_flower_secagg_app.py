"""The Flower side of the secure-aggregation benchmark: SecAgg+ rounds as Flower's docs build it.

Flower's SecAgg+ (``flwr.server.workflow.SecAggPlusWorkflow`` on the server,
``flwr.client.mod.secaggplus_mod`` on the ClientApp) follows Bell et al.
(CCS 2020), "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
on the legacy ``Strategy`` API: the ServerApp wraps its context in a
``LegacyContext`` and runs a ``DefaultWorkflow`` whose fit workflow is
``SecAggPlusWorkflow``, exactly as Flower's ``secure-aggregation`` example does.

What the apps do and nothing more:

* The ClientApp's ``fit`` returns its workload vector
  (:func:`benchmarks.peers.flower_secagg.synthetic_update`) with weight 1; no
  training happens, so the time is the protocol's.
* :func:`dropout_mod` runs before ``secaggplus_mod`` and makes the clients with
  ``partition-id < dropouts`` vanish after sharing keys: asked for their
  masked vector, they reply with a ``NODE_UNAVAILABLE`` error instead, which
  Flower's workflow treats as a dropped node (it rebuilds their masking keys
  from the neighbours' shares and removes their pairwise masks).
* The ServerApp runs two rounds and records the second: the first, on
  one-element updates, starts Ray's actors and imports the apps in them. As
  the global model it sends a one-element placeholder, so that Flower's time
  is secure aggregation and not a model broadcast (fedwarden's side
  broadcasts nothing either). It records how long the measured SecAgg+ round
  and its unmask stage took, the size of one masked upload, and the aggregate.

Imports Flower at the top: import this module only through
:func:`benchmarks.peers.flower_secagg.run_flower_secagg`, which checks that it exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.client.client import Client
from flwr.compat.common import recorddict_compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid, ServerApp

from benchmarks.peers.flower_secagg import synthetic_update
from fedwarden.core.errors import FedwardenError

WARM_UP_ROUND = 1
"""A round on one-element updates that starts Ray's actors; only the round after it is recorded."""

FitConfigFn = Callable[[int], dict[str, Scalar]]
"""What the strategy sends each client with round ``server_round``'s fit instruction."""


class UpdateClient(NumPyClient):
    """A client whose ``fit`` returns its workload vector with weight 1."""

    def __init__(self, partition_id: int) -> None:
        self.partition_id = partition_id

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Reply with ``synthetic_update(seed, partition-id, dim)``; the global model is unused."""
        update = synthetic_update(
            _setting(config, "seed"), self.partition_id, _setting(config, "dim")
        )
        return [update], 1, {}


def client_fn(context: Context) -> Client:
    """Build the client of one virtual SuperNode from its ``partition-id``."""
    return UpdateClient(int(context.node_config["partition-id"])).to_client()


def dropout_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Make clients ``partition-id < dropouts`` drop out after sharing keys.

    Asked for their masked vector (SecAgg+ stage ``collect_masked_vectors``),
    they answer with a ``NODE_UNAVAILABLE`` error; every other message goes on
    to ``secaggplus_mod`` unchanged.
    """
    if message.metadata.message_type == MessageType.TRAIN:
        stage = message.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
        if stage == Stage.COLLECT_MASKED_VECTORS:
            config = recorddict_compat.recorddict_to_fitins(message.content, True).config
            if int(context.node_config["partition-id"]) < _setting(config, "dropouts"):
                reason = "simulated dropout after sharing keys"
                return Message(
                    Error(code=ErrorCode.NODE_UNAVAILABLE, reason=reason), reply_to=message
                )
    return call_next(message, context)


client_app = ClientApp(client_fn=client_fn, mods=[dropout_mod, secaggplus_mod])


@dataclass
class SecAggRecord:
    """What the ServerApp measured in its last SecAgg+ round (each round overwrites it)."""

    round_seconds: float | None = None
    unmask_seconds: float | None = None
    masked_upload_bytes: int | None = None
    survivors: int | None = None
    aggregate: npt.NDArray[np.float64] | None = None


class TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's ``SecAggPlusWorkflow``, timed, and reporting the size of one masked upload.

    ``max_weight`` is 1, the weight every client sends, so Flower's weighted
    mean is the plain mean, as on fedwarden's side.
    """

    def __init__(
        self,
        record: SecAggRecord,
        *,
        num_shares: int,
        threshold: int,
        clipping_range: float,
        quantization_range: int,
    ) -> None:
        super().__init__(
            num_shares,
            threshold,
            max_weight=1.0,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
        )
        self.record = record

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the four SecAgg+ stages (setup to unmask and ``aggregate_fit``) and time them."""
        start = time.perf_counter()
        super().__call__(grid, context)
        self.record.round_seconds = time.perf_counter() - start

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        """Flower's stage 2; then the size of one upload, in Flower's own array serialization.

        The server's running sum has the shapes and dtype of every client's
        masked vector, so its serialized size is one client's upload.
        """
        proceed = super().collect_masked_vectors_stage(grid, context, state)
        self.record.masked_upload_bytes = sum(
            len(ndarray_to_bytes(array)) for array in state.aggregate_ndarrays
        )
        self.record.survivors = len(state.active_node_ids)
        return proceed

    def unmask_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's stage 3 (collect shares, rebuild and remove masks, aggregate), timed."""
        start = time.perf_counter()
        proceed = super().unmask_stage(grid, context, state)
        self.record.unmask_seconds = time.perf_counter() - start
        return proceed


class RecordingFedAvg(FedAvg):
    """Flower's FedAvg, keeping the aggregate of its fit round."""

    def __init__(self, record: SecAggRecord, *, num_clients: int, fit_config: FitConfigFn) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=num_clients,
            min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(1, dtype=np.float32)]),
            on_fit_config_fn=fit_config,
        )
        self.record = record

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate as FedAvg does, and record the result."""
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            (aggregate,) = parameters_to_ndarrays(parameters)
            self.record.aggregate = np.asarray(aggregate, dtype=np.float64)
        return parameters, metrics


def build_server_app(
    *,
    num_clients: int,
    dim: int,
    dropouts: int,
    seed: int,
    num_shares: int,
    threshold: int,
    clipping_range: float,
    quantization_range: int,
) -> tuple[ServerApp, SecAggRecord]:
    """Build the ServerApp that runs SecAgg+ over all clients, and its record.

    Two rounds: the warm-up round (one-element updates) starts Ray's actors
    and imports the apps in them; the second round, on ``dim``-element
    updates, is the one measured (each round overwrites the record).
    """
    server_app = ServerApp()
    record = SecAggRecord()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        def fit_config(server_round: int) -> dict[str, Scalar]:
            size = 1 if server_round == WARM_UP_ROUND else dim
            return {"seed": seed, "dim": size, "dropouts": dropouts}

        strategy = RecordingFedAvg(record, num_clients=num_clients, fit_config=fit_config)
        legacy = LegacyContext(context, ServerConfig(num_rounds=2), strategy)
        workflow = TimedSecAggPlusWorkflow(
            record,
            num_shares=num_shares,
            threshold=threshold,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
        )
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)

    return server_app, record


def _setting(config: Mapping[str, Scalar], key: str) -> int:
    """Read one integer setting the ServerApp sent in the fit config."""
    value = config[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise FedwardenError(
            f"fit config {key!r} holds {value!r}, but the benchmark ServerApp sends an int; "
            "the ClientApp and ServerApp come from different versions"
        )
    return value
