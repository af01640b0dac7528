"""The CKKS key holder decrypts only sums it verified itself: the attacks of a lying server fail.

Each attack below would succeed against a key holder that decrypts whatever
sum it is sent (the server's count of updates is a number it chooses); each
must be refused here, and a refused request must leave the round decryptable
by an honest one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedwarden.secure.he import (
    CiphertextVector,
    Contribution,
    DecryptionRequest,
    EncryptedSum,
    HomomorphicSum,
    PublicContext,
    add_chunks,
    encrypt_update,
    read_update,
    sign_contribution,
)
from fedwarden.secure.he_keyholder import (
    PUBLIC_CONTEXT_FILE,
    SECRET_CONTEXT_FILE,
    CkksKeyHolder,
    DecryptionRefused,
)

LENGTH = 6
CLIENTS = ("alice", "bob", "carol")
# Two fresh CKKS ciphertexts summed, divided by a total weight >= 1, then rounded to float32:
# well within 1e-5 (test_he.py derives the bound).
PRECISION = 1e-5


@pytest.fixture
def identities() -> dict[str, Ed25519PrivateKey]:
    """Each client's deployment identity key."""
    return {client: Ed25519PrivateKey.generate() for client in CLIENTS}


@pytest.fixture
def key_holder(identities: dict[str, Ed25519PrivateKey], tmp_path: Path) -> CkksKeyHolder:
    """A key holder that knows the clients' identity keys and keeps its decrypted rounds on disk."""
    return CkksKeyHolder(
        clients={client: key.public_key() for client, key in identities.items()},
        decrypted_rounds=tmp_path / "decrypted.json",
    )


def _updates() -> dict[str, np.ndarray]:
    return {
        client: np.arange(LENGTH, dtype=np.float32) * (index + 1) - index
        for index, client in enumerate(CLIENTS)
    }


def _contributions(
    public_context: bytes, identities: dict[str, Ed25519PrivateKey], round_index: int = 0
) -> dict[str, Contribution]:
    """Every client's update, encrypted under the public context and signed for the round."""
    public = PublicContext.load(public_context)
    return {
        client: sign_contribution(
            encrypt_update(public, client, update), round_index, identities[client]
        )
        for client, update in _updates().items()
    }


def _honest_request(
    server: HomomorphicSum, contributions: list[Contribution], round_index: int = 0
) -> DecryptionRequest:
    server.start(LENGTH, round_index)
    for contribution in contributions:
        server.add(contribution)
    return server.result()


def _sum_of(server: HomomorphicSum, contributions: list[Contribution]) -> EncryptedSum:
    """The sum a lying server sends: of whichever ciphertexts it likes, from any round."""
    totals: list[CiphertextVector] = []
    for contribution in contributions:
        vectors = read_update(server.public, contribution.update, LENGTH, "forged")
        totals = add_chunks(totals, vectors, "forged")
    return EncryptedSum(LENGTH, server.public.key_id, tuple(c.serialize() for c in totals))


