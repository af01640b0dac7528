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
split (same seeds, same batches), then split with DP at the feature parties
(:class:`fedwarden.vertical.GaussianRelease`, clip norm 1): their activations
clipped and noised and their bottom models trained by DP-SGD (per-example
gradients clipped to the same norm, summed, noised), the noise multiplier
calibrated to each target epsilon for the run's events
(:func:`fedwarden.vertical.release.release_events`: two per training epoch,
one for the evaluation pass) at delta 1e-5, replace-one, with the epsilon the
ledger charged each feature party. The label party takes no release here.
Then the same split run over gRPC
(:mod:`fedwarden.vertical.remote`): ``clinic`` and ``lab`` as feature-party
servers on loopback with mutual TLS (kits from a throwaway ``fedwarden pki``
CA), the bank driving, rows aligned by PSI over the wire: without label DP
(``--no-label-dp``, the same run as in one process) and with the default label
DP (randomized response on the bank's labels at epsilon 2,
:mod:`fedwarden.vertical.label_dp`), whose secure randomness makes each run
differ, so it runs :data:`LABEL_DP_RUNS` times (mean, lowest and highest). Seconds are
wall-clock on this machine, per epoch for the split runs; CPU seconds (this
process, which also hosts the party servers' threads) alongside.

Run from the repository root: ``python -m benchmarks.vertical``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sklearn.datasets import load_breast_cancer

from fedwarden.deploy.pki import init_ca, issue
from fedwarden.privacy.accounting import calibrate_noise_multiplier
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.runtime.grpc.credentials import TlsKit
from fedwarden.vertical import (
    ArchitectureSpec,
    FeatureParty,
    FeaturePartyServer,
    GaussianRelease,
    LabelParty,
    PartyTable,
    RemoteFeatureParty,
    SplitArchitecture,
    SplitLearning,
    TrainingPlan,
    align_rows,
    centralized_accuracy,
    train_centralized,
    train_label_party,
)
from fedwarden.vertical.label_dp import DEFAULT_LABEL_EPSILON
from fedwarden.vertical.release import release_events

COLUMNS = {"bank": slice(0, 10), "clinic": slice(10, 20), "lab": slice(20, 30)}
LABEL_PARTY = "bank"
PLAN = TrainingPlan(epochs=30, batch_size=32, learning_rate=0.01, seed=5)
DELTA = 1e-5
EPSILONS = (8.0, 2.0)
LABEL_DP_RUNS = 5

Blocks = dict[str, npt.NDArray[np.float64]]
Rows = npt.NDArray[np.int64]


def party_tables() -> dict[str, PartyTable]:
    """Each party's own table: shuffled, 20 patients dropped, its columns scaled its own way."""
    features, labels = load_breast_cancer(return_X_y=True)
    tables = {}
    for seed, (party, columns) in enumerate(COLUMNS.items()):
        kept = np.random.default_rng(100 + seed).permutation(len(labels))[: len(labels) - 20]
        block = features[kept, columns]
        tables[party] = PartyTable(
            tuple(f"patient-{k}" for k in kept),
            (block - block.mean(axis=0)) / block.std(axis=0),
            labels[kept] if party == LABEL_PARTY else None,
        )
    return tables


def aligned_data(
    tables: dict[str, PartyTable],
) -> tuple[Blocks, npt.NDArray[np.int64], Rows, Rows]:
    """The three parties' aligned column blocks, the labels, and the train and test rows."""
    start = time.perf_counter()
    aligned = align_rows({party: table.identifiers for party, table in tables.items()})
    print(
        f"PSI alignment of 3 parties: {len(aligned.identifiers)} shared patients "
        f"in {time.perf_counter() - start:.2f} s"
    )
    blocks = {party: table.features[aligned.rows[party]] for party, table in tables.items()}
    labels = tables[LABEL_PARTY].labels
    assert labels is not None
    order = np.random.default_rng(7).permutation(len(aligned.identifiers))
    cut = int(0.7 * len(order))
    return blocks, labels[aligned.rows[LABEL_PARTY]], order[:cut], order[cut:]


def grpc_accuracy(
    tables: dict[str, PartyTable],
    spec: ArchitectureSpec,
    kits: Path,
    label_epsilon: float | None = None,
) -> float:
    """Split-learning test accuracy with clinic and lab served over gRPC with mutual TLS.

    ``label_epsilon`` None: without label DP (the opt-out).
    """
    servers = [
        FeaturePartyServer(
            party,
            tables[party].identifiers,
            tables[party].features,
            address="127.0.0.1:0",
            tls=TlsKit.from_dir(kits / "servers" / party),
            driver=LABEL_PARTY,
            bottom_seed=spec.seed,  # the in-process run's seed, for a like-for-like comparison
        )
        for party in list(COLUMNS)[1:]
    ]
    driver = TlsKit.from_dir(kits / "clients" / LABEL_PARTY)
    try:
        with ExitStack() as stack:
            remotes = [
                stack.enter_context(
                    RemoteFeatureParty.connect(f"127.0.0.1:{server.serve()}", driver)
                )
                for server in servers
            ]
            result = train_label_party(
                LABEL_PARTY,
                tables[LABEL_PARTY],
                remotes,
                kind=spec.kind,
                plan=PLAN,
                architecture_seed=spec.seed,
                label_epsilon=label_epsilon,
            )
    finally:
        for server in servers:
            server.stop()
    return result.accuracy


def issue_kits(directory: Path) -> Path:
    """A throwaway CA with server kits for clinic and lab and a client kit for the bank."""
    init_ca(directory, "benchmark")
    for party in list(COLUMNS)[1:]:
        issue(directory, "server", party)
    issue(directory, "client", LABEL_PARTY)
    return directory


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


def centralized_run(
    spec: ArchitectureSpec, blocks: Blocks, labels: npt.NDArray[np.int64], rows: tuple[Rows, Rows]
) -> float:
    """Test accuracy of the architecture trained in one place."""
    central = spec.build().stacked()
    ordered = [blocks[party] for party in COLUMNS]
    train_centralized(central, ordered, labels, rows[0], PLAN)
    return centralized_accuracy(central, ordered, labels, rows[1])


def in_process_run(
    spec: ArchitectureSpec, blocks: Blocks, labels: npt.NDArray[np.int64], rows: tuple[Rows, Rows]
) -> float:
    """Test accuracy of split learning with every party in this process, without DP."""
    return split_accuracy(spec.build(), blocks, labels, rows, None)[0]


def timed(label: str, run: Callable[[], float], epochs: int, note: str = "") -> None:
    """Print ``run()``'s accuracy, its wall and CPU seconds (per epoch when ``epochs`` > 1)."""
    wall, cpu = time.perf_counter(), time.process_time()
    accuracy = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    unit = " per epoch" if epochs > 1 else ""
    print(
        f"  {label:28s} accuracy {accuracy:.4f}  {wall / epochs:6.3f} s wall, "
        f"{cpu / epochs:6.3f} s CPU{unit}{note}"
    )


def main() -> None:
    """Print centralized, split, DP-split and gRPC-split accuracy for both architectures."""
    torch.set_num_threads(1)
    tables = party_tables()
    blocks, labels, train, test = aligned_data(tables)
    specs = {
        "split neural network": ArchitectureSpec("mlp", (10, 10, 10), 2, seed=3),
        "vertical logistic regression": ArchitectureSpec("logistic", (10, 10, 10), 2, seed=3),
    }
    probe = GaussianRelease(clip_norm=1.0, noise_multiplier=1.0)
    events = PLAN.epochs * len(release_events(probe, training=True)) + len(
        release_events(probe, training=False)
    )
    with tempfile.TemporaryDirectory() as directory:
        kits = issue_kits(Path(directory))
        for name, spec in specs.items():
            print(f"\n{name} ({PLAN.epochs} epochs, batch {PLAN.batch_size})")

            rows = (train, test)
            timed("centralized", partial(centralized_run, spec, blocks, labels, rows), PLAN.epochs)
            timed(
                "split, in one process",
                partial(in_process_run, spec, blocks, labels, rows),
                PLAN.epochs,
            )
            timed(
                "split, gRPC + mTLS, with PSI",
                partial(grpc_accuracy, tables, spec, kits),
                PLAN.epochs,
                "  (--no-label-dp)",
            )
            wall, cpu = time.perf_counter(), time.process_time()
            accuracies = [
                grpc_accuracy(tables, spec, kits, DEFAULT_LABEL_EPSILON)
                for _ in range(LABEL_DP_RUNS)
            ]
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            epochs = LABEL_DP_RUNS * PLAN.epochs
            label = f"  ... label DP epsilon {DEFAULT_LABEL_EPSILON:g}"
            print(
                f"  {label:28s} accuracy {np.mean(accuracies):.4f}  {wall / epochs:6.3f} s wall, "
                f"{cpu / epochs:6.3f} s CPU per epoch  (default; {LABEL_DP_RUNS} runs: "
                f"{min(accuracies):.4f} to {max(accuracies):.4f})"
            )
            for epsilon in EPSILONS:
                multiplier = calibrate_noise_multiplier(
                    epsilon, DELTA, events, neighboring="replace_one"
                )
                release = GaussianRelease(clip_norm=1.0, noise_multiplier=multiplier)
                wall, cpu = time.perf_counter(), time.process_time()
                accuracy, charged = split_accuracy(
                    spec.build(), blocks, labels, (train, test), release
                )
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                label = f"split, DP epsilon {epsilon:g} (z={multiplier:.2f})"
                print(
                    f"  {label:28s} accuracy {accuracy:.4f}  {wall / PLAN.epochs:6.3f} s wall, "
                    f"{cpu / PLAN.epochs:6.3f} s CPU per epoch"
                    f"  (ledger: epsilon {charged:.3f} per feature party)"
                )


if __name__ == "__main__":
    main()
