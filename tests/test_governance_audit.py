"""The audit log: signed and hash-chained, it names the first entry anyone tampered with.

Every test runs on SQLite and, where PostgreSQL and psycopg are installed, on a throwaway
PostgreSQL database (the fixtures of the run store's tests).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError
from typer.testing import CliRunner

from fedwarden.cli import app
from fedwarden.governance import (
    AuditError,
    AuditLog,
    BudgetChanged,
    ClientQuarantined,
    RoundCompleted,
    RoundStarted,
    RunCreated,
    RunStore,
    UpdateRejected,
    audit_report,
    verify,
)
from fedwarden.governance.audit import (
    EVENT_TYPES,
    GENESIS_HASH,
    AlertRaised,
    AuditEvent,
    SignerDelegated,
    SignerRevoked,
    canonical_json,
    entry_hash,
    load_public_key,
    load_signing_key,
    pseudonym,
    pseudonym_salt,
    public_key_hex,
    read_entries,
    render_html,
    render_json,
)
from test_governance_store import postgres_server, store_url  # noqa: F401  (fixtures)

SIGNING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
FORGER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
SERVING_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
SERVING = public_key_hex(SERVING_KEY.public_key())
ALERT = AlertRaised("run-1", None, "drift_psi", "feature 3 drifted", None, "digits@1.0.0", 3)
DP = {"clip_norm": 1.0, "noise_multiplier": 1.1, "mechanism": "gaussian"}
EVENTS: list[AuditEvent] = [
    RunCreated("run-1", "ab" * 32, "0.1.0"),
    RoundStarted("run-1", 0, ("alice", "bob", "carol"), DP),
    UpdateRejected("run-1", 0, "carol", "norm_bound"),
    RoundCompleted("run-1", 0, 2, 0.5, 1e-5, True),
    RoundStarted("run-1", 1, ("alice", "bob", "carol"), DP),
    UpdateRejected("run-1", 1, "carol", "norm_bound"),
    UpdateRejected("run-1", None, "mallory", "not_enrolled"),
    ClientQuarantined("run-1", "carol", "norm_bound twice"),
    RoundCompleted("run-1", 1, 2, 0.8, 1e-5, True),
    BudgetChanged("run-1", 1.0, 2.0, "dana"),
]
FORGED_INSERT = (
    "INSERT INTO audit_log (sequence, timestamp, kind, payload, previous_hash, entry_hash, "
    "signature) VALUES (:sequence, :timestamp, :kind, :payload, :previous_hash, :entry_hash, "
    ":signature)"
)
runner = CliRunner()


@pytest.fixture
def store(store_url: str) -> Iterator[RunStore]:  # noqa: F811
    """An open, empty store."""
    with RunStore(store_url) as opened:
        yield opened


@pytest.fixture
def log(store: RunStore) -> AuditLog:
    """An audit log holding :data:`EVENTS`, entries 0 to 9."""
    audit = AuditLog(store, SIGNING_KEY)
    for event in EVENTS:
        audit.append(event)
    return audit


def tamper(url: str, *statements: str, **values: object) -> None:
    """Run SQL (with ``:name`` bound to ``values``) behind the audit log's back, in one go."""
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement), values)
    engine.dispose()


