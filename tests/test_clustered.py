"""Clustered federated learning: clients grouped by update direction, one model per group."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fakes import RecordingRuntime, ScriptedTrainer
from fedwarden.build.run import run as run_config
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.core.messages import FitInstruction, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.core.records import RoundRecord
from fedwarden.data import FederatedDataset
from fedwarden.data.dataset import ClientData
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.secure import SecureSum
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.runtime import ClientEngine, LocalRuntime, Runtime, Workload
from fedwarden.secure.secagg import SecAggParameters
from fedwarden.server import CentralTestSet, RunDirectory, Server, ServerSettings
from fedwarden.server.clustered import (
    ClusteredTraining,
    ServerFactory,
    cluster_by_update_similarity,
)
from fedwarden.strategies import FedAvg, UniformSampler

TRAIN = TrainConfig(local_epochs=2, batch_size=16, learning_rate=0.5)
URBAN = ("urban-0", "urban-1", "urban-2", "urban-3")
RURAL = ("rural-0", "rural-1", "rural-2", "rural-3")


def _unit(*coordinates: float) -> np.ndarray:
    vector = np.zeros(8)
    vector[: len(coordinates)] = coordinates
    return vector


# --- the clustering rule -------------------------------------------------------------------


def test_scaled_copies_share_a_cluster_and_opposite_directions_separate() -> None:
    updates = {
        "a": _unit(1.0, 0.0),
        "b": _unit(5.0, 0.0),
        "c": _unit(-1.0, 0.0),
        "d": _unit(-0.2, 0.0),
    }
    clusters = cluster_by_update_similarity(
        updates, max_clusters=4, min_cluster_size=1, distance_threshold=0.5
    )
    assert clusters == [("a", "b"), ("c", "d")]


# "a" = e1, "b" at cosine 0.8 from it (distance 0.2), "c" = e3 (distance 1 from both):
# average linkage joins a and b at 0.2, then {a, b} and c at 1.0.
ANGLES = {"a": _unit(1.0, 0.0, 0.0), "b": _unit(0.8, 0.6, 0.0), "c": _unit(0.0, 0.0, 1.0)}


@pytest.mark.parametrize(
    ("threshold", "max_clusters", "expected"),
    [
        (0.19, 3, [("a",), ("b",), ("c",)]),
        (0.21, 3, [("a", "b"), ("c",)]),
        (0.99, 3, [("a", "b"), ("c",)]),
        (1.01, 3, [("a", "b", "c")]),
        (0.19, 2, [("a", "b"), ("c",)]),
        (None, 3, [("a",), ("b",), ("c",)]),
        (None, 2, [("a", "b"), ("c",)]),
        (None, 1, [("a", "b", "c")]),
    ],
)
def test_the_tree_is_cut_at_the_threshold_and_never_into_more_than_max_clusters(
    threshold: float | None, max_clusters: int, expected: list[tuple[str, ...]]
) -> None:
    clusters = cluster_by_update_similarity(
        ANGLES, max_clusters=max_clusters, min_cluster_size=1, distance_threshold=threshold
    )
    assert clusters == expected


@pytest.mark.parametrize(
    ("stray", "joins"),
    [(_unit(0.0, 0.3, 1.0), "y"), (_unit(0.3, 0.0, 1.0), "x")],
)
def test_a_cluster_below_the_minimum_size_joins_the_cluster_with_the_nearest_centroid(
    stray: np.ndarray, joins: str
) -> None:
    rng = np.random.default_rng(0)
    updates = {"a-stray": stray}
    for index in range(3):
        updates[f"x{index}"] = _unit(1.0, 0.0, 0.0) + rng.normal(0, 0.01, 8)
        updates[f"y{index}"] = _unit(0.0, 1.0, 0.0) + rng.normal(0, 0.01, 8)
    x_group, y_group = ("x0", "x1", "x2"), ("y0", "y1", "y2")
    alone = cluster_by_update_similarity(updates, max_clusters=3, min_cluster_size=1)
    assert alone == [("a-stray",), x_group, y_group]
    merged = cluster_by_update_similarity(updates, max_clusters=3, min_cluster_size=2)
    expected = (
        [("a-stray", *x_group), y_group] if joins == "x" else [x_group, ("a-stray", *y_group)]
    )
    assert merged == sorted(expected)


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 4), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_updates_around_orthogonal_directions_are_recovered_whatever_their_order(
    sizes: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    groups: list[list[str]] = []
    updates: dict[str, np.ndarray] = {}
    names = iter(rng.permutation(sum(sizes)))
    for direction, size in enumerate(sizes):
        members = [f"client-{next(names):02d}" for _ in range(size)]
        for member in members:
            base = np.zeros(8)
            base[direction] = rng.uniform(0.1, 10.0)
            updates[member] = base + rng.normal(0.0, 0.02 * base[direction], 8)
        groups.append(sorted(members))
    expected = sorted(tuple(group) for group in groups)
    shuffled = {cid: updates[cid] for cid in rng.permutation(list(updates))}
    for given_order in (updates, shuffled):
        clusters = cluster_by_update_similarity(
            given_order, max_clusters=len(sizes) + 2, distance_threshold=0.5
        )
        assert clusters == expected


@settings(max_examples=25, deadline=None)
@given(
    count=st.integers(1, 12),
    max_clusters=st.integers(1, 6),
    min_cluster_size=st.integers(1, 5),
    threshold=st.none() | st.floats(0.0, 2.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_clusters_partition_the_clients_in_the_documented_order_and_sizes(
    count: int, max_clusters: int, min_cluster_size: int, threshold: float | None, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    updates = {f"c{index}": rng.normal(size=6) for index in range(count)}
    clusters = cluster_by_update_similarity(
        updates,
        max_clusters=max_clusters,
        min_cluster_size=min_cluster_size,
        distance_threshold=threshold,
    )
    members = [cid for cluster in clusters for cid in cluster]
    assert sorted(members) == sorted(updates)
    assert len(members) == len(set(members))
    assert all(list(cluster) == sorted(cluster) for cluster in clusters)
    assert [cluster[0] for cluster in clusters] == sorted(cluster[0] for cluster in clusters)
    assert 1 <= len(clusters) <= max_clusters
    if len(clusters) > 1:
        assert min(len(cluster) for cluster in clusters) >= min_cluster_size


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"max_clusters": 0}, "max_clusters=0"),
        ({"max_clusters": 2, "min_cluster_size": 0}, "min_cluster_size=0"),
        ({"max_clusters": 2, "distance_threshold": 2.5}, "lies in \\[0, 2\\]"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(
    settings_: dict[str, float], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cluster_by_update_similarity({"a": _unit(1.0)}, **settings_)  # type: ignore[arg-type]


def test_updates_without_a_direction_or_of_unequal_length_are_refused() -> None:
    with pytest.raises(UpdateRejected, match="'idle'"):
        cluster_by_update_similarity({"a": _unit(1.0), "idle": _unit()}, max_clusters=2)
    with pytest.raises(ConfigError, match="one length"):
        cluster_by_update_similarity({"a": _unit(1.0), "b": np.ones(3)}, max_clusters=2)
    with pytest.raises(ConfigError, match="nothing to group"):
        cluster_by_update_similarity({}, max_clusters=2)


# --- the procedure: warm-up, probe, one model per cluster ---------------------------------


@pytest.fixture(scope="module")
def urban_and_rural() -> FederatedDataset:
    """Digits over 8 hospitals; rural ones write label y as (y + 5) % 10, so the groups conflict."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    order = np.random.default_rng(0).permutation(len(y))
    test, parts = order[:360], np.array_split(order[360:], 8)
    clients = {}
    for index, part in enumerate(parts):
        rural = index % 2 == 1
        labels = (y[part] + 5) % 10 if rural else y[part]
        cid = (RURAL if rural else URBAN)[index // 2]
        clients[cid] = ClientData(cid, x[part[:140]], labels[:140], x[part[140:]], labels[140:])
    return FederatedDataset("digits-urban-rural", clients, x[test], y[test], 64, 10)


def _server_factory(
    runtime: Runtime, trainer: ScriptedTrainer, dataset: FederatedDataset
) -> ServerFactory:
    """A FedAvg server over the started ``runtime``, as build_server would build one per cluster."""

    def make_server(
        client_ids: Sequence[str],
        initial_vector: Vector,
        rounds: int,
        run_dir: RunDirectory | None = None,
    ) -> Server:
        server = Server(
            trainer=trainer,
            strategy=FedAvg(TRAIN),
            sampler=UniformSampler(len(client_ids)),
            pipeline=Pipeline([ValidateUpdate(trainer.spec.size)], StreamingWeightedMean()),
            runtime=runtime,
            client_ids=client_ids,
            settings=ServerSettings(rounds=rounds, seed=0),
            central_test=CentralTestSet(dataset.x_test, dataset.y_test),
            run_dir=run_dir,
        )
        server.vector = initial_vector
        return server

    return make_server


def _warmup_server(
    dataset: FederatedDataset, trainer: ScriptedTrainer, runtime: Runtime, rounds: int
) -> Server:
    """The global server over every client; the runtime is started once, with every client."""
    server = _server_factory(runtime, trainer, dataset)(
        dataset.client_ids, trainer.initial_vector(0), rounds
    )
    runtime.start(Workload(dataset, trainer, server.pipeline.stages, 0))
    return server


def test_one_probing_round_separates_urban_from_rural_and_each_cluster_beats_the_global_model(
    urban_and_rural: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer()
    runtime = RecordingRuntime()
    warmup = _warmup_server(urban_and_rural, trainer, runtime, rounds=1)
    procedure = ClusteredTraining(
        _server_factory(runtime, trainer, urban_and_rural),
        cluster_rounds=3,
        max_clusters=4,
        distance_threshold=0.5,
    )
    result = procedure.run(warmup)

    assert result.clusters == (RURAL, URBAN)
    summary = json.loads(json.dumps(result.to_json()))
    assert summary["clusters"] == [list(RURAL), list(URBAN)]
    assert summary["clustered_client_metrics"] == pytest.approx(result.clustered_metrics)
    assert result.probe.round_index == 1
    assert (result.probe.participants, result.probe.applied) == (8, False)
    probed = [i.client_id for i in runtime.delivered if i.round_index == 1]
    assert sorted(probed) == sorted(urban_and_rural.client_ids)
    fits = Counter((i.round_index, i.client_id) for i in runtime.delivered)
    assert fits == Counter({(r, cid): 1 for r in range(5) for cid in urban_and_rural.client_ids})
    assert [len(run.history) for run in result.cluster_results] == [5, 5]
    assert result.warmup.client_accuracy == pytest.approx(result.global_metrics["accuracy"])

    global_run = _warmup_server(urban_and_rural, trainer, RecordingRuntime(), rounds=5).run()
    assert global_run.client_accuracy is not None
    clustered = result.clustered_metrics["accuracy"]
    # Measured: clustered 0.92, global after the same 5 rounds 0.40 (it cannot fit both labelings).
    assert clustered >= global_run.client_accuracy + 0.35
    assert clustered >= result.global_metrics["accuracy"] + 0.35
    for cid in urban_and_rural.client_ids:
        mine = result.clustered_evaluations[cid].metrics["accuracy"]
        assert mine > result.global_evaluations[cid].metrics["accuracy"]


def test_each_cluster_continues_from_the_warmup_model_with_its_own_clients_only(
    urban_and_rural: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer()
    runtime = RecordingRuntime()
    warmup = _warmup_server(urban_and_rural, trainer, runtime, rounds=1)
    procedure = ClusteredTraining(
        _server_factory(runtime, trainer, urban_and_rural), cluster_rounds=1, max_clusters=2
    )
    result = procedure.run(warmup)

    engine = ClientEngine(Workload(urban_and_rural, trainer, (), 0))
    for cluster, run in zip(result.clusters, result.cluster_results, strict=True):
        replies = [engine.fit(warmup.vector, FitInstruction(2, cid, TRAIN)) for cid in cluster]
        expected = warmup.vector + np.average(
            [reply.update for reply in replies],
            axis=0,
            weights=[reply.num_examples for reply in replies],
        )
        central = trainer.evaluate(expected, urban_and_rural.x_test, urban_and_rural.y_test)
        assert (run.loss, run.accuracy) == pytest.approx((central["loss"], central["accuracy"]))
        assert [record.round_index for record in run.history] == [0, 1, 2]


@pytest.mark.slow
def test_a_client_without_a_probing_update_joins_the_largest_cluster(
    urban_and_rural: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer(error=frozenset({"urban-0"}), rounds=frozenset({1}))
    with LocalRuntime(workers=2) as runtime:
        warmup = _warmup_server(urban_and_rural, trainer, runtime, rounds=1)
        procedure = ClusteredTraining(
            _server_factory(runtime, trainer, urban_and_rural),
            cluster_rounds=1,
            max_clusters=4,
            distance_threshold=0.5,
        )
        result = procedure.run(warmup)

    assert (result.probe.failed, result.probe.participants) == (1, 7)
    assert result.clusters == ((*RURAL, "urban-0"), URBAN[1:])


def test_clustering_is_refused_before_training_under_secure_aggregation_or_central_dp(
    urban_and_rural: FederatedDataset,
) -> None:
    trainer = ScriptedTrainer()
    runtime = RecordingRuntime()
    procedure = ClusteredTraining(
        _server_factory(runtime, trainer, urban_and_rural), cluster_rounds=1, max_clusters=2
    )
    secure = _warmup_server(urban_and_rural, trainer, runtime, rounds=1)
    secure.pipeline = Pipeline(
        [], SecureSum(SecAggParameters(), clip_norm=1.0, noise=NoiseSource.secure())
    )
    with pytest.raises(ConfigError, match="secure_sum hides individual updates"):
        procedure.run(secure)
    private = _warmup_server(urban_and_rural, trainer, runtime, rounds=1)
    private.privacy = object()  # type: ignore[assignment]  # any central DP accounting
    with pytest.raises(ConfigError, match="privacy accountant does not cover"):
        procedure.run(private)
    assert runtime.delivered == []
    with pytest.raises(ConfigError, match="cluster_rounds=0"):
        ClusteredTraining(procedure.make_server, cluster_rounds=0, max_clusters=2).run(private)


class Crash(Exception):
    """The simulated crash of a clustered run's process."""


class CrashAt:
    """A round observer that records the rounds finished and crashes after ``round_index``."""

    def __init__(self, round_index: int | None) -> None:
        self.round_index = round_index
        self.finished: list[int] = []

    def round_started(self, round_index: int, cohort_size: int) -> None:
        """Nothing to draw."""

    def client_finished(self, round_index: int) -> None:
        """Nothing to draw."""

    def round_finished(self, record: RoundRecord) -> None:
        """Crash after the round's checkpoint, as a killed process would."""
        self.finished.append(record.round_index)
        if record.round_index == self.round_index:
            raise Crash(f"crashed after round {record.round_index}")


def _clustered_config(runs_dir: Path) -> RunConfig:
    """Two populations of digits clients (half relabel y -> y + 1), clustered after a warm-up."""
    return RunConfig.from_mapping(
        {
            "name": "clustered",
            "seed": 4,
            "rounds": 6,
            "runs_dir": str(runs_dir),
            "data": {"source": "digits", "num_clients": 8},
            "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.5},
            "sampling": {"cohort_size": 3},
            "attack": {"kind": "label_flip", "malicious_fraction": 0.5},
            "clustering": {"enabled": True, "warmup_rounds": 2, "distance_threshold": 0.5},
            "runtime": {"workers": 1},
        }
    )


def _round_figures(history: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each round's figures (metrics.json), without its wall-clock time."""
    return [
        tuple(value for key, value in record.items() if key != "round_seconds")
        for record in history
    ]


@pytest.mark.slow
def test_a_clustered_run_interrupted_three_times_resumes_bit_for_bit(tmp_path: Path) -> None:
    uninterrupted = run_config(_clustered_config(tmp_path / "straight"))
    config = _clustered_config(tmp_path / "interrupted")
    # Crashes: in the warm-up (round 0), in the first cluster (round 4), then in the second
    # cluster's first round (the first round 3 of that resume: the first cluster had 5 left).
    crashes = [CrashAt(0), CrashAt(4), CrashAt(3)]
    with pytest.raises(Crash):
        run_config(config, observer=crashes[0])
    (run_dir,) = (tmp_path / "interrupted").iterdir()
    for crash in crashes[1:]:
        with pytest.raises(Crash):
            run_config(config, resume=run_dir, observer=crash)
        probed = (run_dir / "clustering.json").stat().st_mtime_ns
    last = CrashAt(None)
    resumed = run_config(config, resume=run_dir, observer=last)
    # Every round ran once: each resume continued after the last checkpoint (round 2 is the
    # probe, run once and kept in clustering.json; rounds 3-5 are each cluster's).
    assert crashes[1].finished == [1, 3, 4]
    assert crashes[2].finished == [5, 3]
    assert (run_dir / "clustering.json").stat().st_mtime_ns == probed

    straight_dir = Path(str(uninterrupted.run_dir))
    straight_clusters = json.loads((straight_dir / "clustering.json").read_text())
    assert (
        json.loads((run_dir / "clustering.json").read_text())["clusters"]
        == (straight_clusters["clusters"])
    )
    count = len(straight_clusters["clusters"])
    assert count >= 2
    assert last.finished == [4, 5, *[3, 4, 5] * (count - 2)]
    for index in range(count):
        for name in ("model.npz", "checkpoint.npz"):
            assert (straight_dir / "clusters" / str(index) / name).is_file()
        with (
            np.load(straight_dir / "clusters" / str(index) / "model.npz") as expected,
            np.load(run_dir / "clusters" / str(index) / "model.npz") as actual,
        ):
            assert sorted(expected.files) == sorted(actual.files)
            for name in expected.files:
                assert np.array_equal(expected[name], actual[name]), (index, name)
    straight, after = uninterrupted.extras["clustering"], resumed.extras["clustering"]
    assert after["clustered_client_metrics"] == straight["clustered_client_metrics"]
    assert after["global_client_metrics"] == straight["global_client_metrics"]
    for folder in ["", *(f"clusters/{index}" for index in range(count))]:
        expected_rounds = json.loads((straight_dir / folder / "metrics.json").read_text())
        rounds = json.loads((run_dir / folder / "metrics.json").read_text())
        assert _round_figures(rounds) == _round_figures(expected_rounds), folder
        assert len(rounds) == (2 if folder == "" else 6)
    assert resumed.accuracy == uninterrupted.accuracy
