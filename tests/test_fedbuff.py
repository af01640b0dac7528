"""FedBuff's server (Nguyen et al. 2022) over scripted asynchronous clients.

The clients here are a fake runtime whose replies arrive at chosen polls, so
the staleness of every update, and hence the exact model, is known.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.dp_event import DpEvent
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation

from fakes import BufferRecordingMean
from fedwarden.build.pipeline import build_pipeline
from fedwarden.build.privacy import build_privacy
from fedwarden.core.config import RunConfig
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
from fedwarden.core.records import RoundRecord
from fedwarden.data.sources import load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.pipeline import Aggregator, Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.dp_mean import GaussianMean
from fedwarden.pipeline.secure import SecureSum
from fedwarden.pipeline.secure_buffer import BufferSecureSum
from fedwarden.pipeline.stage import Stage
from fedwarden.privacy.clipping import ClipNorm, clip_to_norm
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import sampling_secrecy
from fedwarden.privacy.user_level import CohortSampling, UserLevelPrivacy
from fedwarden.runtime import Runtime, Workload
from fedwarden.secure.encoding import RingEncoder
from fedwarden.secure.secagg import SecAggParameters
from fedwarden.server import ServerSettings
from fedwarden.server.fedbuff import FedBuffServer, staleness_weight
from fedwarden.server.listeners import RoundListener
from fedwarden.server.rundir import OpenTasks, RunDirectory
from fedwarden.strategies import FedAvg, UniformSampler

TRAINER = softmax_regression(4, 2)


class ServerKilled(Exception):
    """The server process dies here; the scripted clients keep their tasks."""


@dataclass
class ScriptedClients(Runtime):
    """Asynchronous clients whose update is a constant vector, ready a fixed number of polls on.

    ``value[c]`` is client ``c``'s update (every coordinate); ``polls[c]`` how
    many polls after its dispatch its reply arrives, or a list of such delays
    for its successive dispatches, where None is a task that fails.
    ``redeliver`` clients have each of their replies delivered twice. Like the
    grpc runtime's spool, the clients keep every delivered update until the
    server releases it, and :meth:`recover` hands those back after a restart.
    """

    value: dict[str, float]
    polls: dict[str, int | list[int | None]]
    redeliver: frozenset[str] = frozenset()
    crash_at: int | None = None
    """The poll at which the server is killed (:class:`ServerKilled`); the clients train on."""
    resumed: list[tuple[int, str]] = field(default_factory=list)
    name = "scripted"
    published: list[Vector] = field(default_factory=list)
    dispatched: list[tuple[int, str]] = field(default_factory=list)
    accepted: dict[tuple[int, str], ClientUpdate] = field(default_factory=dict)
    """Delivered updates not yet released, by (model version index, client)."""
    _pending: list[tuple[int, FitInstruction, bool]] = field(default_factory=list)
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
        delays = self.polls[instruction.client_id]
        delay = delays.pop(0) if isinstance(delays, list) else delays
        ready = self._clock + (1 if delay is None else delay)
        self._pending.append((ready, instruction, delay is None))

    def resume(self, version: str, instruction: FitInstruction) -> None:
        self.resumed.append((instruction.round_index, instruction.client_id))

    def recover(self, tasks: Mapping[str, int]) -> list[ClientUpdate]:
        return [
            update
            for (index, client), update in self.accepted.items()
            if tasks.get(client) == index
        ]

    def poll(
        self, timeout: float, deadline_s: float | None = None
    ) -> list[ClientUpdate | ClientFailure | UpdateRefused]:
        self._clock += 1
        if self._clock == self.crash_at:
            raise ServerKilled(f"the server is killed at poll {self._clock}")
        ready = [item for item in self._pending if item[0] <= self._clock]
        self._pending = [item for item in self._pending if item[0] > self._clock]
        replies: list[ClientUpdate | ClientFailure | UpdateRefused] = []
        for _, instruction, fails in ready:
            client = instruction.client_id
            if fails:
                replies.append(ClientFailure(instruction.round_index, client, "error", "failed"))
                continue
            update = ClientUpdate(
                instruction.round_index,
                client,
                np.full(TRAINER.spec.size, self.value[client], VECTOR_DTYPE),
                num_examples=10,
            )
            self.accepted[(instruction.round_index, client)] = update
            replies.extend([update, update] if client in self.redeliver else [update])
        return replies

    def release(self, round_index: int, client_id: str) -> None:
        self.accepted.pop((round_index, client_id), None)

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


def fedbuff(
    clients: Runtime,
    rounds: int,
    buffer_size: int,
    concurrency: int,
    *,
    aggregator: Aggregator | None = None,
    stages: Sequence[Stage] = (ValidateUpdate(TRAINER.spec.size),),
    privacy: UserLevelPrivacy | None = None,
    min_cohort: int = 1,
    run_dir: RunDirectory | None = None,
) -> FedBuffServer:
    return FedBuffServer(
        buffer_size=buffer_size,
        concurrency=concurrency,
        staleness_exponent=0.5,
        trainer=TRAINER,
        strategy=FedAvg(TrainConfig()),
        sampler=UniformSampler(1),
        pipeline=Pipeline(stages, aggregator or StreamingWeightedMean()),
        runtime=clients,
        client_ids=sorted(getattr(clients, "value", {"a": 0})),
        settings=ServerSettings(rounds=rounds, seed=0, min_cohort=min_cohort),
        privacy=privacy,
        run_dir=run_dir,
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


def test_a_client_whose_update_is_in_the_buffer_is_not_dispatched_again_until_it_is_released() -> (
    None
):
    # Buffer 0 takes a and b; x's update from version 0 opens buffer 1. Were x dispatched
    # again on version 1, its quick second update would land in buffer 1 beside its first.
    clients = ScriptedClients(
        value={"a": 1.0, "b": 1.0, "x": 1.0},
        polls={"a": [1, 10], "b": [1, 10], "x": [2, 1]},
    )
    mean = BufferRecordingMean()
    server = fedbuff(clients, rounds=2, buffer_size=2, concurrency=3, aggregator=mean)
    server.run()
    assert sorted(mean.buffers[0]) == ["a", "b"]
    assert mean.buffers[1][0] == "x" and mean.buffers[1][1] in {"a", "b"}
    assert (1, "x") not in clients.dispatched


def test_a_second_reply_of_a_client_already_in_the_buffer_waits_for_the_next_buffer() -> None:
    clients = ScriptedClients(
        value={"a": 1.0, "b": 1.0}, polls={"a": 1, "b": 3}, redeliver=frozenset({"a"})
    )
    mean = BufferRecordingMean()
    server = fedbuff(clients, rounds=3, buffer_size=2, concurrency=2, aggregator=mean)
    server.run()
    assert len(mean.buffers) == 3
    for buffer in mean.buffers:
        assert len(buffer) == len(set(buffer)) == 2


Z, CLIP, DELTA = 1.3, 1.0, 1e-5


def dp_fedbuff(
    clients: ScriptedClients, rounds: int, ledger_path: Path, noise: NoiseSource
) -> FedBuffServer:
    """FedBuff with user-level DP: server-side clipping to CLIP, Z * CLIP noise per release."""
    clip_norm = ClipNorm(CLIP)
    privacy = UserLevelPrivacy(
        PrivacyLedger(
            PrivacyBudget(50.0, DELTA),
            privacy_unit="client",
            neighboring="replace_one",
            path=ledger_path,
        ),
        noise_multiplier=Z,
        sampling=CohortSampling(len(clients.value), buffer_size=2),
        clip_norm=clip_norm,
    )
    aggregator = GaussianMean(
        noise_multiplier=Z, clip_norm=clip_norm, expected_cohort_size=2, noise=noise
    )
    return fedbuff(
        clients,
        rounds=rounds,
        buffer_size=2,
        concurrency=2,
        aggregator=aggregator,
        stages=[ValidateUpdate(TRAINER.spec.size), ClipUpdate(clip_norm, placement="server")],
        privacy=privacy,
        min_cohort=2,
    )


def test_fedbuff_dp_epsilon_is_dp_accountings_for_the_releases_it_actually_made(
    tmp_path: Path,
) -> None:
    # b's second task fails: buffer 1 gets only a's update, below min_cohort, and is not
    # released; buffers 0 and 2 are. Each release: clip, sum, one Gaussian draw, divide by 2.
    clients = ScriptedClients(value={"a": 3.0, "b": -0.01}, polls={"a": 1, "b": [1, None, 1]})
    server = dp_fedbuff(clients, 3, tmp_path / "ledger.json", NoiseSource.seeded(7, "noise"))
    start = server.vector.copy()
    server.run()
    assert [record.applied for record in server.history] == [True, False, True]

    twin = NoiseSource.seeded(7, "noise")
    size = TRAINER.spec.size
    clipped = sum(clip_to_norm(np.full(size, v, VECTOR_DTYPE), CLIP)[0] for v in (3.0, -0.01))
    expected = start.astype(np.float64)
    for _ in range(2):
        noisy = clipped.astype(VECTOR_DTYPE).astype(np.float64) + twin.gaussian(size, Z * CLIP)
        expected = expected + (noisy / 2).astype(VECTOR_DTYPE)
    np.testing.assert_allclose(server.vector, expected, rtol=1e-5, atol=1e-6)

    # The oracle: the releases the ledger file records, composed by dp-accounting itself.
    recorded = json.loads((tmp_path / "ledger.json").read_text())["entries"]
    assert [(e["round_index"], e["kind"]) for e in recorded] == [
        (0, "model_update"),
        (2, "model_update"),
    ]
    released: list[DpEvent] = []
    for entry in recorded:
        assert entry["event"] == {
            "type": "SelfComposedDpEvent",
            "event": {"type": "GaussianDpEvent", "noise_multiplier": Z},
            "count": 1,
        }
        released.append(dp_event.GaussianDpEvent(Z))
    oracle = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    oracle.compose(dp_event.ComposedDpEvent(released))
    assert server.privacy is not None
    assert server.privacy.epsilon() == pytest.approx(oracle.get_epsilon(DELTA), rel=1e-6)
    assert server.history[-1].epsilon == server.privacy.epsilon()


ASYNCHRONOUS_DP = {
    "rounds": 3,
    "data": {"source": "digits", "num_clients": 6},
    "runtime": {"kind": "grpc"},
    "asynchronous": {"enabled": True, "buffer_size": 4},
    "privacy": {"mechanism": "user_level", "epsilon": 4.0, "delta": 1e-5, "clip_norm": 0.5},
}


def test_fedbuff_with_user_level_dp_charges_unsampled_gaussians_calibrated_to_the_budget() -> None:
    config = RunConfig.from_mapping(ASYNCHRONOUS_DP)
    dataset = load_dataset(config.data, config.seed)
    privacy = build_privacy(config, dataset, TRAINER.spec.size, run_dir=None)
    assert isinstance(privacy, UserLevelPrivacy)
    assert privacy.sampling.expected_cohort_size == 4.0
    aggregator = build_pipeline(config, TRAINER, dataset, privacy).aggregator
    assert isinstance(aggregator, GaussianMean) and aggregator.adaptive is None
    assert aggregator.expected_cohort_size == 4.0 and aggregator.clip_norm is privacy.clip_norm
    assert privacy.ledger.neighboring == "replace_one"
    assert [event for _, event in privacy.round_releases()] == [
        dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(privacy.noise_multiplier), 1)
    ]
    assert sampling_secrecy(config)["secret"].startswith("nothing: FedBuff's releases")
    assert "amplification_holds_against" not in sampling_secrecy(config)
    oracle = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    oracle.compose(dp_event.GaussianDpEvent(privacy.noise_multiplier), config.rounds)
    assert oracle.get_epsilon(1e-5) == pytest.approx(4.0, rel=1e-2)
    assert oracle.get_epsilon(1e-5) <= 4.0 * (1 + 1e-4)


def test_adaptive_clipping_with_fedbuff_is_refused_with_the_reason() -> None:
    values = {
        **ASYNCHRONOUS_DP,
        "privacy": {**ASYNCHRONOUS_DP["privacy"], "adaptive_clipping": True},
    }
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_mapping(values)
    assert "privacy.adaptive_clipping must be false" in str(refused.value)
    assert "Andrew et al. 2021" in str(refused.value)


def test_local_dp_with_fedbuff_is_refused_with_the_reason() -> None:
    values = {
        **ASYNCHRONOUS_DP,
        "privacy": {"mechanism": "local", "epsilon": 4.0, "noise_multiplier": 1.0},
    }
    with pytest.raises(ConfigError, match="'local' is not accounted for buffered releases"):
        RunConfig.from_mapping(values)


def buffer_secure_sum(buffer_size: int, noise: NoiseSource, **parameters: int) -> BufferSecureSum:
    secure_sum = SecureSum(
        SecAggParameters(**parameters), clip_norm=1.0, noise=noise, weighting="uniform"
    )
    return BufferSecureSum(secure_sum, buffer_size)


def test_secagg_over_a_buffer_unmasks_the_exact_sum_of_its_clipped_quantized_updates() -> None:
    values = {"a": 2.0, "b": -0.1, "c": 0.3, "d": -3.0, "e": 0.05}
    clients = ScriptedClients(value=values, polls=dict.fromkeys(values, 1))
    aggregator = buffer_secure_sum(5, NoiseSource.seeded(3, "encoding"))
    server = fedbuff(
        clients, rounds=1, buffer_size=5, concurrency=5, aggregator=aggregator, stages=[]
    )
    start = server.vector.copy()
    server.run()
    assert server.history[0].applied and server.history[0].participants == 5

    # The oracle: each client's encoding (clip to C = 1, stochastic rounding from the same
    # seeded stream, in arrival order) summed in the ring, then decoded.
    ring = RingEncoder.finest(1.0, 5, 32, "uniform", 1)
    twin = NoiseSource.seeded(3, "encoding")
    arrival = [client for _, client in clients.dispatched]
    encoded = [
        ring.encode(np.full(TRAINER.spec.size, values[c], VECTOR_DTYPE), twin, 1).astype(np.uint64)
        for c in arrival
    ]
    decoded = ring.decode(np.sum(encoded, axis=0) % np.uint64(2**32))
    assert decoded.weight == 5
    mean = (decoded.total / decoded.weight).astype(VECTOR_DTYPE)
    np.testing.assert_array_equal(server.vector, start + mean)
    clipped = sum(
        clip_to_norm(np.full(TRAINER.spec.size, v, VECTOR_DTYPE), 1.0)[0] for v in values.values()
    )
    # ... which is the sum of the clipped updates up to the rounding bound (and float32 ulps).
    np.testing.assert_allclose(decoded.total, clipped, rtol=0, atol=ring.sum_error_bound(5) + 1e-6)


@pytest.mark.parametrize(
    ("buffer_size", "parameters", "reason"),
    [
        (1, {}, "needs a cohort of 2"),
        (3, {"threshold": 4}, r"threshold=4 must satisfy \(k \+ 1 \+ c\) / 2 < t <= k \+ 1"),
    ],
)
def test_secagg_over_a_buffer_too_small_for_its_threshold_is_refused_with_the_rule(
    buffer_size: int, parameters: dict[str, int], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason) as refused:
        buffer_secure_sum(buffer_size, NoiseSource.secure(), **parameters)
    assert f"FedBuff's buffers of {buffer_size} update(s)" in str(refused.value)


def test_a_buffer_released_below_the_secagg_threshold_is_aborted_and_the_model_unchanged() -> None:
    # A buffer of 5 has t = 3; three clients fail, so only two updates reach it.
    values = dict.fromkeys("abcde", 0.5)
    polls: dict[str, int | list[int | None]] = {
        "a": 1,
        "b": 1,
        "c": [None],
        "d": [None],
        "e": [None],
    }
    clients = ScriptedClients(value=values, polls=polls)
    aggregator = buffer_secure_sum(5, NoiseSource.secure())
    server = fedbuff(
        clients, rounds=1, buffer_size=5, concurrency=5, aggregator=aggregator, stages=[]
    )
    start = server.vector.copy()
    server.run()
    record = server.history[0]
    assert not record.applied and record.participants == 2
    assert "fewer than the threshold t=3" in record.note
    np.testing.assert_array_equal(server.vector, start)


def test_after_a_restart_mid_buffer_the_open_tasks_are_resumed_not_dispatched_afresh(
    tmp_path: Path,
) -> None:
    # Buffer 0 takes a and b while s trains on version 0. Buffer 1 opens with a and b
    # dispatched on version 1; the server is killed before any of the three replies.
    clients = ScriptedClients(
        value={"a": 1.0, "b": 3.0, "s": 4.0},
        polls={"a": [1, 3], "b": [1, 10], "s": [5]},
        crash_at=3,
    )
    run_dir = RunDirectory(tmp_path)
    start = fedbuff(clients, rounds=2, buffer_size=2, concurrency=3).vector.copy()
    with pytest.raises(ServerKilled):
        fedbuff(clients, rounds=2, buffer_size=2, concurrency=3, run_dir=run_dir).run()
    assert run_dir.read_open_tasks() == OpenTasks(1, {"a": 1, "b": 1, "s": 0})
    dispatched_before = list(clients.dispatched)

    clients.crash_at = None
    restarted = fedbuff(clients, rounds=2, buffer_size=2, concurrency=3, run_dir=run_dir)
    checkpoint = run_dir.load_checkpoint()
    assert checkpoint is not None and checkpoint.round_index == 0
    restarted.restore(checkpoint)
    restarted.run()

    # The same three tasks are taken up on their own versions; none is sent afresh before
    # buffer 1 is released with a's update (version 1) and s's (version 0, staleness 1).
    assert clients.resumed == [(1, "a"), (1, "b"), (0, "s")]
    assert clients.dispatched == dispatched_before
    assert [record.participants for record in restarted.history] == [2, 2]
    expected = start + (1.0 + 3.0) / 2 + (1.0 + 4.0 * staleness_weight(1, 0.5)) / 2
    np.testing.assert_allclose(restarted.vector, expected, rtol=1e-6)


def test_a_reply_that_reached_the_server_before_a_crash_enters_the_first_buffer_after_it(
    tmp_path: Path,
) -> None:
    # a's update is in buffer 0 when the server dies before b's arrives; no buffer was
    # released, so the restart begins from scratch with what the run directory recorded.
    clients = ScriptedClients(
        value={"a": 1.0, "b": 3.0}, polls={"a": [1, 1], "b": [2, 1]}, crash_at=2
    )
    run_dir = RunDirectory(tmp_path)
    with pytest.raises(ServerKilled):
        fedbuff(clients, rounds=1, buffer_size=2, concurrency=2, run_dir=run_dir).run()
    assert run_dir.load_checkpoint() is None
    assert run_dir.read_open_tasks() == OpenTasks(0, {"a": 0, "b": 0})
    assert list(clients.accepted) == [(0, "a")]

    clients.crash_at = None
    mean = BufferRecordingMean()
    restarted = fedbuff(
        clients, rounds=1, buffer_size=2, concurrency=2, aggregator=mean, run_dir=run_dir
    )
    start = restarted.vector.copy()
    restarted.run()

    # a is not asked again: its update is read back; b's task is resumed on version 0.
    assert clients.dispatched == [(0, "a"), (0, "b")]
    assert clients.resumed == [(0, "b")]
    assert mean.buffers == [["a", "b"]]
    np.testing.assert_allclose(restarted.vector, start + (1.0 + 3.0) / 2, rtol=1e-6)
    assert clients.accepted == {}


class KilledAfterCheckpoint(RoundListener):
    """A listener that kills the server right after a round is checkpointed."""

    def round_completed(self, record: RoundRecord, silent_clients: Sequence[str]) -> None:
        raise ServerKilled(f"the server is killed after checkpointing round {record.round_index}")


def test_a_buffer_checkpointed_before_a_crash_is_never_applied_again(tmp_path: Path) -> None:
    # Buffer 0 (a and b) is released and checkpointed; the server dies before the spooled
    # copies of its updates are released, so the runtime still holds them.
    clients = ScriptedClients(value={"a": 1.0, "b": 3.0}, polls={"a": 1, "b": 1})
    run_dir = RunDirectory(tmp_path)
    server = fedbuff(clients, rounds=2, buffer_size=2, concurrency=2, run_dir=run_dir)
    start = server.vector.copy()
    server.listeners.append(KilledAfterCheckpoint())
    with pytest.raises(ServerKilled):
        server.run()
    assert sorted(clients.accepted) == [(0, "a"), (0, "b")]

    mean = BufferRecordingMean()
    restarted = fedbuff(
        clients, rounds=2, buffer_size=2, concurrency=2, aggregator=mean, run_dir=run_dir
    )
    checkpoint = run_dir.load_checkpoint()
    assert checkpoint is not None and checkpoint.round_index == 0
    restarted.restore(checkpoint)
    restarted.run()

    # Buffer 1 holds the updates a and b trained on version 1, not their applied ones again.
    assert clients.resumed == []
    assert clients.dispatched == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert mean.buffers == [["a", "b"]]
    np.testing.assert_allclose(restarted.vector, start + 2 * (1.0 + 3.0) / 2, rtol=1e-6)
    assert clients.accepted == {}
