"""Robust aggregation cost: fedwarden's Byzantine-robust rules against Flower's, same matrix.

100 clients x 1M float32 parameters by default, ``f`` of them Byzantine
(sign-flipped and boosted). For each rule the table gives fedwarden's whole
server path (``start``, one ``add`` per update into the preallocated matrix,
``result`` with the anomaly scores), the rule alone on the ready matrix, and
Flower's function from ``flwr.server.strategy.aggregate`` on the same updates
as a list of ``([vector], 1)`` pairs (equal example counts, so Flower's
weighted Multi-Krum is the unweighted one), with the ratio Flower / fedwarden
(rule alone) and the largest absolute difference between the two results.
Rules Flower lacks are timed for fedwarden only. Flower's Bulyan repeats its
O(n^2 d) Python-loop Krum ``n - 2f`` times, so it runs only with
``--flower-bulyan``. Run: ``python benchmarks/robust_aggregation.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from fedwarden.core.messages import ClientUpdate
from fedwarden.pipeline.robust import (
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    MultiKrum,
    NormBoundedMean,
    RobustAggregator,
    TrimmedMean,
    bulyan,
    centered_clipping,
    coordinate_median,
    fltrust,
    geometric_median,
    multi_krum,
    norm_bounded_mean,
    trimmed_mean,
)

Array = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class Rule:
    """One robust rule: fedwarden's aggregator and pure function, and Flower's, if it has one."""

    name: str
    aggregator: Callable[[], RobustAggregator]
    ours: Callable[[Array], Array]
    flower: Callable[[list[tuple[list[Array], int]]], Array] | None


def _updates(clients: int, dim: int, byzantine: int) -> Array:
    """Honest updates around a common direction; the first ``byzantine`` rows flipped x 10."""
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(dim, dtype=np.float32)
    matrix = direction + 2.0 * rng.standard_normal((clients, dim), dtype=np.float32)
    matrix[:byzantine] *= np.float32(-10.0)
    return matrix


def _best_of(repeats: int, job: Callable[[], object]) -> tuple[float, object]:
    timings, output = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        output = job()
        timings.append(time.perf_counter() - started)
    return min(timings), output


def _through_aggregator(build: Callable[[], RobustAggregator], matrix: Array) -> Array:
    aggregator = build()
    cohort = [f"c{index}" for index in range(matrix.shape[0])]
    aggregator.start(matrix.shape[1], cohort)
    if isinstance(aggregator, FLTrust):
        aggregator.set_server_update(_server_update(matrix))
    for client_id, row in zip(cohort, matrix, strict=True):
        aggregator.add(ClientUpdate(0, client_id, row, num_examples=1))
    return aggregator.result().mean_update


def _server_update(matrix: Array) -> Array:
    """A stand-in root-set update: the mean of the honest rows (the last 20%)."""
    return np.asarray(matrix[-max(1, matrix.shape[0] // 5) :].mean(axis=0), dtype=np.float32)


def _rules(args: argparse.Namespace, flower: Any) -> list[Rule]:
    f, beta, m = args.f, args.beta, args.clients - args.f

    def flower_rule(function: Callable[..., list[Array]], **kwargs: Any) -> Any:
        if flower is None:
            return None
        return lambda results: function(results, **kwargs)[0]

    bulyan_flower = None
    if args.flower_bulyan and flower is not None:
        bulyan_flower = flower_rule(
            flower.aggregate_bulyan,
            num_malicious=f,
            aggregation_rule=flower.aggregate_krum,
            to_keep=0,
        )
    zero = np.zeros(args.dim, dtype=np.float32)
    return [
        Rule(
            "median",
            CoordinateMedian,
            coordinate_median,
            None if flower is None else flower_rule(flower.aggregate_median),
        ),
        Rule(
            f"trimmed mean beta={beta}",
            lambda: TrimmedMean(beta),
            lambda x: trimmed_mean(x, beta),
            None
            if flower is None
            else flower_rule(flower.aggregate_trimmed_avg, proportiontocut=beta),
        ),
        Rule(
            f"krum f={f}",
            lambda: Krum(f),
            lambda x: multi_krum(x, f, 1)[0],
            None
            if flower is None
            else flower_rule(flower.aggregate_krum, num_malicious=f, to_keep=0),
        ),
        Rule(
            f"multi-krum f={f} m={m}",
            lambda: MultiKrum(f, m),
            lambda x: multi_krum(x, f, m)[0],
            None
            if flower is None
            else flower_rule(flower.aggregate_krum, num_malicious=f, to_keep=m),
        ),
        Rule(f"bulyan f={f}", lambda: Bulyan(f), lambda x: bulyan(x, f)[0], bulyan_flower),
        Rule(
            "geometric median",
            GeometricMedian,
            lambda x: geometric_median(x).median,
            None,
        ),
        Rule(
            f"centered clipping tau={args.tau}",
            lambda: CenteredClipping(tau=args.tau),
            lambda x: centered_clipping(x, zero, tau=args.tau),
            None,
        ),
        Rule(
            f"norm-bounded mean {args.tau}",
            lambda: NormBoundedMean(args.tau),
            lambda x: norm_bounded_mean(x, args.tau),
            None,
        ),
        Rule("fltrust", FLTrust, lambda x: fltrust(x, _server_update(x))[0], None),
    ]


def _flower_module() -> Any:
    try:
        import flwr.server.strategy.aggregate as flower_aggregate
    except ImportError:
        return None
    return flower_aggregate


def main() -> None:
    """Print the timing table (seconds, best of ``--repeats``) and the agreement with Flower."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--dim", type=int, default=1_000_000)
    parser.add_argument("--f", type=int, default=10, help="Byzantine clients (the first f rows)")
    parser.add_argument("--beta", type=float, default=0.1, help="trimmed mean's cut per end")
    parser.add_argument("--tau", type=float, default=1000.0, help="clipping radius / norm bound")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--blas-threads", type=int, default=0, help="limit BLAS threads (0: library default)"
    )
    parser.add_argument("--flower-bulyan", action="store_true", help="also time Flower's Bulyan")
    parser.add_argument("--only", nargs="*", default=None, help="rules whose name starts so")
    args = parser.parse_args()

    flower = _flower_module()
    matrix = _updates(args.clients, args.dim, args.f)
    results = [([row], 1) for row in matrix]
    limits: contextlib.AbstractContextManager[Any] = (
        threadpool_limits(args.blas_threads) if args.blas_threads else contextlib.nullcontext()
    )
    print(
        f"{args.clients} clients x {args.dim:,} parameters (float32, "
        f"{matrix.nbytes / 1e6:.0f} MB), f={args.f}, best of {args.repeats}, "
        f"BLAS threads: {args.blas_threads or 'default'}, "
        f"Flower: {'not installed' if flower is None else 'flwr.server.strategy.aggregate'}"
    )
    header = (
        f"{'rule':32s} {'ours: server':>13s} {'ours: rule':>11s} {'Flower':>9s} "
        f"{'Flower/ours':>12s} {'max |diff|':>11s}"
    )
    print(header)
    print("-" * len(header))
    with limits:
        for rule in _rows(_rules(args, flower), args.only):
            whole, _ = _best_of(args.repeats, partial(_through_aggregator, rule.aggregator, matrix))
            alone, ours = _best_of(args.repeats, partial(rule.ours, matrix))
            flower_cell, ratio_cell, diff_cell = "-", "-", "-"
            if rule.flower is not None:
                theirs_seconds, theirs = _best_of(args.repeats, partial(rule.flower, results))
                difference = np.abs(np.asarray(theirs, np.float64) - np.asarray(ours, np.float64))
                flower_cell = f"{theirs_seconds:.3f}"
                ratio_cell = f"{theirs_seconds / alone:.1f}x"
                diff_cell = f"{float(difference.max()):.2e}"
            print(
                f"{rule.name:32s} {whole:13.3f} {alone:11.3f} {flower_cell:>9s} "
                f"{ratio_cell:>12s} {diff_cell:>11s}",
                flush=True,
            )


def _rows(rules: list[Rule], only: list[str] | None) -> Iterator[Rule]:
    for rule in rules:
        if only is None or any(rule.name.startswith(prefix) for prefix in only):
            yield rule


if __name__ == "__main__":
    main()
