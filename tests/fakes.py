"""Trainers with scripted behaviour, for testing what the runtime and server do with it.

They live in a module (not in a test function) so spawned worker processes can
import them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedwarden.core.messages import (
    ClientFailure,
    ClientUpdate,
    FitInstruction,
    FitResult,
    Metrics,
    TrainConfig,
)
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.models.numpy import NumpyTrainer, softmax_regression
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline import StreamingWeightedMean
from fedwarden.runtime import InProcessRuntime
from fedwarden.server.listeners import RoundListener

# The (client, round) pairs this process has trained slowly, for ``ScriptedTrainer.slow_once``.
_SLEPT: set[tuple[str, int]] = set()


@dataclass(frozen=True)
class ScriptedTrainer:
    """Softmax regression on 64 features / 10 classes, with faults for chosen clients.

    In rounds listed in ``rounds`` (all rounds if empty): clients in ``exit``
    kill their worker process, ``error`` raise, ``nan`` return a NaN update,
    ``slow`` sleep ``sleep_s`` before training (with ``slow_once``, only the
    first time this process trains that round: a retry after a server restart
    is not slow). ``sleep_every_fit_s`` slows every fit (to give a test time to
    kill a run mid-way). Each fit counts itself in the client's persistent
    state under ``"fits"``.
    """

    exit: frozenset[str] = frozenset()
    error: frozenset[str] = frozenset()
    nan: frozenset[str] = frozenset()
    slow: frozenset[str] = frozenset()
    rounds: frozenset[int] = frozenset()
    sleep_s: float = 0.0
    sleep_every_fit_s: float = 0.0
    slow_once: bool = False
    inner: NumpyTrainer = field(default_factory=lambda: softmax_regression(64, 10))

    @property
    def spec(self) -> ParamSpec:
        return self.inner.spec

    def initial_vector(self, seed: int) -> Vector:
        return self.inner.initial_vector(seed)

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        scripted = not self.rounds or client.round_index in self.rounds
        who = client.client_id
        time.sleep(self.sleep_every_fit_s)
        if scripted and who in self.exit:
            os._exit(3)
        if scripted and who in self.error:
            raise ValueError(f"scripted failure of {who}")
        slept = (who, client.round_index) in _SLEPT
        if scripted and who in self.slow and not (self.slow_once and slept):
            _SLEPT.add((who, client.round_index))
            time.sleep(self.sleep_s)
        result = self.inner.fit(vector, client, train)
        fits = int(client.state.get("fits", np.zeros(1, np.int64))[0]) + 1
        client.state["fits"] = np.array([fits], dtype=np.int64)
        update = result.update
        if scripted and who in self.nan:
            update = np.full_like(update, np.nan)
        return FitResult(update, result.num_examples, {**result.metrics, "fits": float(fits)})

    def evaluate(self, vector: Vector, x: np.ndarray, y: np.ndarray) -> Metrics:
        return self.inner.evaluate(vector, x, y)


def slow_softmax(num_features: int, num_classes: int | None) -> ScriptedTrainer:
    """A ``model.factory`` for configs: every fit takes at least 0.15 s."""
    return ScriptedTrainer(sleep_every_fit_s=0.15)


def sluggish_softmax(num_features: int, num_classes: int | None) -> ScriptedTrainer:
    """A ``model.factory`` for deployed clients: every fit takes at least 1 s (a slow site)."""
    return ScriptedTrainer(sleep_every_fit_s=1.0)


def one_slow_site(num_features: int, num_classes: int | None) -> ScriptedTrainer:
    """A ``model.factory`` for deployed clients: ``client_4`` takes 3 s a round, others 0.2 s.

    The fast sites fill several FedBuff buffers in well under 3 s (about 1 s on a loaded
    2-core machine); the server waits for the slow site's task before it ends the run.
    """
    return ScriptedTrainer(slow=frozenset({"client_4"}), sleep_s=3.0, sleep_every_fit_s=0.2)


def one_slow_site_in_round_one(num_features: int, num_classes: int | None) -> ScriptedTrainer:
    """A ``model.factory`` for deployed clients: ``client_4`` takes 6 s in round 1, else 0.2 s.

    Only its first try of round 1 is slow (the window a test kills the server in); the
    retry asked by the restarted server is not.
    """
    return ScriptedTrainer(
        slow=frozenset({"client_4"}),
        rounds=frozenset({1}),
        sleep_s=6.0,
        sleep_every_fit_s=0.2,
        slow_once=True,
    )


class RecordingListener(RoundListener):
    """A server's listener that keeps each cohort and refusal, as the run store's would."""

    def __init__(self) -> None:
        self.cohorts: dict[int, list[str]] = {}
        self.refused: list[tuple[int, str, str]] = []

    def round_started(self, round_index: int, cohort: Sequence[str]) -> None:
        self.cohorts[round_index] = list(cohort)

    def update_rejected(self, round_index: int, client_id: str, reason: str, message: str) -> None:
        self.refused.append((round_index, client_id, reason))


class RecordingRuntime(InProcessRuntime):
    """The inprocess runtime, recording every instruction it delivers."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.delivered: list[FitInstruction] = []

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure]:
        replies = super().fit(vector, instructions, deadline_s)
        for instruction, reply in zip(instructions, replies, strict=True):
            self.delivered.append(instruction)
            yield reply


class BufferRecordingMean(StreamingWeightedMean):
    """The streaming mean, remembering which clients' updates each buffer took."""

    def __init__(self) -> None:
        super().__init__()
        self.buffers: list[list[str]] = []

    def start(self, size: int, cohort: Sequence[str]) -> None:
        super().start(size, cohort)
        self.buffers.append([])

    def add(self, update: ClientUpdate) -> None:
        super().add(update)
        self.buffers[-1].append(update.client_id)
