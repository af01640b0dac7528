"""Private set intersection (fedwarden.secure.psi): exact results, nothing revealed beyond."""

from __future__ import annotations

import pickle
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import bindings

from fedwarden.secure import psi
from fedwarden.secure.psi import (
    POINT_BYTES,
    PsiError,
    PsiMode,
    PsiOffer,
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

FIELD_PRIME = 2**255 - 19
SMALL_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (FIELD_PRIME - 1).to_bytes(32, "little"),
]
"""The canonical u-coordinates of Curve25519's points of order 1, 2, 4 and 8 (RFC 7748's list)."""


@dataclass(frozen=True)
class Exchange:
    """Every message of one run of the protocol, and what the receiver learned."""

    offer: PsiOffer
    request: PsiRequest
    response: PsiResponse
    outcome: psi.PsiOutcome


def run(receiver: PsiReceiver, sender: PsiSender) -> Exchange:
    """One run: the sender offers, the receiver requests and accepts, the sender responds."""
    offer = sender.offer()
    request = receiver.request()
    receiver.accept(offer)
    response = sender.respond(request)
    return Exchange(offer, request, response, receiver.finish(response))


@settings(max_examples=25, deadline=None)
@given(receiver_ids=ID_SETS, sender_ids=ID_SETS)
def test_intersection_is_exact_on_random_sets(receiver_ids: set[int], sender_ids: set[int]) -> None:
    receiver, sender = PsiReceiver(receiver_ids, workers=1), PsiSender(sender_ids, workers=1)
    outcome = run(receiver, sender).outcome
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
    outcome = run(receiver, sender).outcome
    assert outcome.size == len(receiver_ids & sender_ids)
    assert outcome.intersection is None


def test_duplicate_ids_count_once_and_str_int_bytes_name_the_same_entity() -> None:
    receiver = PsiReceiver(["7", 7, b"7", "8", "9", "9"], workers=1)
    sender = PsiSender([7, 9, 9, 10], workers=1)
    exchange = run(receiver, sender)
    assert len(exchange.request.points) == len(exchange.response.double_blinded) == 3
    assert len(exchange.offer.points) == 3
    assert exchange.outcome.intersection == {"7", "9"}
    assert identifier_bytes("7") == identifier_bytes(7) == identifier_bytes(b"7")


def test_cardinality_receiver_holds_only_shuffled_double_blinded_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver_ids = [f"patient-{k}" for k in range(200)]
    sender_ids = [f"patient-{k}" for k in range(100, 300)]
    truly_shared = set(receiver_ids) & set(sender_ids)
    # The same secrets in both modes, so the two answers hold the same points.
    monkeypatch.setattr(psi.secrets, "token_bytes", lambda count: bytes(range(1, count + 1)))
    in_order = run(
        PsiReceiver(receiver_ids, "intersection", workers=1),
        PsiSender(sender_ids, "intersection", workers=1),
    ).response
    receiver = PsiReceiver(receiver_ids, "cardinality", workers=1)
    exchange = run(receiver, PsiSender(sender_ids, "cardinality", workers=1))
    monkeypatch.undo()
    response = exchange.response

    assert exchange.outcome.size == len(truly_shared)
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
    received = [*response.double_blinded, *exchange.offer.points]
    assert not hashes & set(received)
    assert not {identifier_bytes(item) for item in receiver_ids + sender_ids} & set(received)
    assert all(len(point) == POINT_BYTES for point in received)
    assert not set(exchange.request.points) & set(response.double_blinded)


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
    # Two runs with each of the two other parties, three messages each: offer, request, response.
    log = coordinator.log
    assert len(log) == 12
    sizes = {"bank": 120, "insurer": 120, "retailer": 70}
    shared = 60  # customer-40 to customer-99
    for start in range(0, len(log), 3):
        offer, request, response = log[start : start + 3]
        assert isinstance(offer.message, PsiOffer) and isinstance(request.message, PsiRequest)
        assert isinstance(response.message, PsiResponse)
        # Phase 1: the leader (bank) receives; phase 2: it sends the final intersection only.
        assert len(offer.message.points) == (sizes[offer.sender] if start < 6 else shared)
        assert len(request.message.points) == sizes[request.sender]
        assert len(response.message.double_blinded) == sizes[request.sender]
    for relayed in log:
        message = relayed.message
        if isinstance(message, PsiResponse):
            points = list(message.double_blinded)
        else:
            points = list(message.points)
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
    with pytest.raises(PsiError, match=r"finish is step 3 .* request \(step 1\) has not run"):
        receiver.finish(PsiResponse(()))
    request = receiver.request()
    with pytest.raises(PsiError, match=r"request is step 1 .* has already run"):
        receiver.request()
    offer = sender.offer()
    with pytest.raises(PsiError, match=r"offer is step 1 .* has already run"):
        sender.offer()
    receiver.accept(offer)
    response = sender.respond(request)
    with pytest.raises(PsiError, match=r"respond is step 2 .* has already run"):
        sender.respond(request)
    assert receiver.finish(response).intersection == {2}
    with pytest.raises(PsiError, match=r"accept is step 2 .* has already run"):
        receiver.accept(offer)


