"""Bytes on the wire against accuracy: each compression scheme at equal rounds.

Digits over 20 clients (Dirichlet 1.0), every client in every round (error
feedback feeds a client's residual into its next round; with half the clients
per round the residuals are stale and top-k + EF loses about 4 points, see the
README), an MLP with one hidden
layer of 128 (9,610 parameters: top-k of 1% keeps 96 of them), FedAvg for the
same number of rounds under each scheme. ``ratio`` is the raw float32 bytes of
the received updates over the bytes actually sent (payloads and their JSON
headers), averaged over rounds. Not a test: it prints a Markdown table.
Run from the repository root: ``python -m benchmarks.compression``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig

SCHEMES: dict[str, dict[str, Any]] = {
    "none": {},
    "8-bit": {"quantize": "uniform", "bits": 8},
    "4-bit": {"quantize": "uniform", "bits": 4},
    "4-bit + rotation": {"quantize": "uniform", "bits": 4, "rotate": True},
    "QSGD (15 levels)": {"quantize": "qsgd", "levels": 15},
    "top-k 1%, no error feedback": {"sparsify": "topk", "fraction": 0.01, "error_feedback": False},
    "top-k 1% + EF": {"sparsify": "topk", "fraction": 0.01},
    "top-k 1% + EF + 8-bit": {"sparsify": "topk", "fraction": 0.01, "quantize": "uniform"},
}


def config(scheme: str, rounds: int, seed: int, cohort: int) -> RunConfig:
    """The workload under one compression scheme."""
    return RunConfig.from_mapping(
        {
            "name": "compression",
            "seed": seed,
            "rounds": rounds,
            "data": {"source": "digits", "num_clients": 20, "partition": {"alpha": 1.0}},
            "model": {"kind": "mlp", "hidden": [128]},
            "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1},
            "sampling": {"scheme": "uniform", "cohort_size": cohort},
            "pipeline": {"compression": SCHEMES[scheme]},
        }
    )


def main() -> None:
    """Print accuracy, bytes per update and the compression ratio of each scheme."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--cohort", type=int, default=20, help="clients per round (of 20)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| scheme | accuracy | change (points) | bytes per update | ratio |")
    print("|---|---|---|---|---|")
    baseline = None
    for scheme in SCHEMES:
        result = run(config(scheme, args.rounds, args.seed, args.cohort), write_run_dir=False)
        assert result.accuracy is not None
        accuracy = 100 * result.accuracy
        baseline = accuracy if baseline is None else baseline
        per_update = np.mean([r.bytes_up / r.participants for r in result.history])
        ratio = np.mean([r.compression_ratio for r in result.history])
        print(
            f"| {scheme} | {accuracy:.1f}% | {accuracy - baseline:+.1f} | "
            f"{per_update:,.0f} | {ratio:.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
