"""The ``inprocess`` runtime: the clients train in the server's own process.

No worker to start and nothing serialized: a round costs its training and
nothing else, which suits notebooks, tests and simulations whose whole run is
shorter than starting worker processes (a ``local`` worker takes about 0.3 s
to start; a round of 200 clients of a softmax regression, trained as one
stacked cohort, takes a few tens of milliseconds). The price: one core
trains, a trainer that crashes the interpreter (rather than raising) ends the
run, and a round deadline cannot interrupt training in progress: a client
whose reply comes after the deadline is reported as a ``deadline`` failure,
and so is every client after it, which is not trained unless its cohort
trained all at once.

The clients get their own copy of the trainer, as a worker would, so the
model object the server evaluates with is never trained under it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import ClassVar

from fedwarden.core.errors import RuntimeFailure
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
)
from fedwarden.core.params import Vector
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import ClientEngine, Workload


class InProcessRuntime(Runtime):
    """One client engine in this process, training the whole cohort in turn (or at once)."""

    name: ClassVar[str] = "inprocess"

    def __init__(self) -> None:
        self._engine: ClientEngine | None = None

    def start(self, workload: Workload) -> None:
        """Host every client of the workload, with a copy of its trainer."""
        self._engine = ClientEngine(replace(workload, trainer=copy.deepcopy(workload.trainer)))

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure]:
        """Train the cohort here; replies in instruction order."""
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        replies = self.engine.fit_each(vector, instructions)
        late = False
        for instruction in instructions:
            if not late:
                reply = next(replies)
                late = deadline is not None and time.monotonic() > deadline
            if late:
                yield ClientFailure(
                    instruction.round_index,
                    instruction.client_id,
                    "deadline",
                    "did not finish before the round deadline",
                )
            elif isinstance(reply, Exception):
                yield _failure(instruction.round_index, instruction.client_id, reply)
            else:
                yield reply

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        """Evaluate each instructed client here; replies in instruction order."""
        replies = self.engine.evaluate_each(vector, instructions)
        for instruction, reply in zip(instructions, replies, strict=True):
            if isinstance(reply, Exception):
                yield _failure(instruction.round_index, instruction.client_id, reply)
            else:
                yield reply

    def close(self) -> None:
        """Drop the clients' engine; safe to call twice."""
        self._engine = None

    @property
    def engine(self) -> ClientEngine:
        """The engine hosting the clients.

        Raises:
            RuntimeFailure: before :meth:`start` or after :meth:`close`.
        """
        if self._engine is None:
            raise RuntimeFailure("the inprocess runtime has not been started: call start first")
        return self._engine


def _failure(round_index: int, client_id: str, error: Exception) -> ClientFailure:
    return ClientFailure(round_index, client_id, "error", f"{type(error).__name__}: {error}")
