"""Server aggregation cost: 100 updates of 10M parameters through fedwarden's pipeline.

Compares the server half (validation: dtype, shape, finiteness and norm) plus
the streaming weighted mean against a bare NumPy in-place sum of the same
updates, and reports the extra memory the aggregator allocates (tracemalloc
peak; O(d) means about one vector). Run: ``python benchmarks/aggregation.py``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
from threadpoolctl import threadpool_limits

from fedwarden.core.messages import ClientUpdate
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate


def _updates(count: int, size: int, distinct: int = 4) -> Iterator[np.ndarray]:
    """``count`` float32 updates, cycling through a few distinct buffers to bound memory."""
    rng = np.random.default_rng(0)
    pool = [rng.standard_normal(size, dtype=np.float32) for _ in range(distinct)]
    for index in range(count):
        yield pool[index % distinct]


def _best_of(repeats: int, job: Callable[[], None]) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        job()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    """Print the timing ratio and the aggregator's memory."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--size", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    updates = list(_updates(args.clients, args.size))

    def numpy_sum() -> None:
        total = np.zeros(args.size, dtype=np.float32)
        for update in updates:
            total += update

    pipeline = Pipeline([ValidateUpdate(args.size)], StreamingWeightedMean())

    def fedwarden_aggregate() -> None:
        pipeline.aggregator.start(args.size, [f"c{index}" for index in range(len(updates))])
        for index, update in enumerate(updates):
            message = ClientUpdate(0, f"c{index}", update, num_examples=10 + index)
            pipeline.aggregator.add(pipeline.server_half(message))
        pipeline.aggregator.result()

    baseline = _best_of(args.repeats, numpy_sum)
    ours = _best_of(args.repeats, fedwarden_aggregate)
    with threadpool_limits(1):
        ours_one_thread = _best_of(args.repeats, fedwarden_aggregate)
    tracemalloc.start()
    fedwarden_aggregate()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    vector_mb = args.size * 4 / 1e6
    print(f"{args.clients} updates x {args.size:,} parameters ({vector_mb:.0f} MB each)")
    print(f"bare NumPy in-place sum:               {baseline:.3f} s")
    print(f"fedwarden validate + weighted mean:    {ours:.3f} s")
    print(f"ratio fedwarden / NumPy:               {ours / baseline:.2f}x  (target <= 1.5x)")
    print(
        f"same with BLAS limited to one thread:  {ours_one_thread:.3f} s, "
        f"{ours_one_thread / baseline:.2f}x  (NumPy's add is single-threaded)"
    )
    print(
        f"aggregator peak allocation:            {peak / 1e6:.0f} MB "
        f"= {peak / (args.size * 4):.2f} vectors (independent of the number of clients)"
    )


if __name__ == "__main__":
    main()