@pytest.mark.parametrize("mode", ["intersection", "cardinality"])
def test_a_receiver_refuses_to_finish_before_it_accepted_the_senders_offer(mode: PsiMode) -> None:
    # The sender's points have one way in, the offer: without it no empty intersection is made up.
    sender, receiver = PsiSender([1, 2, 3], mode, workers=1), PsiReceiver([2, 3], mode, workers=1)
    sender.offer()
    response = sender.respond(receiver.request())
    with pytest.raises(PsiError, match=r"finish is step 3 .* accept \(step 2\) has not run yet"):
        receiver.finish(response)


def test_a_sender_refuses_to_respond_before_it_offered() -> None:
    sender = PsiSender([1, 2, 3], workers=1)
    request = PsiReceiver([2, 3, 4], workers=1).request()
    with pytest.raises(PsiError, match=r"respond is step 2 .* offer \(step 1\) has not run yet"):
        sender.respond(request)
    assert sender.peer_set_size is None  # it learned nothing


def offered_sender(mode: PsiMode = "intersection") -> PsiSender:
    """A sender over ids 1 to 3 that has made its offer and so may respond."""
    sender = PsiSender([1, 2, 3], mode, workers=1)
    sender.offer()
    return sender


def test_mode_mismatch_and_malformed_points_are_refused() -> None:
    request = PsiReceiver([1, 2], "cardinality", workers=1).request()
    with pytest.raises(PsiError, match="agree on the mode"):
        offered_sender("intersection").respond(request)
    with pytest.raises(PsiError, match="canonical"):
        offered_sender().respond(PsiRequest("intersection", (b"short",)))
    with pytest.raises(PsiError, match="canonical"):
        offered_sender().respond(PsiRequest("intersection", (FIELD_PRIME.to_bytes(32, "little"),)))
    receiver = PsiReceiver([1], workers=1)
    receiver.request()
    with pytest.raises(PsiError, match="agree on the mode"):
        receiver.accept(PsiOffer("cardinality", ()))
    receiver = PsiReceiver([1], workers=1)
    receiver.request()
    with pytest.raises(PsiError, match="canonical"):
        receiver.accept(PsiOffer("intersection", (b"short",)))


@pytest.mark.parametrize(
    "point", SMALL_ORDER_POINTS, ids=["order1", "order2", "order8a", "order8b", "order4"]
)
def test_small_order_points_are_refused_wherever_they_arrive(point: bytes) -> None:
    # A point is blinded where it arrives in a request (sender) or an offer (receiver).
    with pytest.raises(PsiError, match="low order"):
        offered_sender().respond(PsiRequest("intersection", (point,)))
    receiver = PsiReceiver([1, 2], workers=1)
    receiver.request()
    with pytest.raises(PsiError, match="low order"):
        receiver.accept(PsiOffer("intersection", (point,)))


