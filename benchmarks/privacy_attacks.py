"""Attacks on our own models: membership inference, gradient inversion, and DP audits.

Three measurements on scikit-learn's 8x8 digits (nothing is downloaded):

1. membership inference against the final global model of a cross-silo run
   (3 silos of small data, an MLP, 20 rounds) without DP, with DP-SGD at epsilon 8 and at
   epsilon 1: the loss-threshold attack (Yeom et al. 2018) on the run itself,
   and LiRA (Carlini et al. 2022, online, global variance) with
   ``--lira-models`` models trained as one silo trains, each the target of the
   others in turn;
2. gradient inversion (iDLG, Zhao et al. 2020) of one client's FedSGD update
   (batch of one), of the sum of 10 clients' updates (what secure
   aggregation reveals) and of a DP update (clip 1, noise multiplier 1),
   over ``--inversion-trials`` random draws of images;
3. the audit's epsilon lower bound beside the accountant's epsilon, for DP-SGD
   calibrated to epsilon 1, 4 and 8 (and no DP for reference): one-run
   auditing with ``--canaries`` canaries (Steinke et al. 2023) and multi-run
   auditing with ``--audit-runs`` trainings (Jagielski et al. 2020, Nasr et
   al. 2021), both at confidence 0.95;
4. the canary-client audit of user-level DP-FedAvg (Andrew et al. 2024) at
   epsilon 1, 4 and 8: ``--canary-clients`` canary clients added to a run of
   20 digits clients (Poisson rate 0.2, 10 rounds), the one-run lower bound
   (confidence 0.95) and Andrew et al.'s Gaussian-fit estimate beside the
   ledger's claim, scored on the final model and on all iterates.

Run from the repository root: ``python -m benchmarks.privacy_attacks``. It
prints tables (and ``--json`` writes the figures). PyTorch uses one thread.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedwarden.audits.dp_audit import audit_privacy
from fedwarden.audits.inversion import inversion_model, invert
from fedwarden.audits.membership import attack_global_model, lira_attack, pooled
from fedwarden.build.run import prepare
from fedwarden.core.config import RunConfig
from fedwarden.core.messages import TrainConfig
from fedwarden.models.torch import TorchTrainer

DELTA = 1e-5
EPSILONS = (math.inf, 8.0, 1.0)
AUDIT_EPSILONS = (math.inf, 8.0, 4.0, 1.0)
USER_LEVEL_EPSILONS = (8.0, 4.0, 1.0)


def membership_config(epsilon: float, seed: int) -> RunConfig:
    """Digits over 3 small silos, an MLP trained 20 rounds; DP-SGD at ``epsilon`` unless infinite.

    Three quarters of digits are the central test set (the non-members), so the
    silos hold about 360 examples in all: small data, where a model memorizes
    most. Without DP the silos train 10 local epochs of batch 16; DP-SGD
    takes large batches and a large learning rate instead (De et al. 2022).
    """
    values: dict[str, Any] = {
        "name": "membership",
        "seed": seed,
        "rounds": 20,
        "data": {
            "source": "digits",
            "num_clients": 3,
            "central_test_fraction": 0.75,
            "partition": {"alpha": 1.0},
        },
        "model": {"kind": "mlp", "hidden": [128]},
        "train": {"local_epochs": 10, "batch_size": 16, "learning_rate": 0.1},
        "sampling": {"scheme": "uniform", "cohort_size": 3},
        "runtime": {"kind": "local", "workers": 1},
    }
    if math.isfinite(epsilon):
        values["train"] = {"local_epochs": 2, "batch_size": 64, "learning_rate": 1.0}
        values["privacy"] = {"mechanism": "dp_sgd", "epsilon": epsilon, "delta": DELTA}
    return RunConfig.from_mapping(values)


def audit_config(epsilon: float, seed: int) -> RunConfig:
    """Digits over 2 silos, a small MLP, 5 rounds of 2 local epochs of DP-SGD at ``epsilon``."""
    values: dict[str, Any] = {
        "name": "audit",
        "seed": seed,
        "rounds": 5,
        "data": {"source": "digits", "num_clients": 2, "partition": {"scheme": "iid"}},
        "model": {"kind": "mlp", "hidden": [32]},
        "train": {"local_epochs": 2, "batch_size": 64, "learning_rate": 1.0},
    }
    if math.isfinite(epsilon):
        values["privacy"] = {"mechanism": "dp_sgd", "epsilon": epsilon, "delta": DELTA}
    return RunConfig.from_mapping(values)


def user_level_config(epsilon: float, seed: int) -> RunConfig:
    """Digits over 20 clients, a small MLP, 10 rounds of DP-FedAvg at ``epsilon`` (Poisson 0.2)."""
    return RunConfig.from_mapping(
        {
            "name": "canary-audit",
            "seed": seed,
            "rounds": 10,
            "data": {"source": "digits", "num_clients": 20, "partition": {"scheme": "iid"}},
            "model": {"kind": "mlp", "hidden": [32]},
            "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1},
            "sampling": {"scheme": "poisson", "rate": 0.2},
            "runtime": {"kind": "local", "workers": 1},
            "privacy": {"mechanism": "user_level", "epsilon": epsilon, "delta": DELTA},
        }
    )


def canary_client_audits(seed: int, canaries: int) -> list[dict[str, Any]]:
    """The canary-client audit at each epsilon of :data:`USER_LEVEL_EPSILONS`, both statistics."""
    rows = []
    for epsilon in USER_LEVEL_EPSILONS:
        for statistic in ("final_model", "all_iterates"):
            result = audit_privacy(
                user_level_config(epsilon, seed),
                num_canaries=canaries,
                statistic="final_model" if statistic == "final_model" else "all_iterates",
            )
            rows.append({"target_epsilon": epsilon, **result.to_json()})
    return rows


def membership(epsilon: float, seed: int, lira_models: int) -> dict[str, Any]:
    """Loss-threshold AUC on the run's global model and LiRA on the run's training recipe."""
    config = membership_config(epsilon, seed)
    loss_threshold = attack_global_model(config)
    prepared = prepare(config)
    trainer = prepared.trainer
    assert isinstance(trainer, TorchTrainer)
    x, y = pooled(list(prepared.dataset.clients.values()))
    train = TrainConfig(
        config.train.local_epochs, config.train.batch_size, config.train.learning_rate
    )
    lira = lira_attack(
        trainer, x, y, train, rounds=config.rounds, num_models=lira_models, seed=seed
    )
    return {
        "epsilon": epsilon,
        "noise_multiplier": prepared.config.privacy.noise_multiplier,
        "test_accuracy": loss_threshold.model_accuracy,
        "loss_threshold_auc": loss_threshold.auc,
        "loss_threshold_tpr_at_1pct": loss_threshold.tpr_at_low_fpr,
        "lira_auc": lira.auc,
        "lira_tpr_at_1pct": lira.tpr_at_low_fpr,
    }


def inversion(trials: int, seed: int) -> list[dict[str, Any]]:
    """iDLG against a plain update, a 10-client secure sum and a DP update, averaged."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    x = features / 16.0
    rows = []
    for scenario in ("plain", "secure_sum", "dp"):
        results = []
        for trial in range(trials):
            rng = np.random.default_rng([seed, trial])
            chosen = rng.choice(len(labels), 10, replace=False)
            torch.manual_seed(seed * 1000 + trial)
            results.append(
                invert(inversion_model(), x[chosen], labels[chosen], scenario, seed=trial)
            )
        rows.append(
            {
                "scenario": scenario,
                "clients": results[0].num_clients,
                "mse": float(np.mean([r.mse for r in results])),
                "psnr_db": float(np.mean([r.psnr for r in results])),
                "noise_mse": float(np.mean([r.noise_mse for r in results])),
                "succeeded": sum(r.succeeded for r in results),
                "labels_right": sum(r.label_correct for r in results),
                "trials": trials,
            }
        )
    return rows


