"""Private set intersection (fedwarden.secure.psi): exact results, nothing revealed beyond."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.secure import psi
from fedwarden.secure.psi import (
    POINT_BYTES,
    PsiError,
    PsiReceiver,
    PsiRequest,
    PsiResponse,
    PsiSender,
    RelayCoordinator,
    hash_to_group,
    identifier_bytes,
    intersect_parties,
)

ID_SETS = st.sets(st.integers(0, 300), max_size=200)


def run(receiver: PsiReceiver, sender: PsiSender) -> tuple[PsiRequest, PsiResponse, psi.PsiOutcome]:
    """One round trip between the two parties."""
    request = receiver.request()
    response = sender.respond(request)
    return request, response, receiver.finish(response)


@settings(max_examples=25, deadline=None)
@given(receiver_ids=ID_SETS, sender_ids=ID_SETS)
def test_intersection_is_exact_on_random_sets(receiver_ids: set[int], sender_ids: set[int]) -> None:
    receiver, sender = PsiReceiver(receiver_ids, workers=1), PsiSender(sender_ids, workers=1)
    _, _, outcome = run(receiver, sender)
    assert outcome.intersection == receiver_ids & sender_ids
    assert outcome.size == len(receiver_ids & sender_ids)
    assert sender.peer_set_size == len(receiver_ids)


@settings(max_examples=15, deadline=None)
@given(receiver_ids=ID_SETS, sender_ids=ID_SETS)
def test_cardinality_mode_returns_only_the_size(
    receiver_ids: set[int], sender_ids: set[int]
) -> None:
    receiver = PsiReceiver(receiver_ids, "cardinality", workers=1)
    sender = PsiSender(sender_ids, "cardinality", workers=1)
    _, _, outcome = run(receiver, sender)
    assert outcome.size == len(receiver_ids & sender_ids)
    assert outcome.intersection is None


def test_duplicate_ids_count_once_and_str_int_bytes_name_the_same_entity() -> None:
    receiver = PsiReceiver(["7", 7, b"7", "8", "9", "9"], workers=1)
    sender = PsiSender([7, 9, 9, 10], workers=1)
    request, response, outcome = run(receiver, sender)
    assert len(request.points) == 3
    assert len(response.sender_points) == 3
    assert outcome.intersection == {"7", "9"}
    assert identifier_bytes("7") == identifier_bytes(7) == identifier_bytes(b"7")


def test_cardinality_receiver_holds_only_shuffled_double_blinded_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver_ids = [f"patient-{k}" for k in range(200)]
    sender_ids = [f"patient-{k}" for k in range(100, 300)]
    truly_shared = set(receiver_ids) & set(sender_ids)
    # The same secrets in both modes, so the two answers hold the same points.
    monkeypatch.setattr(psi.secrets, "token_bytes", lambda count: bytes(range(1, count + 1)))
    _, in_order, _ = run(
        PsiReceiver(receiver_ids, "intersection", workers=1),
        PsiSender(sender_ids, "intersection", workers=1),
    )
    receiver = PsiReceiver(receiver_ids, "cardinality", workers=1)
    request, response, outcome = run(receiver, PsiSender(sender_ids, "cardinality", workers=1))
    monkeypatch.undo()

    assert outcome.size == len(truly_shared)
    # The receiver got the double-blinded versions of its own points, in another order...
    assert sorted(response.double_blinded) == sorted(in_order.double_blinded)
    assert list(response.double_blinded) != list(in_order.double_blinded)
    # ...so the points it can match (those of shared ids), read by position, name other ids.
    matched = {
        point
        for identifier, point in zip(receiver_ids, in_order.double_blinded, strict=True)
        if identifier in truly_shared
    }
    attributed = {
        identifier
        for identifier, point in zip(receiver_ids, response.double_blinded, strict=True)
        if point in matched
    }
    assert len(attributed) == len(truly_shared)
    assert attributed != truly_shared
    # Nothing it received is an id, or an id's unblinded hash.
    hashes = set(hash_to_group(receiver_ids + sender_ids))
    received = [*response.double_blinded, *response.sender_points]
    assert not hashes & set(received)
    assert not {identifier_bytes(item) for item in receiver_ids + sender_ids} & set(received)
    assert all(len(point) == POINT_BYTES for point in received)
    assert not set(request.points) & set(response.double_blinded)


def test_relayed_messages_hold_only_blinded_32_byte_points() -> None:
    parties = {
        "bank": [f"customer-{k}" for k in range(0, 120)],
        "insurer": [f"customer-{k}" for k in range(40, 160)],
        "retailer": [f"customer-{k}" for k in range(30, 100)],
    }
    coordinator = RelayCoordinator()
    intersect_parties(parties, coordinator=coordinator, workers=1)
    everything = [item for ids in parties.values() for item in ids]
    plain = [identifier_bytes(item) for item in everything]
    hashes = set(hash_to_group(everything))
    assert len(coordinator.log) == 8  # two round trips with each of the two other parties
    for relayed in coordinator.log:
        message = relayed.message
        if isinstance(message, PsiRequest):
            points = list(message.points)
        else:
            points = [*message.double_blinded, *message.sender_points]
        assert points
        for point in points:
            assert isinstance(point, bytes) and len(point) == POINT_BYTES
            assert point not in hashes
            assert not any(text in point for text in plain)


def test_multi_party_intersection_is_exact_for_every_party() -> None:
    parties: dict[str, list[psi.Identifier]] = {
        "a": list(range(0, 150)),
        "b": [str(k) for k in range(50, 200)],
        "c": [*range(25, 140), 999],
        "d": [*(str(k).encode() for k in range(60, 130)), b"999"],
    }
    results = intersect_parties(parties, workers=1)
    expected = set(range(60, 130))
    assert results["a"] == expected
    assert results["b"] == {str(k) for k in expected}
    assert results["c"] == expected
    assert results["d"] == {str(k).encode() for k in expected}


def test_each_step_runs_once_and_in_order() -> None:
    receiver, sender = PsiReceiver([1, 2], workers=1), PsiSender([2, 3], workers=1)
    with pytest.raises(PsiError, match="step 2"):
        receiver.finish(PsiResponse((), ()))
    request = receiver.request()
    with pytest.raises(PsiError, match="step 1"):
        receiver.request()
    response = sender.respond(request)
    with pytest.raises(PsiError, match="step 1"):
        sender.respond(request)
    assert receiver.finish(response).intersection == {2}


def test_mode_mismatch_and_malformed_points_are_refused() -> None:
    request = PsiReceiver([1, 2], "cardinality", workers=1).request()
    with pytest.raises(PsiError, match="agree on the mode"):
        PsiSender([1], "intersection", workers=1).respond(request)
    with pytest.raises(PsiError, match="canonical"):
        PsiSender([1], workers=1).respond(PsiRequest("intersection", (b"short",)))
    with pytest.raises(PsiError, match="low order"):
        PsiSender([1], workers=1).respond(PsiRequest("intersection", (bytes(POINT_BYTES),)))


def test_a_party_and_its_secret_cannot_be_pickled() -> None:
    with pytest.raises(PsiError, match="cannot be copied"):
        pickle.dumps(PsiSender([1, 2, 3]))


def test_threaded_blinding_gives_the_same_result() -> None:
    receiver_ids, sender_ids = list(range(0, 400)), list(range(200, 700))
    _, _, outcome = run(PsiReceiver(receiver_ids, workers=3), PsiSender(sender_ids, workers=2))
    assert outcome.intersection == set(range(200, 400))
    assert hash_to_group(receiver_ids, workers=3) == hash_to_group(receiver_ids, workers=1)
