"""Root-signed anchors outside the store: deleting the newest audit entries is detected.

Issue 17, finding 4: removing the last 2 of 5 entries left a valid chain of 3,
and ``verify`` said ok. Each test mounts that attack (or a forged anchor)
against a SQLite store, and the PostgreSQL one where the store tests run it.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.build.run import run
from fedwarden.cli import app
from fedwarden.cli.console import governance_lines
from fedwarden.core.config import RunConfig
from fedwarden.governance.anchor import ANCHOR_FILE, AnchorEveryRound, AuditAnchor, verify_anchored
from fedwarden.governance.audit import AuditError, AuditLog, load_public_key, read_entries, verify
from fedwarden.governance.store import RunStore
from test_governance_audit import EVENTS, SIGNING_KEY, runner, tamper, write_keys
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

FIVE = EVENTS[:5]


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:  # noqa: F811
    with RunStore(store_url) as opened:
        yield opened


@pytest.fixture
def anchored(store: RunStore, tmp_path: Path) -> Path:
    """A log of five entries, anchored in ``tmp_path`` after its last entry."""
    log = AuditLog(store, SIGNING_KEY)
    for event in FIVE:
        log.append(event)
    path = tmp_path / ANCHOR_FILE
    AnchorEveryRound(store, SIGNING_KEY, path).anchor()
    return path


@pytest.mark.parametrize("deleted", [1, 2])
def test_deleting_the_newest_entries_fails_verification_naming_the_anchor(
    store: RunStore,
    store_url: str,  # noqa: F811
    anchored: Path,
    deleted: int,
) -> None:
    tamper(store_url, "DELETE FROM audit_log WHERE sequence >= :first", first=5 - deleted)
    chain_only = verify(store, SIGNING_KEY.public_key())
    assert (chain_only.ok, chain_only.entries) == (True, 5 - deleted)
    result = verify_anchored(store, SIGNING_KEY.public_key(), anchored)
    assert (result.ok, result.entries, result.first_bad) == (False, 5 - deleted, 5 - deleted)
    assert str(anchored) in result.problem
    assert f"entries {5 - deleted} to 4 were deleted" in result.problem


def test_entries_appended_after_the_anchor_verify(store: RunStore, anchored: Path) -> None:
    AuditLog(store, SIGNING_KEY).append(EVENTS[5])
    result = verify_anchored(store, SIGNING_KEY.public_key(), anchored)
    assert (result.ok, result.entries) == (True, 6)


def test_a_tail_deleted_and_replaced_by_as_many_new_entries_fails_at_the_anchor_head(
    store: RunStore,
    store_url: str,  # noqa: F811
    anchored: Path,
) -> None:
    tamper(store_url, "DELETE FROM audit_log WHERE sequence >= 3")
    log = AuditLog(store, SIGNING_KEY)
    log.append(EVENTS[6])
    log.append(EVENTS[7])
    result = verify_anchored(store, SIGNING_KEY.public_key(), anchored)
    assert (result.ok, result.first_bad) == (False, 4)
    assert "rewritten" in result.problem and str(anchored) in result.problem


def test_an_anchor_not_signed_by_the_root_key_is_refused(
    store: RunStore,
    store_url: str,  # noqa: F811
    anchored: Path,
) -> None:
    tamper(store_url, "DELETE FROM audit_log WHERE sequence = 4")
    forger = Ed25519PrivateKey.generate()
    forged = AnchorEveryRound(store, forger, anchored.parent / "forged.json").anchor()
    assert forged.entries == 4
    result = verify_anchored(store, SIGNING_KEY.public_key(), anchored.parent / "forged.json")
    assert not result.ok
    assert "not signed by the log's root key" in result.problem
    fields = json.loads(anchored.read_text())
    anchored.write_text(json.dumps({**fields, "entries": 4}))
    assert "not signed" in verify_anchored(store, SIGNING_KEY.public_key(), anchored).problem


def test_a_missing_or_malformed_anchor_is_an_error_naming_the_file(
    store: RunStore, tmp_path: Path
) -> None:
    with pytest.raises(AuditError, match="no audit anchor"):
        AuditAnchor.read(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(AuditError, match=r"bad\.json is not an audit anchor"):
        verify_anchored(store, SIGNING_KEY.public_key(), tmp_path / "bad.json")


def test_audit_verify_names_the_anchor_when_the_newest_entry_is_deleted(
    store: RunStore,
    store_url: str,  # noqa: F811
    anchored: Path,
    tmp_path: Path,
) -> None:
    _, public = write_keys(tmp_path)
    command = ["audit", "verify", store_url, "--public-key", str(public), "--anchor", str(anchored)]
    intact = runner.invoke(app, command)
    assert intact.exit_code == 0, intact.output
    assert "anchor" in intact.output
    tamper(store_url, "DELETE FROM audit_log WHERE sequence = 4")
    truncated = runner.invoke(app, command)
    assert truncated.exit_code == 1
    assert ANCHOR_FILE in truncated.output and "entries 4 to 4 were deleted" in truncated.output


@pytest.mark.slow
def test_a_governed_run_anchors_its_log_and_prints_the_verify_command_that_catches_a_deletion(
    tmp_path: Path,
) -> None:
    config = RunConfig.from_mapping(
        {
            "name": "anchored",
            "rounds": 2,
            "runs_dir": str(tmp_path / "runs"),
            "data": {"source": "digits", "num_clients": 3},
            "train": {"local_epochs": 1, "batch_size": 16, "learning_rate": 0.1},
            "runtime": {"kind": "grpc", "heartbeat_s": 1},
        }
    )
    result = run(config)
    governance = result.extras["governance"]
    anchor = Path(governance["audit_anchor"])
    assert anchor.parent == Path(str(result.run_dir))
    (verify_line,) = [line for line in governance_lines(result.extras) if "audit verify" in line]
    command = shlex.split(verify_line.strip())
    assert command[:2] == ["fedwarden", "audit"] and command[-2:] == ["--anchor", str(anchor)]
    intact = runner.invoke(app, command[1:])
    assert intact.exit_code == 0, intact.output
    with RunStore(governance["store"]) as store:
        newest = len(read_entries(store)) - 1
        assert AuditAnchor.read(anchor).entries == newest + 1
        tamper(governance["store"], "DELETE FROM audit_log WHERE sequence = :last", last=newest)
        assert verify(store, load_public_key(governance["audit_public_key"])).ok
    truncated = runner.invoke(app, command[1:])
    assert truncated.exit_code == 1
    assert str(anchor) in truncated.output.replace("\n", "")
    assert f"entries {newest} to {newest} were deleted" in truncated.output.replace("\n", "")
