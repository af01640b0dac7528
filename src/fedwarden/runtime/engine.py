"""The client side of simulation: one trainer training its clients in turn, or at once.

The ``local`` and ``ray`` runtimes host a :class:`ClientEngine` per worker,
the ``inprocess`` runtime one in the server's process; the gRPC client process
runs the same code for its single client. A trainer whose gradient stacks
clients trains a worker's share of a round in one call, each client's update
the same bits as alone. The engine knows how a client trains and evaluates;
it never decides anything about the round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from fedwarden.core.errors import DataError, FedwardenError
from fedwarden.core.messages import (
    FINETUNE_STREAM,
    ClientEvaluation,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    FitResult,
    client_seed,
)
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.models.trainer import ClientContext, CohortTrainer, Trainer
from fedwarden.pipeline.stage import Stage, client_halves
from fedwarden.runtime.state import ClientStateStore

logger = logging.getLogger(__name__)

Reply = TypeVar("Reply", ClientUpdate, ClientEvaluation)


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


@dataclass(frozen=True)
class _CohortResults:
    """What one ``fit_cohort`` call gave: each client's context and result, and its seconds."""

    contexts: list[ClientContext]
    results: list[FitResult]
    seconds: float


class ClientEngine:
    """Trains and evaluates the clients of one worker, one after another or all at once."""

    def __init__(self, workload: Workload) -> None:
        self.dataset = workload.dataset
        self.trainer = workload.trainer
        self.stages = workload.stages
        self.run_seed = workload.run_seed
        self.states = ClientStateStore(workload.state_dir)

    def fit(self, vector: Vector, instruction: FitInstruction) -> ClientUpdate:
        """Train one client from ``vector`` and run the pipeline's client halves."""
        started = time.perf_counter()
        context = self._fit_context(instruction)
        result = self.trainer.fit(vector, context, instruction.train)
        return self._finish(instruction, context, result, time.perf_counter() - started)

    def fit_each(
        self, vector: Vector, instructions: Sequence[FitInstruction]
    ) -> Iterator[ClientUpdate | Exception]:
        """:meth:`fit` for each instruction in order: its update, or the error its training raised.

        A trainer that stacks clients (:class:`~fedwarden.models.trainer.CohortTrainer`)
        trains all of them in one ``fit_cohort`` call when they share one
        :class:`~fedwarden.core.messages.TrainConfig`, each exactly as :meth:`fit`
        would; should that call raise, they train one by one, so an error costs
        only its own client. Any other trainer trains a client when its reply is
        asked for, so a caller can stop between clients.
        """
        trainer = self._cohort_trainer(instructions)
        results = None if trainer is None else self._fit_cohort(trainer, vector, instructions)
        if results is None:
            for instruction in instructions:
                yield _attempt(instruction.client_id, partial(self.fit, vector, instruction))
            return
        share = results.seconds / len(instructions)
        for instruction, context, result in zip(
            instructions, results.contexts, results.results, strict=True
        ):
            yield _attempt(
                instruction.client_id,
                partial(self._finish, instruction, context, result, share),
            )

    def _cohort_trainer(self, instructions: Sequence[FitInstruction]) -> CohortTrainer | None:
        """The trainer, if it can train these instructions' clients in one call."""
        if not isinstance(self.trainer, CohortTrainer) or not self.trainer.stacks_clients:
            return None
        same_training = len({instruction.train for instruction in instructions}) == 1
        return self.trainer if same_training else None

    def _fit_cohort(
        self, trainer: CohortTrainer, vector: Vector, instructions: Sequence[FitInstruction]
    ) -> _CohortResults | None:
        """``trainer.fit_cohort`` over every instruction; None if it raised."""
        started = time.perf_counter()
        contexts = [self._fit_context(instruction) for instruction in instructions]
        try:
            results = trainer.fit_cohort(vector, contexts, instructions[0].train)
        except Exception:
            logger.info("training %d clients at once failed; training each alone", len(contexts))
            return None
        return _CohortResults(contexts, results, time.perf_counter() - started)

    def _finish(
        self,
        instruction: FitInstruction,
        context: ClientContext,
        result: FitResult,
        training_seconds: float,
    ) -> ClientUpdate:
        """The client's update through the pipeline's client halves; its state saved."""
        started = time.perf_counter()
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
        seconds = training_seconds + time.perf_counter() - started
        return replace(update, train_seconds=seconds)

    def _fit_context(self, instruction: FitInstruction) -> ClientContext:
        context = self._context(instruction.client_id, instruction.round_index)
        context.round_parameters = instruction.round_parameters
        return context

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

    def evaluate_each(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | Exception]:
        """:meth:`evaluate` for each instruction when its reply is asked for, or its error."""
        for instruction in instructions:
            yield _attempt(instruction.client_id, partial(self.evaluate, vector, instruction))

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


def _attempt(client_id: str, reply: Callable[[], Reply]) -> Reply | Exception:
    """``reply()``, or the error it raised: a trainer bug must cost one client, not the run."""
    try:
        return reply()
    except FedwardenError as error:
        return error
    except Exception as error:
        logger.exception("client %s failed", client_id)
        return error
