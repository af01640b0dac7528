"""Accuracy against epsilon: what differential privacy costs on two workloads.

- cross-silo: digits over 3 hospitals, softmax regression in PyTorch, DP-SGD
  at each silo (Opacus), noise calibrated so 10 rounds of 2 local epochs spend
  the target epsilon per silo;
- cross-device: 1000 devices of FedProx Synthetic(1, 1), softmax regression,
  user-level DP-FedAvg with Poisson sampling (q = 0.05), noise calibrated so
  60 rounds spend the target epsilon.

Epsilon in {1, 3, 8, inf} (inf: the same run without DP). Not a test: it
prints a table. Run: ``python benchmarks/privacy_utility.py``.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

import numpy as np

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig
from fedwarden.data import load_dataset
from fedwarden.privacy.accounting import calibrate_noise_multiplier

DELTA = 1e-5
BATCH = 128


def cross_silo(epsilon: float, seed: int) -> dict[str, Any]:
    """Digits, 3 silos, DP-SGD with z calibrated so the smallest silo's 10 rounds spend ``epsilon``.

    The smallest silo has the highest sampling rate and spends the most, so
    every silo stays within the budget (steps per round as in ``privacy.silo``).
    A linear model under DP-SGD: the noise grows with the parameter count, and
    on digits a softmax layer loses less to it than an MLP does at the same
    epsilon; large batches (q ~ 0.4) with a large learning rate are the
    standard DP-SGD recipe (De et al. 2022).
    """
    values: dict[str, Any] = {
        "name": "utility-silo",
        "seed": seed,
        "rounds": 10,
        "data": {"source": "digits", "num_clients": 3, "partition": {"alpha": 1.0}},
        "model": {"kind": "mlp", "hidden": []},
        "train": {"local_epochs": 2, "batch_size": BATCH, "learning_rate": 2.0},
        "sampling": {"scheme": "uniform", "cohort_size": 3},
    }
    if math.isfinite(epsilon):
        config = RunConfig.from_mapping(values)
        silos = load_dataset(config.data, config.seed).clients.values()
        smallest = min(silo.num_train for silo in silos)
        steps = max(1, round(smallest / BATCH)) * values["train"]["local_epochs"]
        z = calibrate_noise_multiplier(
            epsilon, DELTA, values["rounds"] * steps, sampling_rate=min(1.0, BATCH / smallest)
        )
        values["privacy"] = {
            "mechanism": "dp_sgd",
            "epsilon": epsilon,
            "delta": DELTA,
            "noise_multiplier": z,
            "max_grad_norm": 1.0,
        }
    return run(RunConfig.from_mapping(values), write_run_dir=False).to_json()


def cross_device(epsilon: float, seed: int) -> dict[str, Any]:
    """Synthetic(1, 1), 1000 devices, user-level DP-FedAvg calibrated to ``epsilon``."""
    values: dict[str, Any] = {
        "name": "utility-device",
        "seed": seed,
        "rounds": 60,
        "data": {"source": "synthetic", "num_clients": 1000},
        "train": {"local_epochs": 1, "batch_size": 10, "learning_rate": 0.1},
        "sampling": {"scheme": "poisson", "rate": 0.05},
    }
    if math.isfinite(epsilon):
        values["privacy"] = {
            "mechanism": "user_level",
            "epsilon": epsilon,
            "delta": DELTA,
            "clip_norm": 1.0,
        }
    return run(RunConfig.from_mapping(values), write_run_dir=False).to_json()


def main() -> None:
    """Print accuracy and the spent epsilon for each workload and target."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epsilons", type=float, nargs="*", default=[1.0, 3.0, 8.0, math.inf])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workloads", nargs="*", default=["cross_silo", "cross_device"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs per target; the DP noise is fresh secure randomness in each, so accuracy varies",
    )
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's dropped Renyi orders
    workloads = {"cross_silo": cross_silo, "cross_device": cross_device}
    for name in args.workloads:
        print(f"\n{name}")
        for epsilon in args.epsilons:
            summaries = [workloads[name](epsilon, args.seed) for _ in range(args.repeats)]
            accuracies = np.array([summary["accuracy"] for summary in summaries])
            spent = summaries[0].get("epsilon")
            shown = "-" if spent is None else f"{spent:.3f}"
            runs = ", ".join(f"{accuracy:.4f}" for accuracy in accuracies)
            print(
                f"  target epsilon {epsilon:>5}: accuracy mean {accuracies.mean():.4f} "
                f"(runs {runs}), spent {shown}, "
                f"noise multiplier {summaries[0].get('noise_multiplier', '-')}"
            )


if __name__ == "__main__":
    main()