def test_hashes_lie_in_the_prime_order_subgroup_of_the_curve_never_on_its_twist() -> None:
    # On the twist a hash would be public evidence of one bit of its id that blinding keeps
    # (the twist is a different group), leaking a count of the peer's ids; see psi's docstring.
    identifiers = [f"entity-{k}" for k in range(256)]
    points = hash_to_group(identifiers)
    assert len(set(points)) == len(identifiers)
    for point in points:
        u = int.from_bytes(point, "little")
        assert u < FIELD_PRIME
        curve_side = (u**3 + 486662 * u**2 + u) % FIELD_PRIME
        assert pow(curve_side, (FIELD_PRIME - 1) // 2, FIELD_PRIME) == 1  # a square: the curve
        # The Edwards point with y = (u - 1) / (u + 1) is in the prime-order subgroup.
        y = (u - 1) * pow(u + 1, -1, FIELD_PRIME) % FIELD_PRIME
        assert bindings.crypto_core_ed25519_is_valid_point(y.to_bytes(32, "little"))


@pytest.mark.parametrize("mode", ["intersection", "cardinality"])
def test_sender_offer_needs_no_request_so_the_parties_work_at_once(mode: PsiMode) -> None:
    receiver_ids, sender_ids = list(range(0, 120)), list(range(80, 260))
    sender = PsiSender(sender_ids, mode, workers=1)
    offer = sender.offer()  # before the receiver has sent anything
    receiver = PsiReceiver(receiver_ids, mode, workers=2)
    request = receiver.request()
    receiver.accept(offer)  # the receiver's second phase, while the sender answers
    response = sender.respond(request)
    assert len(offer.points) == len(sender_ids)
    assert len(response.double_blinded) == len(receiver_ids)
    outcome = receiver.finish(response)
    assert outcome.size == 40
    if mode == "intersection":
        assert outcome.intersection == set(range(80, 120))


def test_a_party_and_its_secret_cannot_be_pickled() -> None:
    with pytest.raises(PsiError, match="cannot be copied"):
        pickle.dumps(PsiSender([1, 2, 3]))


def test_threaded_blinding_gives_the_same_result() -> None:
    receiver_ids, sender_ids = list(range(0, 400)), list(range(200, 700))
    outcome = run(PsiReceiver(receiver_ids, workers=3), PsiSender(sender_ids, workers=2)).outcome
    assert outcome.intersection == set(range(200, 400))
    assert hash_to_group(receiver_ids, workers=3) == hash_to_group(receiver_ids, workers=1)


def test_known_overlap_is_found_exactly_and_no_message_carries_an_unblinded_hash() -> None:
    receiver_ids = [f"entity-{k}" for k in range(0, 600)]
    sender_ids = [f"entity-{k}" for k in range(400, 1200)]  # entity-400 to entity-599 shared
    first = run(PsiReceiver(receiver_ids, workers=1), PsiSender(sender_ids, workers=1))
    assert first.outcome.intersection == {f"entity-{k}" for k in range(400, 600)}
    # What an eavesdropper or either party sees: no id, no id's hash before blinding...
    hashes = set(hash_to_group(receiver_ids + sender_ids))
    plain = {identifier_bytes(item) for item in receiver_ids + sender_ids}
    wire = [*first.offer.points, *first.request.points, *first.response.double_blinded]
    assert len(wire) == 800 + 600 + 600
    assert not hashes & set(wire)
    assert not plain & set(wire)
    # ...and nothing that links two runs over the same ids: each party draws a fresh secret.
    second = run(PsiReceiver(receiver_ids, workers=1), PsiSender(sender_ids, workers=1))
    assert second.outcome == first.outcome
    again = [*second.offer.points, *second.request.points, *second.response.double_blinded]
    assert not set(wire) & set(again)
