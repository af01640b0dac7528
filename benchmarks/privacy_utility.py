"""Accuracy against epsilon: what differential privacy costs on two workloads.

- cross-silo: digits over 5 hospitals, MLP, DP-SGD at each silo (Opacus),
  noise calibrated so 10 rounds spend the target epsilon per silo;
- cross-device: 1000 devices of FedProx Synthetic(1, 1), softmax regression,
  user-level DP-FedAvg with Poisson sampling (q = 0.05), noise calibrated so
  60 rounds spend the target epsilon.

Epsilon in {1, 3, 8, inf} (inf: the same run without DP). Not a test: it
prints a table. Run: ``python benchmarks/privacy_utility.py``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from fedwarden.core.config import RunConfig
from fedwarden.data import load_dataset
from fedwarden.privacy.accounting import calibrate_noise_multiplier
from fedwarden.server import run

DELTA = 1e-5


def cross_silo(epsilon: float, seed: int) -> dict[str, Any]:
    """Digits, 5 silos, DP-SGD with z calibrated so the smallest silo's 10 rounds spend ``epsilon``.

    The smallest silo has the highest sampling rate and spends the most, so
    every silo stays within the budget (steps per round as in ``privacy.silo``).
    """
    values: dict[str, Any] = {
        "name": "utility-silo",
        "seed": seed,
        "rounds": 10,
        "data": {"source": "digits", "num_clients": 5, "partition": {"alpha": 1.0}},
        "model": {"kind": "mlp", "hidden": [64]},
        "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.5},
        "sampling": {"scheme": "uniform", "cohort_size": 5},
    }
    if math.isfinite(epsilon):
        config = RunConfig.from_mapping(values)
        silos = load_dataset(config.data, config.seed).clients.values()
        smallest = min(silo.num_train for silo in silos)
        steps = max(1, round(smallest / 32))
        z = calibrate_noise_multiplier(
            epsilon, DELTA, values["rounds"] * steps, sampling_rate=min(1.0, 32 / smallest)
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
    args = parser.parse_args()
    workloads = {"cross_silo": cross_silo, "cross_device": cross_device}
    for name in args.workloads:
        print(f"\n{name}")
        for epsilon in args.epsilons:
            summary = workloads[name](epsilon, args.seed)
            spent = summary.get("epsilon")
            shown = "-" if spent is None else f"{spent:.3f}"
            print(
                f"  target epsilon {epsilon:>5}: accuracy {summary['accuracy']:.4f}, "
                f"spent {shown}, noise multiplier {summary.get('noise_multiplier', '-')}"
            )


if __name__ == "__main__":
    main()