def test_the_server_holds_no_secret_key_and_the_key_holder_decrypts_the_exact_sum(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    assert not server.public.context.is_private()
    assert not server.public.context.has_secret_key()
    contributions = _contributions(key_holder.public_context(), identities)

    mean, total_weight, contributors = key_holder.decrypt(
        _honest_request(server, list(contributions.values()))
    )

    expected = sum(update.astype(np.float64) for update in _updates().values()) / len(CLIENTS)
    assert contributors == len(CLIENTS)
    assert abs(total_weight - len(CLIENTS)) <= PRECISION
    assert np.max(np.abs(mean - expected)) <= PRECISION


def test_decrypting_one_clients_ciphertext_alone_is_refused(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    contributions = _contributions(key_holder.public_context(), identities)
    alone = _honest_request(server, [contributions["alice"]])
    with pytest.raises(DecryptionRefused, match="holds 1 client"):
        key_holder.decrypt(alone)


def test_a_contributor_listed_twice_is_refused(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    alice = _contributions(key_holder.public_context(), identities)["alice"]
    twice = DecryptionRequest(0, _sum_of(server, [alice]), (alice, alice))
    with pytest.raises(DecryptionRefused, match="listed twice"):
        key_holder.decrypt(twice)


def test_padding_with_unsigned_or_unknown_contributors_is_refused(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    """The server pads a victim's ciphertext with zeros it encrypted itself."""
    server = HomomorphicSum(key_holder.public_context())
    public = PublicContext.load(key_holder.public_context())
    alice = _contributions(key_holder.public_context(), identities)["alice"]
    zeros = encrypt_update(public, "bob", np.zeros(LENGTH, dtype=np.float32))
    sybil_key = Ed25519PrivateKey.generate()
    forgeries = {
        "not signed": Contribution(0, zeros, b""),
        "not signed by that client": sign_contribution(zeros, 0, sybil_key),
        "does not know": sign_contribution(
            dataclasses.replace(zeros, client_id="sybil"), 0, sybil_key
        ),
    }
    for message, forged in forgeries.items():
        request = DecryptionRequest(0, _sum_of(server, [alice, forged]), (alice, forged))
        with pytest.raises(DecryptionRefused, match=message):
            key_holder.decrypt(request)


def test_a_contribution_signed_for_another_round_is_refused(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    server = HomomorphicSum(key_holder.public_context())
    old = _contributions(key_holder.public_context(), identities, round_index=0)
    new = _contributions(key_holder.public_context(), identities, round_index=1)
    replayed = (old["alice"], new["bob"])
    request = DecryptionRequest(1, _sum_of(server, [old["alice"], new["bob"]]), replayed)
    with pytest.raises(DecryptionRefused, match="signed for round 1"):
        key_holder.decrypt(request)
    tampered = dataclasses.replace(new["bob"], round_index=0)
    with pytest.raises(DecryptionRefused, match="not signed by that client"):
        key_holder.decrypt(DecryptionRequest(0, request.total, (old["alice"], tampered)))


def test_a_sum_that_is_not_the_sum_of_the_listed_contributions_is_refused(
    key_holder: CkksKeyHolder, identities: dict[str, Ed25519PrivateKey]
) -> None:
    """The server lists three honest contributions but sends one client's ciphertext as the sum."""
    server = HomomorphicSum(key_holder.public_context())
    contributions = _contributions(key_holder.public_context(), identities)
    listed = tuple(contributions.values())
    for total in (
        _sum_of(server, [contributions["alice"]]),
        _sum_of(server, [contributions["alice"], contributions["bob"]]),
    ):
        with pytest.raises(DecryptionRefused, match="not the sum of the 3 contributions"):
            key_holder.decrypt(DecryptionRequest(0, total, listed))

    mean, _, contributors = key_holder.decrypt(
        DecryptionRequest(0, _sum_of(server, list(listed)), listed)
    )
    assert contributors == 3  # the refusals recorded nothing: the honest request still decrypts
    assert np.max(np.abs(mean - np.mean(list(_updates().values()), axis=0))) <= PRECISION


def test_a_round_is_decrypted_once_even_after_the_key_holder_restarts(
    identities: dict[str, Ed25519PrivateKey], tmp_path: Path
) -> None:
    """Differencing: decrypt {alice, bob, carol}, then {bob, carol}, subtract; the second fails."""
    state = tmp_path / "keyholder"
    clients = {client: key.public_key() for client, key in identities.items()}
    key_holder = CkksKeyHolder.open(state, clients=clients)
    assert (state / SECRET_CONTEXT_FILE).stat().st_mode & 0o777 == 0o600
    assert (state / PUBLIC_CONTEXT_FILE).read_bytes() == key_holder.public_context()
    server = HomomorphicSum(key_holder.public_context())
    contributions = _contributions(key_holder.public_context(), identities)
    key_holder.decrypt(_honest_request(server, list(contributions.values())))
    without_alice = _honest_request(server, [contributions["bob"], contributions["carol"]])
    with pytest.raises(DecryptionRefused, match="decrypted already"):
        key_holder.decrypt(without_alice)

    restarted = CkksKeyHolder.open(state, clients=clients)
    assert restarted.key_id == key_holder.key_id
    with pytest.raises(DecryptionRefused, match="decrypted already"):
        restarted.decrypt(without_alice)
    next_round = _contributions(restarted.public_context(), identities, round_index=1)
    _, _, contributors = restarted.decrypt(
        _honest_request(server, list(next_round.values()), round_index=1)
    )
    assert contributors == 3
