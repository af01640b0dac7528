"""Compliance reports as PDF, and retention from the command line, both read from the audit log.

The PDF tests use weasyprint (extra ``report``) and pypdf (extra ``test``), both in the test
lock; every retention test runs on SQLite and on a throwaway PostgreSQL database (the fixtures
of the run store's tests).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pypdf
import pytest
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.governance import (
    AuditLog,
    ClientQuarantined,
    ModelRegistry,
    RetentionDeletion,
    RoundCompleted,
    RoundStarted,
    RunCreated,
    RunStore,
    UpdateRejected,
)
from fedwarden.governance.audit import pseudonym, pseudonym_salt
from test_governance_audit import SIGNING_KEY, write_keys
from test_governance_registry import (
    CONFIG_JSON,
    audited,
    register,
    registry,  # noqa: F401  (fixture)
    serve_in_turn,
    stages,
    store,  # noqa: F401  (fixture)
)
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

RUN_ID = "nightly-7f3a"
EPSILON = 2.4681
CLIENTS = ("hospital-alpha", "hospital-beta", "hospital-gamma")
DP = {"clip_norm": 1.0, "noise_multiplier": 1.1, "mechanism": "gaussian"}
runner = CliRunner()


# PDF.


@pytest.fixture
def audited_store(tmp_path: Path) -> str:
    """The URL of a SQLite store whose signed audit log records a run of three clients.

    The run's model is registered and promoted, so the report's widest table (the models,
    with their metrics and stage changes) is in it too.
    """
    url = f"sqlite:///{tmp_path / 'fedwarden.db'}"
    with RunStore(url) as opened:
        opened.create_run(RUN_ID, "mnist", CONFIG_JSON, "/runs/nightly")
        log = AuditLog(opened, SIGNING_KEY)
        for event in (
            RunCreated(RUN_ID, "ab" * 32, "0.1.0"),
            RoundStarted(RUN_ID, 0, CLIENTS, DP),
            UpdateRejected(RUN_ID, 0, "hospital-gamma", "norm_bound"),
            RoundCompleted(RUN_ID, 0, 2, EPSILON / 2, 1e-5, True),
            RoundStarted(RUN_ID, 1, CLIENTS, DP),
            ClientQuarantined(RUN_ID, "hospital-gamma", "norm_bound twice"),
            RoundCompleted(RUN_ID, 1, 2, EPSILON, 1e-5, True),
        ):
            log.append(event)
        registry = ModelRegistry(opened, log)
        register(registry, run_id=RUN_ID)
        registry.promote("1.0.0", by="nightly-retrain", pilot_accuracy=0.9)
    return url


def pdf_report(url: str, folder: Path, *options: str) -> tuple[str, list[float], float]:
    """``fedwarden audit report --format pdf``: the PDF's text, its x positions, page width.

    The text has every whitespace removed, since a long value may wrap anywhere in its cell.
    """
    _, public = write_keys(folder)
    output = folder / "report.pdf"
    result = runner.invoke(
        app,
        [
            *("audit", "report", url, "--public-key", str(public)),
            *("--format", "pdf", "--output", str(output), *options),
        ],
    )
    assert result.exit_code == 0, result.output
    reader = pypdf.PdfReader(output)
    positions: list[float] = []

    def record_position(text: str, cm: Any, tm: Any, font: Any, size: Any) -> None:
        """Where a text fragment starts, in page units (text matrix times current matrix)."""
        if text.strip():
            positions.append(tm[4] * cm[0] + tm[5] * cm[2] + cm[4])

    text = "".join(page.extract_text(visitor_text=record_position) for page in reader.pages)
    widths = {float(page.mediabox.width) for page in reader.pages}
    return "".join(text.split()), positions, max(widths)


def test_pdf_report_names_the_run_its_epsilon_and_only_pseudonymous_clients(
    audited_store: str, tmp_path: Path
) -> None:
    text, _, _ = pdf_report(audited_store, tmp_path)
    with RunStore(audited_store) as opened:
        salt = pseudonym_salt(opened)
    assert "Auditlogverified:9entries" in text
    assert RUN_ID in text
    assert str(EPSILON) in text
    for client_id in CLIENTS:
        assert pseudonym(salt, client_id) in text
        assert client_id not in text


def test_admin_pdf_report_names_the_clients(audited_store: str, tmp_path: Path) -> None:
    text, _, _ = pdf_report(audited_store, tmp_path, "--admin")
    with RunStore(audited_store) as opened:
        salt = pseudonym_salt(opened)
    for client_id in CLIENTS:
        assert client_id in text
        assert pseudonym(salt, client_id) not in text


def test_pdf_report_keeps_every_column_on_the_page(audited_store: str, tmp_path: Path) -> None:
    _, positions, page_width = pdf_report(audited_store, tmp_path)
    assert positions
    assert max(positions) < page_width


# Retention.


def retain(url: str, *options: str) -> Any:
    """``fedwarden models retain URL OPTIONS`` through the command line."""
    return runner.invoke(app, ["models", "retain", url, *options])


def test_cli_retain_deletes_old_weights_audits_each_and_the_chain_verifies(
    registry: ModelRegistry,  # noqa: F811
    store: RunStore,  # noqa: F811
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    serve_in_turn(registry, 4)
    register(registry)
    key, public = write_keys(tmp_path)
    result = retain(store_url, "--keep-last", "1", "--by", "retention-job", "--audit-key", str(key))
    assert result.exit_code == 0, result.output
    assert "mnist@1.1.0" in result.output and "mnist@1.0.0" in result.output
    assert {found.version for found in registry.list() if found.weights_deleted} == {
        "1.0.0",
        "1.1.0",
    }
    assert stages(registry) == {
        "1.0.0": "deprecated",
        "1.1.0": "deprecated",
        "1.2.0": "deprecated",
        "1.3.0": "production",
        "1.4.0": "candidate",
    }
    assert audited(store)[-2:] == [
        RetentionDeletion("model_weights", "mnist@1.1.0", "retention-job"),
        RetentionDeletion("model_weights", "mnist@1.0.0", "retention-job"),
    ]
    verified = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(public)])
    assert verified.exit_code == 0, verified.output
    assert f"OK: {len(audited(store))} audit entries verified" in verified.output
    report_path = tmp_path / "report.json"
    reported = runner.invoke(
        app,
        [
            *("audit", "report", store_url, "--public-key", str(public)),
            *("--output", str(report_path)),
        ],
    )
    assert reported.exit_code == 0, reported.output
    deletions = json.loads(report_path.read_text())["retention_deletions"]
    assert [(deletion["target"], deletion["by"]) for deletion in deletions] == [
        ("mnist@1.1.0", "retention-job"),
        ("mnist@1.0.0", "retention-job"),
    ]


def test_cli_retain_keep_last_zero_never_deletes_production_or_candidates(
    registry: ModelRegistry,  # noqa: F811
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    serve_in_turn(registry, 2)
    register(registry)
    key, _ = write_keys(tmp_path)
    result = retain(store_url, "--keep-last", "0", "--by", "retention-job", "--audit-key", str(key))
    assert result.exit_code == 0, result.output
    assert {found.version: found.weights_deleted for found in registry.list()} == {
        "1.0.0": True,
        "1.1.0": False,
        "1.2.0": False,
    }
    assert registry.production("mnist") == registry.show("1.1.0")


def test_cli_retain_without_the_audit_key_deletes_nothing(
    registry: ModelRegistry,  # noqa: F811
    store: RunStore,  # noqa: F811
    store_url: str,  # noqa: F811
) -> None:
    serve_in_turn(registry, 3)
    entries = len(audited(store))
    result = retain(store_url, "--keep-last", "0", "--by", "retention-job")
    assert result.exit_code == 2
    assert "--audit-key" in result.output
    assert not any(found.weights_deleted for found in registry.list())
    assert len(audited(store)) == entries


def test_cli_retain_refuses_a_negative_keep_last(
    registry: ModelRegistry,  # noqa: F811
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    serve_in_turn(registry, 3)
    key, _ = write_keys(tmp_path)
    result = retain(
        store_url, "--keep-last", "-1", "--by", "retention-job", "--audit-key", str(key)
    )
    assert result.exit_code == 2
    assert "keep_last -1" in result.output
    assert not any(found.weights_deleted for found in registry.list())