def write_keys(folder: Path) -> tuple[Path, Path]:
    """The signing key and its public key as PEM files in ``folder``."""
    private = folder / "audit.key"
    public = folder / "audit.pub"
    private.write_bytes(
        SIGNING_KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        SIGNING_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


# Events.


def test_event_payload_is_canonical_json_with_sorted_keys_and_no_spaces() -> None:
    event = RoundStarted("run-1", 3, ("bob", "alice"), {"z": 1, "a": 2.5})
    assert canonical_json(event.payload()) == (
        '{"cohort":["bob","alice"],"cohort_commitment":null,"dp":{"a":2.5,"z":1},'
        '"round_index":3,"run_id":"run-1"}'
    )
    assert event.kind == "round_started"


def test_event_reads_back_equal_from_its_payload() -> None:
    for event in EVENTS:
        assert type(event).from_payload(json.loads(canonical_json(event.payload()))) == event


def test_every_event_type_is_read_back_by_its_own_kind() -> None:
    assert len(set(EVENT_TYPES.values())) == len(EVENT_TYPES)
    for kind, event_type in EVENT_TYPES.items():
        assert event_type.kind == kind


def test_nan_is_refused_and_nothing_is_appended(store: RunStore) -> None:
    audit = AuditLog(store, SIGNING_KEY)
    with pytest.raises(AuditError, match="NaN"):
        audit.append(RoundCompleted("run-1", 0, 3, float("nan"), 1e-5, True))
    assert read_entries(store) == []


# Entries.


def test_entries_are_contiguous_and_chained_from_64_zeros(log: AuditLog) -> None:
    entries = read_entries(log.store)
    assert [entry.sequence for entry in entries] == list(range(len(EVENTS)))
    assert entries[0].previous_hash == GENESIS_HASH == "0" * 64
    for previous, entry in itertools.pairwise(entries):
        assert entry.previous_hash == previous.entry_hash
    for entry, event in zip(entries, EVENTS, strict=True):
        assert entry.kind == event.kind
        assert entry.event() == event


def test_entry_hash_is_sha256_of_previous_hash_and_canonical_entry(log: AuditLog) -> None:
    entry = read_entries(log.store)[3]
    document = json.dumps(
        {
            "kind": entry.kind,
            "payload": json.loads(entry.payload),
            "sequence": 3,
            "timestamp": entry.timestamp,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    expected = hashlib.sha256(bytes.fromhex(entry.previous_hash) + document.encode()).hexdigest()
    assert entry.entry_hash == expected
    assert entry_hash(entry.previous_hash, 3, entry.timestamp, entry.kind, entry.payload) == (
        expected
    )
    SIGNING_KEY.public_key().verify(bytes.fromhex(entry.signature), bytes.fromhex(expected))
    assert entry.timestamp.endswith("+00:00")


def test_database_refuses_a_second_entry_with_the_same_sequence(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    with pytest.raises(IntegrityError):
        tamper(
            store_url,
            "INSERT INTO audit_log (sequence, timestamp, kind, payload, previous_hash, "
            "entry_hash, signature) SELECT sequence, timestamp, kind, payload, previous_hash, "
            "entry_hash, signature FROM audit_log WHERE sequence = 4",
        )


def test_concurrent_appends_from_many_threads_stay_contiguous_and_verify(store: RunStore) -> None:
    audit = AuditLog(store, SIGNING_KEY)
    failures: list[BaseException] = []

    def append_from_thread(number: int) -> None:
        try:
            audit.append(UpdateRejected("run-1", 0, f"client-{number}", "shape"))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=append_from_thread, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    entries = read_entries(store)
    assert [entry.sequence for entry in entries] == list(range(24))
    assert verify(store, SIGNING_KEY.public_key()).ok


# Verification.


def test_untampered_log_verifies(log: AuditLog) -> None:
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.entries, result.first_bad, result.problem) == (
        True,
        len(EVENTS),
        None,
        "",
    )
    assert result.last_hash == read_entries(log.store)[-1].entry_hash


def test_empty_log_verifies_with_zero_entries(store: RunStore) -> None:
    result = verify(store, SIGNING_KEY.public_key())
    assert (result.ok, result.entries, result.last_hash) == (True, 0, GENESIS_HASH)


def test_log_continued_after_a_restart_verifies(
    store_url: str,  # noqa: F811
) -> None:
    with RunStore(store_url) as before:
        audit = AuditLog(before, SIGNING_KEY)
        for event in EVENTS[:4]:
            audit.append(event)
    with RunStore(store_url) as after:
        continued = AuditLog(after, SIGNING_KEY)
        for event in EVENTS[4:]:
            continued.append(event)
        entries = read_entries(after)
        assert [entry.sequence for entry in entries] == list(range(len(EVENTS)))
        assert entries[4].previous_hash == entries[3].entry_hash
        assert verify(after, SIGNING_KEY.public_key()).ok


def test_log_cannot_be_continued_with_another_signing_key(log: AuditLog) -> None:
    with pytest.raises(AuditError, match="not signed with this key"):
        AuditLog(log.store, FORGER_KEY)


def test_verification_with_another_public_key_fails_at_the_first_entry(log: AuditLog) -> None:
    result = verify(log.store, FORGER_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, 0)
    assert "signature" in result.problem


def test_payload_edited_in_the_database_fails_at_that_entry(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    tamper(
        store_url,
        "UPDATE audit_log SET payload = REPLACE(payload, '0.8', '0.4') WHERE sequence = 8",
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad, result.entries) == (False, 8, len(EVENTS))
    assert "modified" in result.problem


def test_payload_rewritten_with_a_recomputed_hash_fails_on_its_signature(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    entry = read_entries(log.store)[5]
    payload = entry.payload.replace("norm_bound", "shape")
    forged_hash = entry_hash(entry.previous_hash, 5, entry.timestamp, entry.kind, payload)
    tamper(
        store_url,
        "UPDATE audit_log SET payload = :payload, entry_hash = :hash WHERE sequence = 5",
        payload=payload,
        hash=forged_hash,
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert result.first_bad == 5
    assert "forged" in result.problem


def test_deleted_entry_fails_at_its_sequence(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    tamper(store_url, "DELETE FROM audit_log WHERE sequence = 6")
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad, result.entries) == (False, 6, len(EVENTS) - 1)
    assert "deleted" in result.problem


def test_forged_entry_appended_at_the_end_fails_at_it(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    last = read_entries(log.store)[-1]
    payload = canonical_json(BudgetChanged("run-1", 2.0, 100.0, "mallory").payload())
    timestamp = last.timestamp
    forged_hash = entry_hash(last.entry_hash, 10, timestamp, "budget_changed", payload)
    signature = FORGER_KEY.sign(bytes.fromhex(forged_hash)).hex()
    tamper(
        store_url,
        FORGED_INSERT,
        sequence=10,
        timestamp=timestamp,
        kind="budget_changed",
        payload=payload,
        previous_hash=last.entry_hash,
        entry_hash=forged_hash,
        signature=signature,
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad, result.entries) == (False, 10, len(EVENTS) + 1)
    assert "forged" in result.problem


def test_forged_entry_inserted_in_the_middle_fails_at_it(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    before = read_entries(log.store)[2]
    payload = canonical_json(RoundCompleted("run-1", 0, 3, 0.1, 1e-5, True).payload())
    forged_hash = entry_hash(before.entry_hash, 3, before.timestamp, "round_completed", payload)
    signature = FORGER_KEY.sign(bytes.fromhex(forged_hash)).hex()
    tamper(
        store_url,
        "UPDATE audit_log SET sequence = sequence + 1000 WHERE sequence >= 3",
        "UPDATE audit_log SET sequence = sequence - 999 WHERE sequence >= 1000",
        FORGED_INSERT,
        sequence=3,
        timestamp=before.timestamp,
        kind="round_completed",
        payload=payload,
        previous_hash=before.entry_hash,
        entry_hash=forged_hash,
        signature=signature,
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, 3)
    assert "forged" in result.problem


def test_swapped_sequences_fail_at_the_earlier_entry_as_reordered(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    tamper(
        store_url,
        "UPDATE audit_log SET sequence = -1 WHERE sequence = 4",
        "UPDATE audit_log SET sequence = 4 WHERE sequence = 7",
        "UPDATE audit_log SET sequence = 7 WHERE sequence = -1",
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, 4)
    assert "reordered" in result.problem


def test_signed_entry_replayed_in_another_place_fails_there(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    columns = "timestamp, kind, payload, previous_hash, entry_hash, signature"
    tamper(
        store_url,
        "DELETE FROM audit_log WHERE sequence = 5",
        f"INSERT INTO audit_log (sequence, {columns}) "
        f"SELECT 5, {columns} FROM audit_log WHERE sequence = 2",
    )
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, 5)
    assert "follows entry 1" in result.problem


def forge(url: str, store: RunStore, signer: Ed25519PrivateKey, event: AuditEvent) -> int:
    """Insert ``event`` after the last entry, correctly chained and signed by ``signer``."""
    last = read_entries(store)[-1]
    sequence = last.sequence + 1
    payload = canonical_json(event.payload())
    forged_hash = entry_hash(last.entry_hash, sequence, last.timestamp, event.kind, payload)
    tamper(
        url,
        FORGED_INSERT,
        sequence=sequence,
        timestamp=last.timestamp,
        kind=event.kind,
        payload=payload,
        previous_hash=last.entry_hash,
        entry_hash=forged_hash,
        signature=signer.sign(bytes.fromhex(forged_hash)).hex(),
    )
    return sequence


# Delegated signers.


@pytest.fixture
def serving(log: AuditLog) -> AuditLog:
    """The log of :data:`EVENTS`, then entry 10 delegating alert_raised to SERVING_KEY."""
    log.append(SignerDelegated(SERVING, ("alert_raised",), "dana", "serving"))
    return AuditLog(log.store, SERVING_KEY, root_public_key=SIGNING_KEY.public_key())


def test_a_delegated_key_writes_alert_entries_that_verify(serving: AuditLog) -> None:
    entry = serving.append(ALERT)
    assert SERVING_KEY.public_key() == serving.signer_public_key != serving.public_key
    SERVING_KEY.public_key().verify(bytes.fromhex(entry.signature), bytes.fromhex(entry.entry_hash))
    assert (entry.sequence, entry.event()) == (len(EVENTS) + 1, ALERT)
    result = verify(serving.store, SIGNING_KEY.public_key())
    assert (result.ok, result.entries) == (True, len(EVENTS) + 2)


def test_the_root_key_continues_a_log_whose_last_entry_a_delegate_signed(
    serving: AuditLog,
) -> None:
    serving.append(ALERT)
    AuditLog(serving.store, SIGNING_KEY).append(RoundStarted("run-1", 2, ("alice",), DP))
    assert verify(serving.store, SIGNING_KEY.public_key()).ok


def test_a_delegated_key_may_not_append_a_kind_it_was_not_delegated(serving: AuditLog) -> None:
    for event in (
        BudgetChanged("run-1", 2.0, 100.0, "mallory"),
        SignerDelegated(public_key_hex(FORGER_KEY.public_key()), ("alert_raised",), "m", "x"),
        SignerRevoked(SERVING, "mallory", "cover tracks"),
    ):
        with pytest.raises(AuditError, match=f"may sign only alert_raised, not {event.kind}"):
            serving.append(event)
    assert len(read_entries(serving.store)) == len(EVENTS) + 1


def test_an_entry_of_another_kind_signed_by_a_delegated_key_fails_at_it(
    serving: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    serving.append(ALERT)
    forged = forge(store_url, serving.store, SERVING_KEY, BudgetChanged("run-1", 2.0, 9.0, "m"))
    serving.append(ALERT)
    result = verify(serving.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, forged)
    assert "'serving'" in result.problem and "kind not delegated" in result.problem


def test_a_delegation_signed_by_a_delegated_key_fails_at_it(
    serving: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    grant = SignerDelegated(public_key_hex(FORGER_KEY.public_key()), ("budget_changed",), "m", "x")
    forged = forge(store_url, serving.store, SERVING_KEY, grant)
    forge(store_url, serving.store, FORGER_KEY, BudgetChanged("run-1", 2.0, 9.0, "m"))
    result = verify(serving.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, forged)
    assert "wrong signer" in result.problem
    with pytest.raises(AuditError, match="delegations cannot be trusted"):
        AuditLog(serving.store, FORGER_KEY, root_public_key=SIGNING_KEY.public_key())


def test_a_revoked_key_appends_nothing_and_its_later_entries_fail(
    serving: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    serving.append(ALERT)
    AuditLog(serving.store, SIGNING_KEY).append(SignerRevoked(SERVING, "dana", "host lost"))
    assert verify(serving.store, SIGNING_KEY.public_key()).ok
    with pytest.raises(AuditError, match="revoked at entry 12"):
        serving.append(ALERT)
    with pytest.raises(AuditError, match="revoked at entry 12"):
        AuditLog(serving.store, SERVING_KEY, root_public_key=SIGNING_KEY.public_key())
    forged = forge(store_url, serving.store, SERVING_KEY, ALERT)
    result = verify(serving.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, forged)
    assert "revoked at entry 12" in result.problem


def test_an_entry_signed_before_its_key_was_delegated_fails_as_unknown_key(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    forged = forge(store_url, log.store, SERVING_KEY, ALERT)
    log.append(SignerDelegated(SERVING, ("alert_raised",), "dana", "serving"))
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, forged)
    assert "unknown key" in result.problem


def test_a_key_without_a_delegation_cannot_open_the_log(log: AuditLog) -> None:
    with pytest.raises(AuditError, match="neither the log's root key nor a key it delegated"):
        AuditLog(log.store, SERVING_KEY, root_public_key=SIGNING_KEY.public_key())


def test_a_delegation_forged_in_the_database_opens_nothing_and_fails_at_it(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    grant = SignerDelegated(SERVING, ("alert_raised",), "mallory", "serving")
    forged = forge(store_url, log.store, FORGER_KEY, grant)
    with pytest.raises(AuditError, match="delegations cannot be trusted"):
        AuditLog(log.store, SERVING_KEY, root_public_key=SIGNING_KEY.public_key())
    result = verify(log.store, SIGNING_KEY.public_key())
    assert (result.ok, result.first_bad) == (False, forged)
    assert "unknown key" in result.problem


@pytest.mark.parametrize(
    ("public_key", "kinds", "problem"),
    [
        (public_key_hex(SIGNING_KEY.public_key()), ("alert_raised",), "root key cannot be"),
        (SERVING, ("signer_delegated",), "cannot be delegated"),
        (SERVING, ("alert_raised", "no_such_kind"), "cannot be delegated"),
        (SERVING, (), "cannot be delegated"),
        (SERVING.upper(), ("alert_raised",), "not a raw Ed25519 public key"),
        ("ab" * 16, ("alert_raised",), "not a raw Ed25519 public key"),
    ],
)
def test_an_unsound_delegation_is_refused_and_nothing_is_appended(
    log: AuditLog, public_key: str, kinds: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(AuditError, match=problem):
        log.append(SignerDelegated(public_key, kinds, "dana", "serving"))
    assert len(read_entries(log.store)) == len(EVENTS)


def test_a_key_is_delegated_once_and_revoked_once(serving: AuditLog) -> None:
    root = AuditLog(serving.store, SIGNING_KEY)
    with pytest.raises(AuditError, match="already delegated at entry 10"):
        root.append(SignerDelegated(SERVING, ("update_rejected",), "dana", "serving"))
    root.append(SignerRevoked(SERVING, "dana", "rotated"))
    with pytest.raises(AuditError, match="already revoked at entry 11"):
        root.append(SignerRevoked(SERVING, "dana", "rotated"))
    with pytest.raises(AuditError, match="was never delegated"):
        root.append(SignerRevoked(public_key_hex(FORGER_KEY.public_key()), "dana", "?"))


def test_report_lists_delegations_and_revocations(serving: AuditLog) -> None:
    serving.append(ALERT)
    AuditLog(serving.store, SIGNING_KEY).append(SignerRevoked(SERVING, "erin", "host lost"))
    report = audit_report(serving.store, SIGNING_KEY.public_key())
    signers = report["signers"]
    assert signers["root_public_key"] == public_key_hex(SIGNING_KEY.public_key())
    (delegation,) = signers["delegations"]
    assert {key: delegation[key] for key in ("name", "public_key", "kinds", "by", "sequence")} == {
        "name": "serving",
        "public_key": SERVING,
        "kinds": ["alert_raised"],
        "by": "dana",
        "sequence": 10,
    }
    assert (delegation["revoked_by"], delegation["reason"]) == ("erin", "host lost")
    assert delegation["revoked_at"] == read_entries(serving.store)[12].timestamp
    assert SERVING in render_html(report)


# Reports.


def test_report_gives_each_runs_guarantee_rejections_and_quarantines(log: AuditLog) -> None:
    report = audit_report(log.store, SIGNING_KEY.public_key())
    assert report["verification"]["ok"] is True
    assert report["verification"]["entries"] == len(EVENTS)
    (privacy,) = report["privacy"]
    assert (privacy["run_id"], privacy["epsilon"], privacy["delta"]) == ("run-1", 0.8, 1e-5)
    assert privacy["budget_changes"][0]["new_epsilon"] == 2.0
    (integrity,) = report["participant_integrity"]
    assert integrity["rejections_by_reason"] == {"norm_bound": 2, "not_enrolled": 1}
    assert [item["reason"] for item in integrity["quarantined"]] == ["norm_bound twice"]
    (run,) = report["lineage"]["runs"]
    assert run["config_hash"] == "ab" * 32
    # Rounds recorded as round_index 0 and 1 read as rounds 1 and 2.
    assert [(item["round"], item["participants"]) for item in run["rounds"]] == [
        (1, 2),
        (2, 2),
    ]


def test_report_pseudonymizes_client_ids_with_a_salted_hmac(log: AuditLog) -> None:
    report = audit_report(log.store, SIGNING_KEY.public_key())
    rendered = render_json(report)
    for client_id in ("alice", "bob", "carol", "mallory"):
        assert client_id not in rendered
    salt = pseudonym_salt(log.store)
    assert len(salt) == 32
    carol = pseudonym(salt, "carol")
    assert re.fullmatch(r"client-[0-9a-f]{12}", carol)
    assert report["participant_integrity"][0]["quarantined"][0]["client"] == carol
    cohort = report["lineage"]["runs"][0]["rounds"][0]["cohort"]
    assert sorted(cohort) == sorted(pseudonym(salt, name) for name in ("alice", "bob", "carol"))


def test_pseudonyms_are_stable_per_store_and_differ_between_stores(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    first = audit_report(log.store, SIGNING_KEY.public_key())
    with RunStore(store_url) as reopened:
        again = audit_report(reopened, SIGNING_KEY.public_key())
    assert first["participant_integrity"] == again["participant_integrity"]
    with RunStore(f"sqlite:///{tmp_path / 'other.db'}") as other:
        AuditLog(other, SIGNING_KEY).append(ClientQuarantined("run-1", "carol", "norm_bound"))
        elsewhere = audit_report(other, SIGNING_KEY.public_key())
    assert (
        elsewhere["participant_integrity"][0]["quarantined"][0]["client"]
        != first["participant_integrity"][0]["quarantined"][0]["client"]
    )


def test_admin_report_shows_client_ids(log: AuditLog) -> None:
    report = audit_report(log.store, SIGNING_KEY.public_key(), admin=True)
    assert report["participant_integrity"][0]["quarantined"][0]["client"] == "carol"
    assert report["lineage"]["runs"][0]["rounds"][0]["cohort"] == ["alice", "bob", "carol"]


def test_report_on_a_tampered_log_says_where_it_fails(
    log: AuditLog,
    store_url: str,  # noqa: F811
) -> None:
    tamper(store_url, "DELETE FROM audit_log WHERE sequence = 2")
    verification = audit_report(log.store, SIGNING_KEY.public_key())["verification"]
    assert (verification["ok"], verification["first_bad"]) == (False, 2)


def test_html_report_is_self_contained_and_escapes_every_value(store: RunStore) -> None:
    audit = AuditLog(store, SIGNING_KEY)
    audit.append(RunCreated("run-<b>1</b>", "00", "0.1.0"))
    audit.append(ClientQuarantined("run-<b>1</b>", "<script>alert(1)</script>", "<img src=x>"))
    page = render_html(audit_report(store, SIGNING_KEY.public_key(), admin=True))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "<img" not in page and "<b>1" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x&gt;" in page
    assert not re.search(r"<[^>]*\b(src|href)\s*=|<link|@import|url\(", page)
    assert "Audit log verified: 2 entries" in page


# Command line.


def test_cli_delegate_then_revoke_round_trip(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    private, public = write_keys(tmp_path)
    serving_key = tmp_path / "serving.key"
    delegated = runner.invoke(
        app,
        [
            "audit",
            "delegate",
            store_url,
            "--audit-key",
            str(private),
            "--kind",
            "alert_raised",
            "--name",
            "serving",
            "--output",
            str(serving_key),
        ],
    )
    assert delegated.exit_code == 0, delegated.output
    assert serving_key.stat().st_mode & 0o777 == 0o600
    key = load_signing_key(serving_key)
    assert load_public_key(tmp_path / "serving.pub") == key.public_key()
    served = AuditLog(log.store, key, root_public_key=load_public_key(public))
    served.append(ALERT)
    verified = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(public)])
    assert verified.exit_code == 0, verified.output
    assert f"OK: {len(EVENTS) + 2} audit entries" in verified.output
    revoked = runner.invoke(
        app,
        [
            "audit",
            "revoke",
            store_url,
            "--audit-key",
            str(private),
            "--public-key",
            str(tmp_path / "serving.pub"),
            "--reason",
            "host compromised",
        ],
    )
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(AuditError, match="revoked"):
        served.append(ALERT)
    (event,) = [
        entry.event() for entry in read_entries(log.store) if entry.kind == "signer_revoked"
    ]
    assert event == SignerRevoked(public_key_hex(key.public_key()), "operator", "host compromised")
    verified = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(public)])
    assert verified.exit_code == 0, verified.output


def test_cli_delegate_refuses_a_kind_and_leaves_no_key_behind(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    private, _ = write_keys(tmp_path)
    result = runner.invoke(
        app,
        [
            "audit",
            "delegate",
            store_url,
            "--audit-key",
            str(private),
            "--kind",
            "budget_chnaged",
            "--name",
            "serving",
            "--output",
            str(tmp_path / "serving.key"),
        ],
    )
    assert result.exit_code == 2
    assert "cannot be delegated" in result.output
    assert not (tmp_path / "serving.key").exists() and not (tmp_path / "serving.pub").exists()
    assert len(read_entries(log.store)) == len(EVENTS)


def test_cli_verify_prints_ok_with_the_entry_count(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, public = write_keys(tmp_path)
    result = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(public)])
    assert result.exit_code == 0, result.output
    assert f"OK: {len(EVENTS)} audit entries verified" in result.output


def test_cli_verify_names_the_first_bad_entry_and_exits_1(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, public = write_keys(tmp_path)
    tamper(store_url, "DELETE FROM audit_log WHERE sequence = 3")
    result = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(public)])
    assert result.exit_code == 1
    assert "FAILED at entry 3" in result.output
    assert "deleted" in result.output


def test_cli_verify_refuses_a_file_that_is_not_a_public_key(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    private, _ = write_keys(tmp_path)
    result = runner.invoke(app, ["audit", "verify", store_url, "--public-key", str(private)])
    assert result.exit_code == 2
    assert "error:" in result.output and "public key" in result.output


def test_cli_verify_refuses_a_sqlite_store_that_does_not_exist(tmp_path: Path) -> None:
    _, public = write_keys(tmp_path)
    missing = f"sqlite:///{tmp_path / 'typo.db'}"
    result = runner.invoke(app, ["audit", "verify", missing, "--public-key", str(public)])
    assert result.exit_code == 2
    assert "no run store" in result.output
    assert not (tmp_path / "typo.db").exists()


@pytest.mark.parametrize("report_format", ["json", "html"])
def test_cli_report_writes_the_report(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
    report_format: str,
) -> None:
    _, public = write_keys(tmp_path)
    output = tmp_path / f"report.{report_format}"
    result = runner.invoke(
        app,
        [
            "audit",
            "report",
            store_url,
            "--public-key",
            str(public),
            "--format",
            report_format,
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 0, result.output
    written = output.read_text()
    assert "carol" not in written
    if report_format == "json":
        assert json.loads(written)["privacy"][0]["epsilon"] == 0.8
    else:
        assert "Privacy guarantees" in written


def test_cli_report_admin_shows_client_ids(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    _, public = write_keys(tmp_path)
    output = tmp_path / "report.json"
    result = runner.invoke(
        app,
        [
            "audit",
            "report",
            store_url,
            "--public-key",
            str(public),
            "--output",
            str(output),
            "--admin",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "carol" in output.read_text()


def test_cli_pdf_report_says_it_needs_weasyprint_when_it_is_not_installed(
    log: AuditLog,
    store_url: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # as if it were not installed
    _, public = write_keys(tmp_path)
    output = tmp_path / "report.pdf"
    result = runner.invoke(
        app,
        [
            "audit",
            "report",
            store_url,
            "--public-key",
            str(public),
            "--format",
            "pdf",
            "--output",
            str(output),
        ],
    )
    assert result.exit_code == 2
    assert "weasyprint" in result.output
    assert not output.exists()


def test_a_monitoring_alert_is_recorded_and_read_back(store: RunStore) -> None:
    alert = AlertRaised("run-1", 4, "client_silent", "carol silent 3 rounds", "carol")
    AuditLog(store, SIGNING_KEY).append(alert)
    (entry,) = read_entries(store)
    assert entry.kind == "alert_raised" and entry.event() == alert
    assert verify(store, SIGNING_KEY.public_key()).ok