def audits(seed: int, canaries: int, runs: int) -> list[dict[str, Any]]:
    """One-run and multi-run audits at each epsilon of :data:`AUDIT_EPSILONS`."""
    rows = []
    for epsilon in AUDIT_EPSILONS:
        config = audit_config(epsilon, seed)
        for method, result in (
            ("one_run", audit_privacy(config, method="one_run", num_canaries=canaries)),
            ("multi_run", audit_privacy(config, method="multi_run", num_runs=runs)),
        ):
            rows.append({"target_epsilon": epsilon, **result.to_json(), "method": method})
    return rows


def main() -> None:
    """Run the three measurements and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lira-models", type=int, default=8)
    parser.add_argument("--inversion-trials", type=int, default=5)
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--audit-runs", type=int, default=100)
    parser.add_argument("--canary-clients", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP series warnings
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="dp_accounting")
    torch.set_num_threads(1)
    started = time.perf_counter()
    figures: dict[str, Any] = {}

    figures["membership"] = [
        membership(epsilon, arguments.seed, arguments.lira_models) for epsilon in EPSILONS
    ]
    print(f"\nMembership inference ({arguments.lira_models} LiRA models, TPR at FPR 1%)")
    print(
        f"{'epsilon':>8} {'z':>7} {'accuracy':>8} {'loss AUC':>9} {'loss TPR':>9} "
        f"{'LiRA AUC':>9} {'LiRA TPR':>9}"
    )
    for row in figures["membership"]:
        z = row["noise_multiplier"]
        print(
            f"{row['epsilon']:>8g} {'-' if z is None else f'{z:.3f}':>7} "
            f"{row['test_accuracy']:>8.3f} "
            f"{row['loss_threshold_auc']:>9.3f} {row['loss_threshold_tpr_at_1pct']:>9.3f} "
            f"{row['lira_auc']:>9.3f} {row['lira_tpr_at_1pct']:>9.3f}"
        )

    figures["inversion"] = inversion(arguments.inversion_trials, arguments.seed)
    print(f"\nGradient inversion (iDLG, {arguments.inversion_trials} trials each)")
    print(
        f"{'update':>11} {'clients':>7} {'MSE':>7} {'PSNR dB':>8} {'noise MSE':>9} {'success':>8}"
    )
    for row in figures["inversion"]:
        print(
            f"{row['scenario']:>11} {row['clients']:>7} {row['mse']:>7.4f} {row['psnr_db']:>8.1f} "
            f"{row['noise_mse']:>9.4f} {row['succeeded']:>4}/{row['trials']}"
        )

    figures["audit"] = audits(arguments.seed, arguments.canaries, arguments.audit_runs)
    print(
        f"\nPrivacy audit (confidence 0.95; one-run: {arguments.canaries} canaries, one "
        f"training; multi-run: {arguments.audit_runs} trainings)"
    )
    print(f"{'target':>7} {'method':>9} {'claimed':>8} {'lower bound':>11} {'guesses':>12}")
    for row in figures["audit"]:
        print(
            f"{row['target_epsilon']:>7g} {row['method']:>9} {row['claimed_epsilon']:>8.3f} "
            f"{row['lower_bound']:>11.3f} {row['num_correct']:>5}/{row['num_guesses']:<6}"
            + ("  ABOVE THE CLAIM: BUG" if row["exceeds_claim"] else "")
        )

    figures["canary_clients"] = canary_client_audits(arguments.seed, arguments.canary_clients)
    print(
        f"\nUser-level DP-FedAvg, canary-client audit ({arguments.canary_clients} canary "
        "clients, one run; bound at confidence 0.95; estimate: Gaussian fit, not a bound)"
    )
    print(f"{'target':>7} {'score':>20} {'claimed':>8} {'lower bound':>11} {'estimate':>9}")
    for row in figures["canary_clients"]:
        print(
            f"{row['target_epsilon']:>7g} {row['score']:>20} {row['claimed_epsilon']:>8.3f} "
            f"{row['lower_bound']:>11.3f} {row['epsilon_estimate']:>9.3f}"
            + ("  ABOVE THE CLAIM: BUG" if row["exceeds_claim"] else "")
        )
    figures["wall_s"] = time.perf_counter() - started
    print(f"\nTotal {figures['wall_s']:.0f} s")
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
