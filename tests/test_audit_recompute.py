"""``fedwarden audit recompute``: a version's privacy claim, rebuilt from the signed audit log.

The end-to-end tests read a copy of the demo's store: the quickstart as ``make demo`` runs it
(three digits hospitals, DP-SGD at each under epsilon 3, ten rounds over gRPC with mutual TLS
and SecAgg+), its model registered as ``quickstart@1.0.0``. An auditor holds the store and
the log's root public key, nothing else. The others write a user-level DP run's rounds
through the server's audit trail, without training.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from fedwarden.build.run import run
from fedwarden.cli import app
from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.records import RoundRecord
from fedwarden.governance.audit import (
    AuditLog,
    ServerAuditTrail,
    audit_report,
    load_public_key,
    read_entries,
    recompute,
    recompute_command,
)
from fedwarden.governance.registry import ModelRegistry
from fedwarden.governance.store import RunStore, audit_log, model_versions
from fedwarden.privacy.accounting import compute_spend, event_from_json, poisson_gaussian
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from test_governance_audit import SIGNING_KEY
from test_governance_registry import CONFIG_HASH, CONFIG_JSON, SPEC, weights

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.toml"
REFERENCE = "quickstart@1.0.0"
CLIENTS = 3
ROUNDS = 10
runner = CliRunner()


@dataclass(frozen=True)
class AuditedRun:
    """The finished run: its runs directory, its summary and the log's root public key."""

    runs_dir: Path
    summary: dict[str, Any]
    public_key_path: Path


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory: pytest.TempPathFactory) -> AuditedRun:
    """``make demo``'s run, with its runs directory (store, PKI, run directory) in a tmp folder."""
    runs_dir = tmp_path_factory.mktemp("recompute-runs")
    values = load_config(QUICKSTART).model_dump()
    values["runs_dir"] = str(runs_dir)
    config = RunConfig.from_mapping(values)
    assert (config.runtime.kind, config.rounds, config.privacy.mechanism) == (
        "grpc",
        ROUNDS,
        "dp_sgd",
    )
    result = run(config)
    assert result.run_dir is not None
    summary = json.loads((Path(result.run_dir) / "summary.json").read_text())
    assert summary["registered_model"] == REFERENCE
    return AuditedRun(
        runs_dir, summary, runs_dir / "federation" / "pki" / "servers" / "server" / "audit.pub"
    )


@pytest.fixture
def store_url(audited_run: AuditedRun, tmp_path: Path) -> str:
    """The URL of a copy of the run's store, which a test may tamper with."""
    for part in audited_run.runs_dir.glob("fedwarden.db*"):
        shutil.copy(part, tmp_path / part.name)
    return f"sqlite:///{tmp_path / 'fedwarden.db'}"


@pytest.mark.slow
def test_recompute_reproduces_the_quickstarts_epsilon_from_the_demos_store(
    audited_run: AuditedRun, store_url: str
) -> None:
    with RunStore(store_url) as store:
        result = recompute(store, load_public_key(audited_run.public_key_path), REFERENCE)
    assert result.ok, result.reason
    assert result.accounting_version == version("dp-accounting")
    (recomputed,) = result.runs
    assert recomputed.reference == REFERENCE
    assert recomputed.claimed_epsilon == audited_run.summary["epsilon"]  # what the demo printed
    assert recomputed.claimed_epsilon == pytest.approx(3.0, rel=2e-3)
    assert recomputed.recomputed_epsilon == pytest.approx(recomputed.claimed_epsilon, rel=1e-9)
    assert len(recomputed.releases) == CLIENTS * ROUNDS
    assert {release.client_id for release in recomputed.releases} == {
        f"client_{index}" for index in range(CLIENTS)
    }
    # The oracle: each silo's audited DP-SGD events composed by the accountant; the largest.
    by_client: dict[str | None, list[Any]] = {}
    for release in recomputed.releases:
        by_client.setdefault(release.client_id, []).append(event_from_json(release.event))
    largest = max(compute_spend(events, 1e-5).epsilon for events in by_client.values())
    assert recomputed.recomputed_epsilon == largest


@pytest.mark.slow
def test_editing_an_audited_dp_event_fails_naming_its_entry(
    audited_run: AuditedRun, store_url: str
) -> None:
    with RunStore(store_url) as store:
        entry = next(e for e in read_entries(store) if e.kind == "round_completed")
        payload = json.loads(entry.payload)
        dp_sgd = payload["dp_events"][0]["event"]["event"]
        dp_sgd["event"]["noise_multiplier"] *= 2  # the operator claims twice the noise
        edited = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        with store.transaction() as connection:
            connection.execute(
                update(audit_log)
                .where(audit_log.c.sequence == entry.sequence)
                .values(payload=edited)
            )
        result = recompute(store, load_public_key(audited_run.public_key_path), REFERENCE)
    assert not result.ok
    assert result.runs == ()
    assert f"entry {entry.sequence} (round_completed with its DP events" in result.reason
    assert "does not match its hash: it was modified" in result.reason

    outcome = runner.invoke(
        app,
        [
            "audit",
            "recompute",
            store_url,
            REFERENCE,
            "--public-key",
            str(audited_run.public_key_path),
        ],
    )
    assert outcome.exit_code == 1
    assert f"entry {entry.sequence}" in outcome.output
    assert "FAILED" in outcome.output


