"""The canonical JSON of each protocol, pinned byte for byte.

Audit entries are hashed and signed, upload metadata is signed and payload headers are
counted as traffic: a change to any of these bytes breaks old logs, old clients or the
traffic figures, so each is written here as a literal.
"""

from __future__ import annotations

import math

import pytest

from fedwarden.core.messages import header_bytes
from fedwarden.governance.audit import (
    GENESIS_HASH,
    AuditError,
    RoundStarted,
    canonical_json,
    entry_hash,
)
from fedwarden.runtime.grpc import wire

VALUE = {"name": "Zoë ✓", "b": [1, 2.5, None, True], "a": {"y": 1, "x": "é"}}


def test_audit_canonical_json_keeps_non_ascii_text_as_utf8() -> None:
    assert canonical_json(VALUE) == '{"a":{"x":"é","y":1},"b":[1,2.5,null,true],"name":"Zoë ✓"}'


def test_audit_entry_payload_and_hash_of_a_fixed_event_are_pinned() -> None:
    event = RoundStarted("run-ü", 2, ("zoë", "bob"), {"noise_multiplier": 1.1, "clip_norm": 1.0})
    payload = canonical_json(event.payload())
    assert payload == (
        '{"cohort":["zoë","bob"],"cohort_commitment":null,'
        '"dp":{"clip_norm":1.0,"noise_multiplier":1.1},"round_index":2,"run_id":"run-ü"}'
    )
    assert entry_hash(GENESIS_HASH, 0, "2026-01-01T00:00:00+00:00", event.kind, payload) == (
        "f15143788e4736e86fefb1f77f300644e714c2529489f73e5568dc933fff3776"
    )


def test_audit_canonical_json_refuses_nan_with_an_audit_error() -> None:
    with pytest.raises(AuditError, match="NaN"):
        canonical_json({"loss": math.nan})


def test_wire_canonical_json_escapes_non_ascii_text() -> None:
    assert wire.canonical_json(VALUE) == (
        '{"a":{"x":"\\u00e9","y":1},"b":[1,2.5,null,true],"name":"Zo\\u00eb \\u2713"}'
    )
    with pytest.raises(ValueError):
        wire.canonical_json({"loss": math.nan})


def test_signed_upload_metadata_is_pinned() -> None:
    metadata = wire.UploadMetadata({"loss": 0.25, "accuracy": 1.0}, {"codec": "qsgd-ü", "size": 10})
    assert metadata.to_json() == (
        '{"metrics":{"accuracy":1.0,"loss":0.25},'
        '"payload_header":{"codec":"qsgd-\\u00fc","size":10}}'
    )


def test_payload_header_bytes_are_pinned_and_count_even_a_nan_a_peer_sent() -> None:
    assert header_bytes({"size": 10, "codec": "qsgd-ü", "seed": 7}) == (
        b'{"codec":"qsgd-\\u00fc","seed":7,"size":10}'
    )
    assert header_bytes({"x": math.nan}) == b'{"x":NaN}'
