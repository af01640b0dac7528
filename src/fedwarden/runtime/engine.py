"""The client side of simulation: one trainer training its clients in turn.

Both the ``local`` and the ``ray`` runtimes host a :class:`ClientEngine` per
worker; the gRPC client process runs the same code for its single client. The
engine knows how a client trains and evaluates; it never decides anything
about the round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedwarden.core.errors import DataError
from fedwarden.core.messages import (
    FINETUNE_STREAM,
    ClientEvaluation,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    client_seed,
)
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.models.trainer import ClientContext, Trainer
from fedwarden.pipeline.stage import Stage, client_halves
from fedwarden.runtime.state import ClientStateStore


@dataclass(frozen=True)
class Workload:
    """What every worker needs to host its clients: data, model, the pipeline's stages, seed.

    Only the stages travel (their client halves run on the clients); the
    aggregator stays with the server. ``state_dir`` is where client state
    persists (``None``: in memory only).
    """

    dataset: FederatedDataset
    trainer: Trainer
    stages: tuple[Stage, ...]
    run_seed: int
    state_dir: Path | None = None

    def for_clients(self, client_ids: list[str]) -> Workload:
        """The same workload holding only ``client_ids``' data (one worker's share)."""
        return replace(self, dataset=self.dataset.subset(client_ids))


class ClientEngine:
    """Trains and evaluates the clients of one worker, one after another."""

    def __init__(self, workload: Workload) -> None:
        self.dataset = workload.dataset
        self.trainer = workload.trainer
        self.stages = workload.stages
        self.run_seed = workload.run_seed
        self.states = ClientStateStore(workload.state_dir)

    def fit(self, vector: Vector, instruction: FitInstruction) -> ClientUpdate:
        """Train one client from ``vector`` and run the pipeline's client halves."""
        started = time.perf_counter()
        context = self._context(instruction.client_id, instruction.round_index)
        context.round_parameters = instruction.round_parameters
        result = self.trainer.fit(vector, context, instruction.train)
        update = ClientUpdate(
            round_index=instruction.round_index,
            client_id=instruction.client_id,
            update=result.update,
            num_examples=result.num_examples,
            metrics=result.metrics,
        )
        update = client_halves(self.stages, update, context)
        if context.state:
            self.states.save(instruction.client_id, instruction.round_index, context.state)
        return replace(update, train_seconds=time.perf_counter() - started)

    def evaluate(self, vector: Vector, instruction: EvaluateInstruction) -> ClientEvaluation:
        """Metrics of ``vector`` on the client's test split, and after fine-tuning if asked."""
        data = self._data(instruction.client_id)
        metrics = dict(self.trainer.evaluate(vector, data.x_test, data.y_test))
        if instruction.finetune is not None:
            context = self._context(instruction.client_id, instruction.round_index)
            context.rng = np.random.default_rng(
                client_seed(self.run_seed, instruction.round_index, data.client_id, FINETUNE_STREAM)
            )
            tuned = self.trainer.fit(vector, context, instruction.finetune)
            personalized = self.trainer.evaluate(vector + tuned.update, data.x_test, data.y_test)
            metrics.update({f"personalized_{k}": v for k, v in personalized.items()})
        return ClientEvaluation(instruction.client_id, data.num_test, metrics)

    def _context(self, client_id: str, round_index: int) -> ClientContext:
        return ClientContext(
            client_id=client_id,
            data=self._data(client_id),
            round_index=round_index,
            rng=np.random.default_rng(client_seed(self.run_seed, round_index, client_id)),
            state=self.states.load(client_id, round_index),
        )

    def _data(self, client_id: str) -> ClientData:
        try:
            return self.dataset.clients[client_id]
        except KeyError:
            raise DataError(
                f"client {client_id!r} is not hosted by this worker; the runtime routed it wrongly"
            ) from None
