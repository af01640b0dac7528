"""Accuracy under attack: every attack against every aggregator, 20% malicious clients.

Two workloads, each trained for the same number of rounds under every
combination: FedProx Synthetic(1, 1) (50 devices, cohort 20) and digits (20
clients, Dirichlet(1.0), every client every round), softmax regression. The
malicious clients are the same 20% in every run (chosen from the seed); "none"
is the clean run. Robust rules assume f = 20% of the cohort. The backdoor
column is the share of triggered digits classified as the attacker's target
(digits only: the trigger is an 8x8 image patch).

Not a test: it prints Markdown tables. Run from the repository root:
``python -m benchmarks.robustness`` (``--rounds``, ``--workloads``,
``--attacks``, ``--aggregators`` narrow it down).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any, get_args

from fedwarden.build.run import run
from fedwarden.core.config import AttackConfig, PipelineConfig, RunConfig

ATTACKS = get_args(AttackConfig.model_fields["kind"].annotation)
AGGREGATORS = get_args(PipelineConfig.model_fields["aggregator"].annotation)
WORKLOADS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "data": {"source": "synthetic", "num_clients": 50},
        "train": {"local_epochs": 1, "batch_size": 10, "learning_rate": 0.1},
        "sampling": {"scheme": "uniform", "cohort_size": 20},
    },
    "digits": {
        "data": {"source": "digits", "num_clients": 20, "partition": {"alpha": 1.0}},
        "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1},
        "sampling": {"scheme": "uniform", "cohort_size": 20},
    },
}
MALICIOUS_FRACTION = 0.2
COHORT = 20
BYZANTINE = 4  # 20% of the cohort
ATTACK_SETTINGS: dict[str, dict[str, Any]] = {
    "sign_flip": {"scale": 4.0},
    "gaussian": {"sigma": 1.0},
    "scaling": {"factor": 10.0},
    "ipm": {"epsilon": 0.1},
}
# Centered clipping's radius and the norm bound: about the median honest update norm of
# each workload in the first round (measured: synthetic 1.10, digits 0.51).
CLIP_RADIUS = {"synthetic": 1.0, "digits": 0.5}


def config(workload: str, attack: str, aggregator: str, rounds: int, seed: int) -> RunConfig:
    """One run: the workload, the attack (``none``: clean) and the aggregation rule."""
    values: dict[str, Any] = {
        "name": f"robust-{workload}-{attack}-{aggregator}",
        "seed": seed,
        "rounds": rounds,
        **WORKLOADS[workload],
        "pipeline": {
            "weighting": "uniform",
            "aggregator": aggregator,
            "byzantine": BYZANTINE,
            "trim_fraction": MALICIOUS_FRACTION,
            "clip_radius": CLIP_RADIUS[workload],
        },
    }
    if attack != "none":
        values["attack"] = {
            "kind": attack,
            "malicious_fraction": MALICIOUS_FRACTION,
            **ATTACK_SETTINGS.get(attack, {}),
        }
    return RunConfig.from_mapping(values)


def main() -> None:
    """Print one accuracy table per workload (rows: attacks; columns: aggregators)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    parser.add_argument("--attacks", nargs="*", default=list(ATTACKS))
    parser.add_argument("--aggregators", nargs="*", default=list(AGGREGATORS))
    args = parser.parse_args()
    logging.getLogger("fedwarden").setLevel(logging.ERROR)  # flagged-client warnings
    for workload in args.workloads:
        attacks = [a for a in args.attacks if workload == "digits" or a != "backdoor"]
        print(f"\n{workload}: accuracy after {args.rounds} rounds, 20% malicious\n")
        print("| attack | " + " | ".join(args.aggregators) + " |")
        print("|---" * (len(args.aggregators) + 1) + "|")
        for attack in attacks:
            cells = []
            for aggregator in args.aggregators:
                result = run(
                    config(workload, attack, aggregator, args.rounds, args.seed),
                    write_run_dir=False,
                )
                cell = "-" if result.accuracy is None else f"{100 * result.accuracy:.1f}"
                backdoor = result.history[-1].backdoor_success
                if backdoor is not None:
                    cell += f" (bd {100 * backdoor:.0f})"
                cells.append(cell)
            print(f"| {attack} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
