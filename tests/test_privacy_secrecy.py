"""Sampling stays secret from readers of the config and logs: cohorts, commitments, test mode."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.build.run import run
from fedwarden.core.config import RunConfig
from fedwarden.governance.audit import (
    COMMITTED_CLIENT_PREFIX,
    AuditEntry,
    AuditLog,
    RoundStarted,
    ServerAuditTrail,
    UpdateRejected,
    audit_report,
    commit_cohort,
    open_cohort,
    read_entries,
)
from fedwarden.governance.store import RunStore
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.strategies import PoissonSampler

POPULATION = [f"client_{i}" for i in range(8)]


def user_level_config(tmp_path: Path, *, test_mode: bool) -> RunConfig:
    """Ten digits clients, Poisson cohorts at rate 0.5, user-level DP; the seed is public."""
    return RunConfig.from_mapping(
        {
            "seed": 7,
            "rounds": 3,
            "runs_dir": str(tmp_path / "runs"),
            "data": {"source": "digits", "num_clients": 10, "partition": {"scheme": "iid"}},
            "model": {"kind": "softmax"},
            "train": {"local_epochs": 1, "batch_size": 32, "learning_rate": 0.1},
            "sampling": {"scheme": "poisson", "rate": 0.5},
            "runtime": {"kind": "local", "workers": 1},
            "privacy": {
                "mechanism": "user_level",
                "epsilon": 1e3,
                "noise_multiplier": 1.0,
                "reproducible_noise": test_mode,
            },
        }
    )


def cohorts_of_a_run(
    config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[list[str]], dict]:
    """The cohort of every round of a run of ``config`` (spied on the sampler), and its report."""
    drawn: list[list[str]] = []
    sample = PoissonSampler.sample

    def spy(self: PoissonSampler, client_ids: Sequence[str], randomness: NoiseSource) -> list[str]:
        cohort = sample(self, client_ids, randomness)
        drawn.append(cohort)
        return cohort

    with monkeypatch.context() as patch:
        patch.setattr(PoissonSampler, "sample", spy)
        result = run(config)
    return drawn, result.extras["privacy"]


def test_two_dp_runs_with_the_same_public_seed_draw_different_cohorts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15's attack: the cohorts followed from ``seed = 7``, so amplification failed."""
    config = user_level_config(tmp_path, test_mode=False)
    first, report = cohorts_of_a_run(config, monkeypatch)
    second, _ = cohorts_of_a_run(config, monkeypatch)
    assert len(first) == len(second) == 3
    assert first != second  # identical by chance with probability 2**-30
    assert report["test_mode"] is False
    assert "audit log" in report["amplification_holds_against"]
    assert "server operator" in report["amplification_does_not_hold_against"]


def test_test_mode_draws_the_same_cohorts_from_the_seed_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config = user_level_config(tmp_path, test_mode=True)
    with caplog.at_level(logging.WARNING, logger="fedwarden.privacy"):
        first, report = cohorts_of_a_run(config, monkeypatch)
    assert "REPRODUCIBLE (test mode, seed=7)" in caplog.text
    second, _ = cohorts_of_a_run(config, monkeypatch)
    assert first == second
    assert report["test_mode"] is True
    assert report["amplification_holds_against"] == "nobody who can read the config"


def audit_trail(tmp_path: Path) -> tuple[RunStore, Ed25519PrivateKey, ServerAuditTrail, Path]:
    store = RunStore.sqlite(tmp_path / "runs.db")
    key = Ed25519PrivateKey.generate()
    openings = tmp_path / "cohort_openings.json"
    trail = ServerAuditTrail(
        AuditLog(store, key), "run-1", dp={"mechanism": "user_level"}, cohort_openings=openings
    )
    return store, key, trail, openings


def test_the_audit_log_and_its_report_name_no_member_of_a_committed_cohort(
    tmp_path: Path,
) -> None:
    store, key, trail, _ = audit_trail(tmp_path)
    cohorts = [["client_1", "client_4"], ["client_0", "client_4", "client_7"]]
    for round_index, cohort in enumerate(cohorts):
        trail.round_started(round_index, cohort)
        trail.update_rejected(round_index, "client_4", "norm_bound")  # it was sampled
    with store:
        entries = read_entries(store)
        report = audit_report(store, key.public_key(), admin=True)
    rendered = json.dumps([entry.payload for entry in entries]) + json.dumps(report, default=str)
    for client_id in POPULATION:
        assert client_id not in rendered
    # The reader's attack: try every cohort of the population against the commitment. Without
    # the secret salt, no guess matches, not even the true one.
    rejections = [e for e in map(AuditEntry.event, entries) if isinstance(e, UpdateRejected)]
    assert len({rejection.client_id for rejection in rejections}) == 2  # unlinkable
    (first, *_) = (entry.event() for entry in entries)
    assert isinstance(first, RoundStarted) and first.cohort == ()
    assert first.cohort_commitment is not None
    guesses = (
        list(subset)
        for size in range(len(POPULATION) + 1)
        for subset in itertools.combinations(POPULATION, size)
    )
    assert not any(
        commit_cohort(b"", guess) == first.cohort_commitment
        or commit_cohort(bytes(32), guess) == first.cohort_commitment
        for guess in guesses
    )


def test_the_operator_opens_each_commitment_with_the_salt_it_kept(tmp_path: Path) -> None:
    store, _, trail, openings = audit_trail(tmp_path)
    trail.round_started(0, ["client_4", "client_1"])
    trail.update_rejected(0, "client_1", "norm_bound")
    with store:
        entry, rejection_entry = read_entries(store)
    event, rejection = entry.event(), rejection_entry.event()
    assert isinstance(event, RoundStarted) and event.cohort_commitment is not None
    opening = json.loads(openings.read_text())["0"]
    assert oct(openings.stat().st_mode & 0o777) == "0o600"
    assert opening["cohort"] == ["client_1", "client_4"]
    assert open_cohort(event.cohort_commitment, opening["salt"], opening["cohort"])
    assert not open_cohort(event.cohort_commitment, opening["salt"], ["client_1"])  # binding
    assert isinstance(rejection, UpdateRejected)
    named = {
        member: COMMITTED_CLIENT_PREFIX + commit_cohort(bytes.fromhex(opening["salt"]), [member])
        for member in opening["cohort"]
    }
    assert rejection.client_id == named["client_1"]


def test_a_resumed_test_mode_dp_run_ends_with_the_uninterrupted_runs_model_bit_for_bit(
    tmp_path: Path,
) -> None:
    """The cohort and the server's noise streams continue from the checkpoint, not from zero."""
    config = user_level_config(tmp_path, test_mode=True)
    config = config.model_copy(update={"rounds": 4})
    uninterrupted = run(config)
    interrupted = run(config, stop_after=2)
    assert interrupted.rounds == 2 and interrupted.run_dir is not None
    resumed = run(config, resume=Path(interrupted.run_dir))
    assert resumed.rounds == 4
    assert uninterrupted.run_dir is not None and resumed.run_dir is not None
    with (
        np.load(Path(uninterrupted.run_dir) / "model.npz") as expected,
        np.load(Path(resumed.run_dir) / "model.npz") as actual,
    ):
        assert sorted(expected.files) == sorted(actual.files)
        for name in expected.files:
            assert np.array_equal(expected[name], actual[name]), name
