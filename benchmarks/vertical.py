"""Vertical federated learning: split learning against centralized training, and with DP.

Workload (issue 8): scikit-learn's breast_cancer (569 patients, 30 columns,
2 classes) split by columns across three parties (``bank`` holds the labels
and columns 0-9, ``clinic`` 10-19, ``lab`` 20-29). Each party shuffles its
rows and drops 20 patients of its own; the tables are aligned by
multi-party PSI (:func:`fedwarden.vertical.align_rows`), and 70% of the
aligned patients (a public seeded draw) train, the rest test.

For the split neural network (:func:`fedwarden.vertical.split_mlp`) and the
vertical logistic regression (:func:`fedwarden.vertical.split_logistic`),
printed: test accuracy of the same architecture trained centralized and
split (same seeds, same batches), then split with DP on the activations the
feature parties send (:class:`fedwarden.vertical.GaussianRelease`, clip norm
1, noise multiplier calibrated to each target epsilon for the run's epochs
plus the evaluation pass, at delta 1e-5, replace-one), with the epsilon the
ledger charged each feature party. Seconds are wall-clock on this machine.

Run from the repository root: ``python -m benchmarks.vertical``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_breast_cancer

from fedwarden.privacy.accounting import calibrate_noise_multiplier
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.vertical import (
    FeatureParty,
    GaussianRelease,
    LabelParty,
    SplitArchitecture,
    SplitLearning,
    TrainingPlan,
    align_rows,
    centralized_accuracy,
    split_logistic,
    split_mlp,
    train_centralized,
)

COLUMNS = {"bank": slice(0, 10), "clinic": slice(10, 20), "lab": slice(20, 30)}
LABEL_PARTY = "bank"
PLAN = TrainingPlan(epochs=30, batch_size=32, learning_rate=0.01, seed=5)
DELTA = 1e-5
EPSILONS = (8.0, 2.0)

Blocks = dict[str, npt.NDArray[np.float64]]
Rows = npt.NDArray[np.int64]


def aligned_data() -> tuple[Blocks, npt.NDArray[np.int64], Rows, Rows]:
    """The three parties' aligned column blocks, the labels, and the train and test rows."""
    features, labels = load_breast_cancer(return_X_y=True)
    ids: dict[str, list[str]] = {}
    blocks: Blocks = {}
    party_labels = labels
    for seed, (party, columns) in enumerate(COLUMNS.items()):
        kept = np.random.default_rng(100 + seed).permutation(len(labels))[: len(labels) - 20]
        block = features[kept, columns]
        blocks[party] = (block - block.mean(axis=0)) / block.std(axis=0)
        ids[party] = [f"patient-{k}" for k in kept]
        if party == LABEL_PARTY:
            party_labels = labels[kept]
    start = time.perf_counter()
    aligned = align_rows(ids)
    print(
        f"PSI alignment of 3 parties: {len(aligned.identifiers)} shared patients "
        f"in {time.perf_counter() - start:.2f} s"
    )
    blocks = {party: block[aligned.rows[party]] for party, block in blocks.items()}
    order = np.random.default_rng(7).permutation(len(aligned.identifiers))
    cut = int(0.7 * len(order))
    return blocks, party_labels[aligned.rows[LABEL_PARTY]], order[:cut], order[cut:]


def split_accuracy(
    architecture: SplitArchitecture,
    blocks: Blocks,
    labels: npt.NDArray[np.int64],
    rows: tuple[Rows, Rows],
    release: GaussianRelease | None,
) -> tuple[float, float | None]:
    """Split-learning test accuracy, and the epsilon a feature party was charged (None: no DP)."""
    ledger = None
    if release is not None:
        ledger = PrivacyLedger(
            PrivacyBudget(1e6, DELTA), privacy_unit="example", neighboring="replace_one"
        )
    parties = [
        FeatureParty(
            party, blocks[party], bottom, release=None if party == LABEL_PARTY else release
        )
        for party, bottom in zip(COLUMNS, architecture.bottoms, strict=True)
    ]
    split = SplitLearning(parties, LabelParty(LABEL_PARTY, labels, architecture.top), ledger=ledger)
    split.fit(rows[0], PLAN)
    accuracy = split.accuracy(rows[1])
    return accuracy, None if ledger is None else ledger.client_spent("clinic").epsilon


def main() -> None:
    """Print centralized, split and DP-split accuracy for both architectures."""
    torch.set_num_threads(1)
    blocks, labels, train, test = aligned_data()
    builders: dict[str, Callable[[], SplitArchitecture]] = {
        "split neural network": lambda: split_mlp([10, 10, 10], 2, seed=3),
        "vertical logistic regression": lambda: split_logistic([10, 10, 10], 2, seed=3),
    }
    passes = PLAN.epochs + 1  # every training epoch and the evaluation release the activations
    for name, build in builders.items():
        print(f"\n{name} ({PLAN.epochs} epochs, batch {PLAN.batch_size})")
        start = time.perf_counter()
        central = build().stacked()
        ordered = [blocks[party] for party in COLUMNS]
        train_centralized(central, ordered, labels, train, PLAN)
        accuracy = centralized_accuracy(central, ordered, labels, test)
        print(
            f"  {'centralized':28s} accuracy {accuracy:.4f}  {time.perf_counter() - start:6.2f} s"
        )
        start = time.perf_counter()
        accuracy, _ = split_accuracy(build(), blocks, labels, (train, test), None)
        print(f"  {'split':28s} accuracy {accuracy:.4f}  {time.perf_counter() - start:6.2f} s")
        for epsilon in EPSILONS:
            multiplier = calibrate_noise_multiplier(
                epsilon, DELTA, passes, neighboring="replace_one"
            )
            release = GaussianRelease(clip_norm=1.0, noise_multiplier=multiplier)
            start = time.perf_counter()
            accuracy, charged = split_accuracy(build(), blocks, labels, (train, test), release)
            label = f"split, DP epsilon {epsilon:g} (z={multiplier:.2f})"
            print(
                f"  {label:28s} accuracy {accuracy:.4f}  {time.perf_counter() - start:6.2f} s"
                f"  (ledger: epsilon {charged:.3f} per feature party)"
            )


if __name__ == "__main__":
    main()
