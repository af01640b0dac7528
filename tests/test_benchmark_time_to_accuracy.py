"""The time-to-accuracy benchmark reads its answer off the accuracy history it recorded.

fedwarden's side of ``benchmarks.time_to_accuracy`` at a tiny size: the history
scores the model the server ends with (it agrees with fedwarden's own
evaluation), and the rounds and seconds to a target are those of the first
round in the history at or above it. No wall-clock value is asserted.
"""

from __future__ import annotations

import importlib
from itertools import pairwise
from pathlib import Path
from types import ModuleType

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture
def time_to_accuracy(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The benchmark module, importable from the repository root as ``python -m`` runs it."""
    monkeypatch.syspath_prepend(str(REPOSITORY))
    return importlib.import_module("benchmarks.time_to_accuracy")


@pytest.mark.slow
def test_rounds_to_target_is_the_first_round_of_the_history_that_reaches_it(
    time_to_accuracy: ModuleType,
) -> None:
    throughput = importlib.import_module("benchmarks.throughput")
    workload = importlib.import_module("benchmarks.peers._workload")
    from fedwarden.models.numpy import softmax_regression

    dataset, _, x_test, y_test = throughput.synthetic_workload(20, seed=0)
    trace = workload.AccuracyTrace(x_test, y_test)
    result = throughput.run_fedwarden(
        dataset,
        softmax_regression(60, 10),
        time_to_accuracy.OURS,
        rounds=4,
        cohort_size=10,
        lr=0.05,
        seed=0,
        trace=trace,
    )
    history = trace.rounds
    assert [entry.round_number for entry in history] == [0, 1, 2, 3, 4]
    assert history[-1].accuracy == pytest.approx(result["accuracy"], abs=1e-12)
    assert all(a.seconds <= b.seconds for a, b in pairwise(history))

    best = max(entry.accuracy for entry in history)
    assert best > history[0].accuracy, "the tiny run must learn for the check to mean anything"
    first_best = next(entry for entry in history if entry.accuracy == best)
    row = time_to_accuracy.time_to_accuracy_row(result, trace, best)
    assert row["rounds_to_target"] == first_best.round_number
    assert all(entry.accuracy < best for entry in history[: first_best.round_number])
    assert row["seconds_to_target"] == first_best.seconds
    assert row["training_seconds_to_target"] == first_best.seconds - history[0].seconds
    assert row["start_up_s"] == history[0].seconds
    assert row["final_accuracy"] == history[-1].accuracy

    unreached = time_to_accuracy.time_to_accuracy_row(result, trace, best + 1e-6)
    assert unreached["rounds_to_target"] is None
    assert unreached["seconds_to_target"] is None

    from_the_start = time_to_accuracy.time_to_accuracy_row(result, trace, history[0].accuracy)
    assert from_the_start["rounds_to_target"] == 0
    assert from_the_start["training_seconds_to_target"] == 0.0


def test_a_frameworks_summary_is_the_median_of_its_seeds_and_unreached_when_the_median_run_was(
    time_to_accuracy: ModuleType,
) -> None:
    def run(seconds: float | None, start_up: float, accuracy: float) -> dict[str, object]:
        return {
            "framework": "peer",
            "rounds_to_target": None if seconds is None else round(seconds),
            "seconds_to_target": seconds,
            "training_seconds_to_target": None if seconds is None else seconds - start_up,
            "start_up_s": start_up,
            "median_round_s": 0.5,
            "final_accuracy": accuracy,
            "wall_s": 9.0,
        }

    two_of_three = time_to_accuracy.median_row(
        [run(4.0, 1.0, 0.6), run(None, 2.0, 0.4), run(2.0, 0.5, 0.5)]
    )
    assert two_of_three == {
        "framework": "peer",
        "seeds": 3,
        "rounds_to_target": 4,
        "seconds_to_target": 4.0,
        "training_seconds_to_target": 3.0,
        "start_up_s": 1.0,
        "median_round_s": 0.5,
        "final_accuracy": 0.5,
        "wall_s": 9.0,
    }
    one_of_three = time_to_accuracy.median_row(
        [run(None, 1.0, 0.6), run(None, 2.0, 0.4), run(2.0, 0.5, 0.5)]
    )
    assert one_of_three["seconds_to_target"] is None
    assert one_of_three["rounds_to_target"] is None
    assert one_of_three["training_seconds_to_target"] is None


def test_speed_up_is_the_peers_seconds_over_fedwardens_and_none_when_a_side_never_reached(
    time_to_accuracy: ModuleType,
) -> None:
    ours = {
        "framework": time_to_accuracy.OURS,
        "seconds_to_target": 2.0,
        "training_seconds_to_target": 0.5,
        "median_round_s": 0.1,
    }
    slower = {
        "framework": "peer",
        "seconds_to_target": 30.0,
        "training_seconds_to_target": 10.0,
        "median_round_s": 0.5,
    }
    never = {
        "framework": "late",
        "seconds_to_target": None,
        "training_seconds_to_target": None,
        "median_round_s": 0.2,
    }
    assert time_to_accuracy.speed_ups([ours, slower, never]) == {
        "peer": {
            "seconds_to_target": 15.0,
            "training_seconds_to_target": 20.0,
            "median_round_s": pytest.approx(5.0),
        },
        "late": {
            "seconds_to_target": None,
            "training_seconds_to_target": None,
            "median_round_s": pytest.approx(2.0),
        },
    }
