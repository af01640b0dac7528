"""Time to accuracy: wall seconds until the global model first reaches a target accuracy.

Throughput bought with slower learning is no lead, so this is the headline
comparison: fedwarden, Flower and pfl-research train the throughput
benchmark's workload (:mod:`benchmarks.throughput`: FedProx Synthetic(1, 1)
with lognormal client sizes, softmax regression 60 -> 10, one local epoch of
SGD with batch 10, FedAvg, the same client arrays and initial weights) for the
same number of rounds, and each scores its global model on the same central
test set with the same function (:func:`benchmarks.peers._workload.central_accuracy`)
before the first round and after every round, through its own hook: the
fedwarden server loop, Flower's ``evaluate_fn``, a pfl training-process
callback. The clock stops while the model is scored
(:class:`benchmarks.peers._workload.AccuracyTrace`).

fedwarden's headline row trains in process (its ``inprocess`` runtime, as pfl
does); ``fedwarden (NumPy, local)`` trains the same on two worker processes
(the ``local`` runtime), and ``fedwarden (PyTorch)`` the same model as a
PyTorch linear layer, in process. ``--skip`` takes ``local``, ``torch``,
``flwr`` and ``pfl``.

Per framework: the first round whose accuracy reaches the target; the wall
seconds to it from the framework's start (start-up included: the headline);
the start-up alone, until the hook first sees the initial model (fedwarden:
its runtime started; pfl: its backend built; Flower: its ServerApp
started, while Ray and its actors start beside it and land in round 1, which
this hook cannot separate); the seconds to the target without that start-up;
the median seconds of one round from round 2 on (steady state, free of every
framework's start-up); and the accuracy after the last round. Speed-ups are
the peer's figure over fedwarden's for each of the three times; all
frameworks reach the same target, so they compare time at equal accuracy.

Which clients the first cohorts hold moves early accuracy a lot, so rounds
to a target differ from seed to seed for every framework alike; the workload
runs once per seed in ``--seeds`` (the seed draws the population, the initial
model, the cohorts and every shuffle), and each figure of a framework's row is
its median over the seeds (a time to target counts as never reached when the
median run did not reach it). The speed-ups are those of the median rows; each
seed's rows and speed-ups are kept in the JSON output.

Run: ``python -m benchmarks.time_to_accuracy`` (in ``.venv-bench`` for the
peers), which runs N = 100 with 50% cohorts and N = 1,000 with 20% cohorts,
seeds 0, 1 and 2; ``--clients``, ``--cohort`` and ``--target`` take one value
per workload.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict
from functools import partial
from itertools import pairwise
from math import inf, isinf
from typing import Any

from benchmarks.peers._workload import AccuracyTrace, PeerResult, RoundAccuracy
from benchmarks.throughput import (
    cohort_of,
    peers,
    run_fedwarden,
    synthetic_workload,
    torch_linear_trainer,
)
from fedwarden.core.errors import ConfigError
from fedwarden.models.numpy import softmax_regression
from fedwarden.runtime import InProcessRuntime, LocalRuntime

OURS = "fedwarden (NumPy)"
"""The row every speed-up is measured against."""

SPEED_UP_KEYS = ("seconds_to_target", "training_seconds_to_target", "median_round_s")
"""The times a speed-up is given for: to the target, the same without start-up, per round."""

TO_TARGET_KEYS = ("rounds_to_target", "seconds_to_target", "training_seconds_to_target")
"""A row's figures that are None when the run never reached the target."""

MEDIAN_KEYS = (*TO_TARGET_KEYS, "start_up_s", "median_round_s", "final_accuracy", "wall_s")
"""A row's figures a framework's summary gives as the median over the seeds."""


def first_reaching(history: Sequence[RoundAccuracy], target: float) -> RoundAccuracy | None:
    """Return the first entry of ``history`` whose accuracy is at least ``target``, if any."""
    return next((entry for entry in history if entry.accuracy >= target), None)


def time_to_accuracy_row(result: PeerResult, trace: AccuracyTrace, target: float) -> dict[str, Any]:
    """Summarise one framework's run: when it reached ``target`` and where it ended."""
    reached = first_reaching(trace.rounds, target)
    start_up = trace.rounds[0].seconds
    round_seconds = [
        later.seconds - earlier.seconds for earlier, later in pairwise(trace.rounds[1:])
    ]
    return {
        "framework": result["framework"],
        "rounds_to_target": None if reached is None else reached.round_number,
        "seconds_to_target": None if reached is None else reached.seconds,
        "start_up_s": start_up,
        "training_seconds_to_target": None if reached is None else reached.seconds - start_up,
        "median_round_s": statistics.median(round_seconds) if round_seconds else None,
        "final_accuracy": trace.rounds[-1].accuracy,
        "wall_s": result["wall_s"],
        "history": [asdict(entry) for entry in trace.rounds],
    }