@pytest.mark.slow
def test_an_overstated_claim_in_the_registry_fails_naming_the_claim(
    audited_run: AuditedRun, store_url: str
) -> None:
    with RunStore(store_url) as store:
        with store.reading() as connection:
            dp = json.loads(connection.execute(select(model_versions.c.dp_json)).scalar_one())
        dp["epsilon_spent"] = 1.0  # the registry overstates the privacy
        with store.transaction() as connection:
            connection.execute(update(model_versions).values(dp_json=json.dumps(dp)))
        result = recompute(store, load_public_key(audited_run.public_key_path), REFERENCE)
    assert not result.ok
    assert result.verification.ok
    assert f"the registry's claim for {REFERENCE} (epsilon_spent=1.0" in result.reason
    (recomputed,) = result.runs
    assert recomputed.claimed_epsilon == 1.0
    assert recomputed.recomputed_epsilon == pytest.approx(audited_run.summary["epsilon"])


@pytest.mark.slow
def test_cli_recompute_prints_the_figures_and_the_accountants_version(
    audited_run: AuditedRun, store_url: str
) -> None:
    outcome = runner.invoke(
        app,
        [
            "audit",
            "recompute",
            store_url,
            REFERENCE,
            "--public-key",
            str(audited_run.public_key_path),
            "--json",
        ],
    )
    assert outcome.exit_code == 0, outcome.output
    printed = json.loads(outcome.output)
    assert printed["ok"] is True
    assert printed["accountant"] == f"dp-accounting {version('dp-accounting')}"
    assert len(printed["runs"][0]["releases"]) == CLIENTS * ROUNDS


@pytest.mark.slow
def test_unknown_version_is_refused_with_how_to_name_one(
    audited_run: AuditedRun, store_url: str
) -> None:
    with RunStore(store_url) as store:
        result = recompute(store, load_public_key(audited_run.public_key_path), "quickstart@9.9.9")
    assert not result.ok
    assert "no model version 'quickstart@9.9.9'" in result.reason


@pytest.mark.slow
def test_audit_report_carries_the_dp_events_and_the_recompute_command(
    audited_run: AuditedRun, store_url: str
) -> None:
    with RunStore(store_url) as store:
        report = audit_report(store, load_public_key(audited_run.public_key_path))
        url = store.url
    (privacy,) = report["privacy"]
    assert len(privacy["dp_events"]) == CLIENTS * ROUNDS
    assert all(item["client_id"].startswith("client-") for item in privacy["dp_events"])
    assert all(item["neighboring"] == "add_remove" for item in privacy["dp_events"])
    (model,) = report["lineage"]["models"]
    assert model["recompute_privacy"] == recompute_command(url, REFERENCE)


def user_level_run(store: RunStore, *, record_events: bool = True) -> float:
    """Three rounds of user-level DP (model update and clip count), audited; the epsilon spent.

    Without ``record_events`` the trail has no ledger, as before the log recorded DP events.
    """
    store.create_run("run-1", "mnist", CONFIG_JSON, "/runs/mnist-1")
    log = AuditLog(store, SIGNING_KEY)
    ledger = PrivacyLedger(PrivacyBudget(10.0, 1e-5), privacy_unit="client")
    trail = ServerAuditTrail(
        log, "run-1", dp={"mechanism": "user_level"}, delta=1e-5, ledger=ledger
    )
    if not record_events:
        trail.ledger = None
    for round_index in range(3):
        ledger.charge(round_index, "model_update", poisson_gaussian(0.1, 1.0))
        ledger.charge(round_index, "clip_count", poisson_gaussian(0.1, 5.0))
        trail.round_completed(
            RoundRecord(
                round_index,
                3,
                3,
                0,
                0,
                0,
                {},
                True,
                None,
                None,
                None,
                0.0,
                0,
                0,
                epsilon=ledger.spent().epsilon,
            )
        )
    epsilon = ledger.spent().epsilon
    ModelRegistry(store, log).register(
        "run-1",
        None,
        weights(),
        SPEC.to_json(),
        rounds=3,
        participants=9,
        dp={"mechanism": "user_level", "epsilon_spent": epsilon},
        metrics={},
        config_hash=CONFIG_HASH,
        data_description="digits, 3 clients",
    )
    return epsilon


def test_run_level_releases_compose_together_into_the_ledgers_epsilon(tmp_path: Path) -> None:
    with RunStore.sqlite(tmp_path / "fedwarden.db") as store:
        epsilon = user_level_run(store)
        result = recompute(store, SIGNING_KEY.public_key(), "mnist@1.0.0")
    assert result.ok, result.reason
    (recomputed,) = result.runs
    assert [release.release for release in recomputed.releases] == [
        "model_update",
        "clip_count",
    ] * 3
    assert all(release.client_id is None for release in recomputed.releases)
    assert recomputed.recomputed_epsilon == epsilon == recomputed.claimed_epsilon


def test_a_log_without_the_dp_events_cannot_back_a_claim(tmp_path: Path) -> None:
    with RunStore.sqlite(tmp_path / "fedwarden.db") as store:
        user_level_run(store, record_events=False)
        result = recompute(store, SIGNING_KEY.public_key(), "mnist@1.0.0")
    assert not result.ok
    assert "record an epsilon but not the DP events behind it" in result.reason
