"""FedBuff's server (Nguyen et al. 2022) over scripted asynchronous clients.

The clients here are a fake runtime whose replies arrive at chosen polls, so
the staleness of every update, and hence the exact model, is known.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    TrainConfig,
    UpdateRefused,
)
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.models.numpy import softmax_regression
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import Runtime, Workload
from fedwarden.server import ServerSettings
from fedwarden.server.fedbuff import FedBuffServer, staleness_weight
from fedwarden.strategies import FedAvg, UniformSampler

TRAINER = softmax_regression(4, 2)


@dataclass
class ScriptedClients(Runtime):
    """Asynchronous clients whose update is a constant vector, ready a fixed number of polls on.

    ``value[c]`` is client ``c``'s update (every coordinate); ``polls[c]`` how
    many polls after its dispatch its reply arrives.
    """

    value: dict[str, float]
    polls: dict[str, int]
    name = "scripted"
    published: list[Vector] = field(default_factory=list)
    dispatched: list[tuple[int, str]] = field(default_factory=list)
    _pending: list[tuple[int, FitInstruction]] = field(default_factory=list)
    _clock: int = 0

    def asynchronous(self) -> ScriptedClients:
        return self

    def publish(self, vector: Vector, label: str) -> str:
        self.published.append(vector.copy())
        return label

    def retire(self, version: str) -> None:
        return None

    def dispatch(self, version: str, instruction: FitInstruction) -> None:
        self.dispatched.append((instruction.round_index, instruction.client_id))
        ready = self._clock + self.polls[instruction.client_id]
        self._pending.append((ready, instruction))

    def poll(
        self, timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        self._clock += 1
        ready = [item for item in self._pending if item[0] <= self._clock]
        self._pending = [item for item in self._pending if item[0] > self._clock]
        return [
            ClientUpdate(
                instruction.round_index,
                instruction.client_id,
                np.full(TRAINER.spec.size, self.value[instruction.client_id], VECTOR_DTYPE),
                num_examples=10,
            )
            for _, instruction in ready
        ]

    def release(self, round_index: int, client_id: str) -> None:
        return None

    def connected_clients(self) -> list[str]:
        return sorted(self.value)

    def start(self, workload: Workload) -> None:
        return None

    def fit(
        self,
        vector: Vector,
        instructions: Sequence[FitInstruction],
        deadline_s: float | None = None,
    ) -> Iterator[ClientUpdate | ClientFailure | UpdateRefused]:
        raise AssertionError("FedBuff never runs a synchronous cohort")

    def evaluate(
        self, vector: Vector, instructions: Sequence[EvaluateInstruction]
    ) -> Iterator[ClientEvaluation | ClientFailure]:
        return iter(())

    def close(self) -> None:
        return None


def fedbuff(clients: Runtime, rounds: int, buffer_size: int, concurrency: int) -> FedBuffServer:
    return FedBuffServer(
        buffer_size=buffer_size,
        concurrency=concurrency,
        staleness_exponent=0.5,
        trainer=TRAINER,
        strategy=FedAvg(TrainConfig()),
        sampler=UniformSampler(1),
        pipeline=Pipeline([ValidateUpdate(TRAINER.spec.size)], StreamingWeightedMean()),
        runtime=clients,
        client_ids=sorted(getattr(clients, "value", {"a": 0})),
        settings=ServerSettings(rounds=rounds, seed=0),
    )


def test_a_slow_client_never_blocks_and_its_stale_update_is_down_weighted() -> None:
    clients = ScriptedClients(value={"fast": 1.0, "slow": 4.0}, polls={"fast": 1, "slow": 4})
    server = fedbuff(clients, rounds=4, buffer_size=1, concurrency=2)
    start = server.vector.copy()
    result = server.run()
    assert result.rounds == 4
    # The fast client fills buffers 0, 1 and 2 while the slow one trains on version 0; the
    # slow update lands in buffer 3 with staleness 3 and weight (1 + 3) ** -0.5 = 1/2.
    assert clients.dispatched[:2] == [(0, "fast"), (0, "slow")]
    assert ("slow", 1) not in {(client, version) for version, client in clients.dispatched}
    expected = start + 1.0 + 1.0 + 1.0 + 4.0 * staleness_weight(3, 0.5)
    np.testing.assert_allclose(server.vector, expected, rtol=1e-6)
    assert staleness_weight(3, 0.5) == pytest.approx(0.5)


def test_updates_beyond_max_staleness_are_refused_and_counted() -> None:
    clients = ScriptedClients(value={"fast": 1.0, "slow": 4.0}, polls={"fast": 1, "slow": 4})
    server = fedbuff(clients, rounds=4, buffer_size=1, concurrency=2)
    server.max_staleness = 2
    start = server.vector.copy()
    server.run()
    assert sum(record.rejection_reasons.get("stale", 0) for record in server.history) == 1
    np.testing.assert_allclose(server.vector, start + 4.0, rtol=1e-6)


def test_a_buffer_takes_exactly_buffer_size_updates_and_keeps_the_rest_for_the_next() -> None:
    clients = ScriptedClients(value=dict.fromkeys("abcde", 1.0), polls=dict.fromkeys("abcde", 1))
    server = fedbuff(clients, rounds=3, buffer_size=2, concurrency=5)
    server.run()
    assert [record.participants for record in server.history] == [2, 2, 2]


def test_fedbuff_needs_a_runtime_with_asynchronous_clients() -> None:
    from fakes import RecordingRuntime

    with pytest.raises(ConfigError, match=r"runtime\.kind 'grpc'"):
        fedbuff(RecordingRuntime(), rounds=1, buffer_size=1, concurrency=1)