def median_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One framework's runs over several seeds summarised by the median of each figure.

    A run that never reached the target counts as infinitely late, so the
    median's time to target is None exactly when the median run did not reach it.
    """
    summary: dict[str, Any] = {"framework": rows[0]["framework"], "seeds": len(rows)}
    for key in MEDIAN_KEYS:
        values = [inf if row[key] is None else row[key] for row in rows]
        median = statistics.median(values)
        summary[key] = None if isinf(median) else median
    return summary


def speed_ups(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each peer's seconds over fedwarden's: to the target, without start-up, per round.

    None where either side never reached the target (or ran one round only).
    """
    ours = next(row for row in rows if row["framework"] == OURS)
    ratios: dict[str, dict[str, float | None]] = {}
    for row in rows:
        if row is ours:
            continue
        ratios[row["framework"]] = {
            key: None if row[key] is None or not ours[key] else row[key] / ours[key]
            for key in SPEED_UP_KEYS
        }
    return ratios


def benchmark(
    num_clients: int,
    cohort_fraction: float,
    *,
    rounds: int,
    target: float,
    lr: float,
    seeds: Sequence[int],
    skip: set[str],
) -> dict[str, Any]:
    """Every framework on one workload once per seed; median rows and their speed-ups."""
    runs = [
        one_seed(
            num_clients, cohort_fraction, rounds=rounds, target=target, lr=lr, seed=seed, skip=skip
        )
        for seed in seeds
    ]
    rows = [median_row([run[index] for run in runs]) for index in range(len(runs[0]))]
    return {
        "clients": num_clients,
        "cohort": cohort_of(num_clients, cohort_fraction),
        "rounds": rounds,
        "target": target,
        "seeds": list(seeds),
        "rows": rows,
        "speed_ups": speed_ups(rows),
        "per_seed": [
            {"seed": seed, "rows": run, "speed_ups": speed_ups(run)}
            for seed, run in zip(seeds, runs, strict=True)
        ],
    }


def one_seed(
    num_clients: int,
    cohort_fraction: float,
    *,
    rounds: int,
    target: float,
    lr: float,
    seed: int,
    skip: set[str],
) -> list[dict[str, Any]]:
    """Every framework on the workload ``seed`` draws for ``rounds`` rounds: one row each."""
    dataset, clients, x_test, y_test = synthetic_workload(num_clients, seed)
    options: dict[str, Any] = {
        "rounds": rounds,
        "cohort_size": cohort_of(num_clients, cohort_fraction),
        "lr": lr,
        "seed": seed,
    }
    ours = partial(run_fedwarden, dataset, runtime=InProcessRuntime, **options)
    runners: list[Callable[..., PeerResult]] = [partial(ours, softmax_regression(60, 10), OURS)]
    if "local" not in skip:
        runners.append(
            partial(
                ours,
                softmax_regression(60, 10),
                "fedwarden (NumPy, local)",
                runtime=LocalRuntime,
            )
        )
    if "torch" not in skip:
        runners.append(partial(ours, torch_linear_trainer(60, 10), "fedwarden (PyTorch)"))
    for name, peer in peers().items():
        if name not in skip:
            runners.append(partial(peer, clients, x_test, y_test, **options))
    rows = []
    for runner in runners:
        trace = AccuracyTrace(x_test, y_test)
        rows.append(time_to_accuracy_row(runner(trace=trace), trace, target))
    return rows


def _format_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def print_result(result: dict[str, Any]) -> None:
    """Print one workload's median rows, each seed's times to target, and the speed-ups."""
    print(
        f"\nN = {result['clients']}, cohort {result['cohort']}, {result['rounds']} rounds, "
        f"target accuracy {result['target']:.3f}, median of seeds {result['seeds']}"
    )
    print(
        f"  {'framework':<25} {'rounds':>7} {'to target':>12} {'start-up':>10} "
        f"{'w/o start-up':>13} {'median round':>13} {'final acc':>10}   to target per seed"
    )
    for index, row in enumerate(result["rows"]):
        rounds = "-" if row["rounds_to_target"] is None else f"{row['rounds_to_target']:g}"
        per_seed = ", ".join(
            _format_seconds(run["rows"][index]["seconds_to_target"]) for run in result["per_seed"]
        )
        print(
            f"  {row['framework']:<25} {rounds:>7} {_format_seconds(row['seconds_to_target']):>12}"
            f" {_format_seconds(row['start_up_s']):>10}"
            f" {_format_seconds(row['training_seconds_to_target']):>13}"
            f" {_format_seconds(row['median_round_s']):>13} {row['final_accuracy']:>10.4f}"
            f"   {per_seed}"
        )
    for name, ratios in result["speed_ups"].items():
        figures = ", ".join(
            f"{key} " + ("-" if ratios[key] is None else f"{ratios[key]:.1f}x")
            for key in SPEED_UP_KEYS
        )
        print(f"  {name} / {OURS}: {figures}")


def main() -> None:
    """Run the workloads and print a table (and JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cohort", type=float, nargs="+", default=[0.5, 0.2])
    parser.add_argument("--target", type=float, nargs="+", default=[0.40, 0.19])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--skip", nargs="*", default=[], help="frameworks to leave out")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not len(args.clients) == len(args.cohort) == len(args.target):
        raise ConfigError(
            f"--clients, --cohort and --target give {len(args.clients)}, {len(args.cohort)} "
            f"and {len(args.target)} values; give one of each per workload"
        )
    results = []
    for num_clients, fraction, target in zip(args.clients, args.cohort, args.target, strict=True):
        result = benchmark(
            num_clients,
            fraction,
            rounds=args.rounds,
            target=target,
            lr=args.lr,
            seeds=args.seeds,
            skip=set(args.skip),
        )
        results.append(result)
        print_result(result)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
