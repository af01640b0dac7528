"""One client's side of a SecAgg+ round, secure against a server that lies.

Bonawitz et al. (CCS 2017), Figure 4 with the signatures of its
malicious-server variant (a PKI: every client knows every peer's identity key
from its certificate, checked against its own enrolment CA, never from the
server's word), over the sparse neighbour graph of Bell et al. (CCS 2020).
What the client checks before each answer:

* round 0: the round's parameters against its own :class:`SecAggPolicy`, and
  that it trusts an identity key for every cohort member;
* round 1: every advertisement's signature over this round's parameters (a
  server that showed clients different parameters is caught here), its own
  advertisement unchanged; the graph comes from the hash of all of them;
* round 1 end: each share it receives is signed by its dealer for this holder
  and this graph;
* round 4: the survivor list is the one it signed and, for every client whose
  share it reveals, carries at least ``t`` valid signatures from that client's
  share holders. Since ``t > (k + 1 + c) / 2``, no second list can gather ``t``
  of them, so the server never gets both secrets of one client.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from enum import IntEnum
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedwarden.secure.prg import SEED_BYTES, apply_masks, reduce_modulo, word_dtype
from fedwarden.secure.secagg.crypto import (
    NONCE_BYTES,
    exchange,
    pairwise_seed,
    share_key,
)
from fedwarden.secure.secagg.messages import (
    MASKING_KEY,
    SELF_MASK,
    SIGNATURE_BYTES,
    ConsistencyAck,
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    SecAggError,
    SecAggRefused,
    ShareDelivery,
    SharedKeys,
    UnmaskingRequest,
    UnmaskingResponse,
    advertisement_payload,
    consistency_payload,
    encode,
    graph_seed,
    self_mask_commitment,
    share_digest,
    share_payload,
    survivor_list_digest,
    verifies,
)
from fedwarden.secure.secagg.parameters import neighbour_graph
from fedwarden.secure.secagg.policy import SecAggPolicy
from fedwarden.secure.shamir import SHARE_BYTES, ShamirError, Share, split_secret

__all__ = ["SecAggClient", "Stage"]

logger = logging.getLogger("fedwarden.secure")


class Stage(IntEnum):
    """Protocol rounds, in order; a message is accepted only in its own round."""

    ADVERTISE = 0
    SHARE = 1
    COLLECT = 2
    CONSISTENCY = 3
    UNMASK = 4
    DONE = 5


class SecAggClient:
    """One client's side of a SecAgg+ round (Bonawitz et al. 2017, Figure 4, client steps).

    Call in order: :meth:`advertise_keys`, :meth:`share_keys`,
    :meth:`receive_shares`, :meth:`mask_input`, :meth:`check_consistency`,
    :meth:`unmask`. Each refuses (:class:`SecAggRefused`, ``reason`` says why)
    a call out of order or a server message that breaks the checks in the
    module docstring. ``peer_identities`` are the identity keys this client
    trusts, from certificates it verified itself; it must cover the whole
    cohort. The secrets (``b_u``, both X25519 secret keys, the shares it holds)
    never leave the object except as the shares round 4 allows.
    """

    def __init__(
        self,
        client_id: str,
        setup: RoundSetup,
        *,
        identity: Ed25519PrivateKey,
        peer_identities: Mapping[str, Ed25519PublicKey],
        policy: SecAggPolicy | None = None,
    ) -> None:
        self.client_id = client_id
        (policy or SecAggPolicy()).check(client_id, setup)
        if client_id not in setup.cohort:
            raise SecAggRefused(
                "not_in_cohort", f"client {client_id!r} is not in this round's cohort."
            )
        missing = sorted(set(setup.cohort) - set(peer_identities))
        if missing:
            raise SecAggRefused(
                "unknown_identity",
                f"client {client_id!r} trusts no identity key for {missing[:5]} (of "
                f"{len(missing)}); it verifies every peer, so it refuses the round. Relay "
                "certificates issued by its enrolment CA for the whole cohort.",
            )
        own = identity.public_key().public_bytes_raw()
        if peer_identities[client_id].public_bytes_raw() != own:
            raise SecAggRefused(
                "substituted_identity",
                f"client {client_id!r}: the identity key given for itself is not its own; "
                "the peer identities were substituted.",
            )
        self._setup = setup
        self._setup_digest = setup.digest()
        self._index = {client: position + 1 for position, client in enumerate(setup.cohort)}
        self._dtype = word_dtype(setup.modulus_bits)
        self._identity = identity
        self._peer_identities = dict(peer_identities)
        self._encryption_key = X25519PrivateKey.generate()
        self._masking_key = X25519PrivateKey.generate()
        self._self_mask_seed = secrets.token_bytes(SEED_BYTES)
        self._advertisement: KeyAdvertisement | None = None
        self._graph_seed = b""
        self._graph: dict[str, frozenset[str]] = {}
        self._neighbours: frozenset[str] = frozenset()
        self._peer_keys: dict[str, KeyAdvertisement] = {}
        self._encryption_secrets: dict[str, bytes] = {}
        self._own_shares: tuple[RevealedShare, RevealedShare] | None = None
        self._held_shares: dict[str, tuple[RevealedShare, RevealedShare]] = {}
        self._acknowledged: tuple[str, ...] = ()
        self._stage = Stage.ADVERTISE

    def advertise_keys(self) -> KeyAdvertisement:
        """Round 0: both public keys and the self-mask commitment, signed with the round."""
        self._enter(Stage.ADVERTISE, "advertise keys")
        unsigned = KeyAdvertisement(
            self._setup.round_seed,
            self.client_id,
            self._encryption_key.public_key().public_bytes_raw(),
            self._masking_key.public_key().public_bytes_raw(),
            self_mask_commitment(self._setup_digest, self.client_id, self._self_mask_seed),
            b"",
        )
        signature = self._identity.sign(advertisement_payload(self._setup_digest, unsigned))
        self._advertisement = KeyAdvertisement(
            unsigned.round_seed,
            unsigned.client_id,
            unsigned.encryption_public_key,
            unsigned.masking_public_key,
            unsigned.self_mask_commitment,
            signature,
        )
        self._stage = Stage.SHARE
        return self._advertisement

    def share_keys(self, neighbour_keys: NeighbourKeys) -> SharedKeys:
        """Round 1: verify every advertisement, derive the graph, deal signed sealed shares."""
        self._enter(Stage.SHARE, "share keys")
        self._check_round(neighbour_keys.round_seed)
        advertisements = neighbour_keys.advertisements
        advertisers = [advertisement.client_id for advertisement in advertisements]
        if len(set(advertisers)) != len(advertisers) or not set(advertisers) <= set(
            self._setup.cohort
        ):
            self._refuse("unexpected_peer", "the advertisements repeat or name non-members")
        if self._advertisement not in advertisements:
            self._refuse("substituted_keys", "its own advertisement is missing or altered")
        for advertisement in advertisements:
            key = self._peer_identities[advertisement.client_id]
            payload = advertisement_payload(self._setup_digest, advertisement)
            if not verifies(key, advertisement.signature, payload):
                self._refuse(
                    "bad_signature",
                    f"the advertisement of {advertisement.client_id!r} is not signed by its "
                    "identity key over this round's parameters (a forged key, or a server that "
                    "showed it other parameters)",
                )
        self._graph_seed = graph_seed(self._setup_digest, advertisements)
        self._graph = neighbour_graph(advertisers, self._setup.num_neighbours, self._graph_seed)
        self._neighbours = self._graph[self.client_id]
        self._peer_keys = {
            item.client_id: item for item in advertisements if item.client_id in self._neighbours
        }
        holders = sorted([self.client_id, *self._neighbours])
        if len(holders) < self._setup.threshold:
            self._refuse(
                "too_few_neighbours",
                f"only {len(holders)} share holders advertised keys, fewer than the threshold "
                f"t={self._setup.threshold}; its masks could never be removed",
            )
        coordinates = [self._index[holder] for holder in holders]
        seed_shares = split_secret(self._self_mask_seed, self._setup.threshold, coordinates)
        key_shares = split_secret(
            self._masking_key.private_bytes_raw(), self._setup.threshold, coordinates
        )
        sealed = []
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            pair = self._signed_pair(holder, seed_share.to_bytes(), key_share.to_bytes())
            if holder == self.client_id:
                self._own_shares = pair
                continue
            nonce = secrets.token_bytes(NONCE_BYTES)
            plaintext = pair[0].share + pair[1].share + pair[0].signature
            associated = encode(self._setup.round_seed, self.client_id, holder)
            ciphertext = self._share_cipher(holder, self.client_id, holder).encrypt(
                nonce, plaintext, associated
            )
            sealed.append(
                EncryptedShare(self._setup.round_seed, self.client_id, holder, nonce, ciphertext)
            )
        self._stage = Stage.COLLECT
        return SharedKeys(self._setup.round_seed, self.client_id, tuple(sealed))

    def receive_shares(self, delivery: ShareDelivery) -> None:
        """Round 1 end: open the share pairs neighbours sealed here and check their signatures."""
        self._enter(Stage.COLLECT, "receive shares")
        if self._held_shares:
            self._refuse("duplicate", "it already received its shares this round")
        self._check_round(delivery.round_seed)
        held: dict[str, tuple[RevealedShare, RevealedShare]] = {}
        for sealed in delivery.shares:
            sender = sealed.sender
            if (
                sealed.recipient != self.client_id
                or sender not in self._peer_keys
                or sender in held
            ):
                self._refuse(
                    "unexpected_share",
                    f"a share from {sender!r} to {sealed.recipient!r} does not come from a "
                    "neighbour, is not addressed here, or repeats",
                )
            self._check_round(sealed.round_seed)
            held[sender] = self._open(sealed)
        self._held_shares = held

    def mask_input(self, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """Round 2: ``y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod 2^b``."""
        self._enter(Stage.COLLECT, "mask its input")
        setup = self._setup
        masked = self._encoded_input(encoded)
        masks = [(self._self_mask_seed, 1)]
        for peer in sorted(self._held_shares):
            seed = pairwise_seed(
                self._masking_key,
                self._peer_keys[peer].masking_public_key,
                setup.round_seed,
                self.client_id,
                peer,
                self._bad_key,
            )
            masks.append((seed, 1 if peer > self.client_id else -1))
        apply_masks(masked, masks, setup.modulus_bits)
        self._stage = Stage.CONSISTENCY
        return MaskedInput(
            setup.round_seed, self.client_id, reduce_modulo(masked, setup.modulus_bits)
        )

    def check_consistency(self, check: ConsistencyCheck) -> ConsistencyAck:
        """Round 3: sign the survivor list if it is consistent and leaves ``t`` holders here."""
        self._enter(Stage.CONSISTENCY, "check consistency")
        self._check_round(check.round_seed)
        survivors = check.survivors
        if list(survivors) != sorted(set(survivors)) or not set(survivors) <= set(self._graph):
            self._refuse(
                "inconsistent_survivors",
                "the survivor list is not a sorted list of distinct clients that advertised keys",
            )
        if self.client_id not in survivors:
            self._refuse(
                "inconsistent_survivors", "it sent its masked input but is not listed as a survivor"
            )
        unshared = (set(survivors) & self._neighbours) - set(self._held_shares)
        if unshared:
            self._refuse(
                "inconsistent_survivors",
                f"neighbours {sorted(unshared)} are listed as survivors but never shared keys "
                "with it, so their inputs cannot be in the sum",
            )
        local = len((self._neighbours | {self.client_id}) & set(survivors))
        threshold = self._setup.threshold
        if len(survivors) < threshold or local < threshold:
            self._refuse(
                "too_few_survivors",
                f"{len(survivors)} survivors in all and {local} among its share holders, fewer "
                f"than the threshold t={threshold}; a sum over so few clients is not revealed",
            )
        signature = self._identity.sign(
            consistency_payload(self._graph_seed, self.client_id, survivor_list_digest(survivors))
        )
        self._acknowledged = survivors
        self._stage = Stage.UNMASK
        return ConsistencyAck(check.round_seed, self.client_id, signature)

    def unmask(self, request: UnmaskingRequest) -> UnmaskingResponse:
        """Round 4: shares of ``b_v`` for surviving and of ``s_sk_v`` for dropped neighbours.

        Refuses a request naming a peer as both survivor and dropout, a survivor
        list other than the acknowledged one, one without ``t`` valid signatures
        from the share holders of every client whose share it would reveal, or
        dropouts inconsistent with the shares this client received; answers at
        most once per round.
        """
        self._enter(Stage.UNMASK, "unmask")
        self._check_round(request.round_seed)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            self._refuse(
                "both_shares",
                f"the server asks for both the self-mask share and the secret-key share of "
                f"{sorted(both)}; revealing both would unmask their inputs",
            )
        if request.survivors != self._acknowledged:
            self._refuse(
                "inconsistent_survivors",
                "the unmasking request lists other survivors than the consistency check it signed",
            )
        neighbours_dropped = dropped & self._neighbours
        unknown = neighbours_dropped - set(self._held_shares)
        unlisted = set(self._held_shares) - survivors - dropped
        if unknown or unlisted:
            self._refuse(
                "inconsistent_dropouts",
                f"dropouts {sorted(unknown)} never shared keys with it and neighbours "
                f"{sorted(unlisted)} that did are neither survivors nor dropouts",
            )
        revealed_seeds = sorted(survivors & set(self._held_shares))
        self._check_signed_survivors(
            request, {self.client_id, *revealed_seeds, *neighbours_dropped}
        )
        assert self._own_shares is not None  # set in share_keys, which _enter has ordered first
        seed_shares = [self._own_shares[0]]
        seed_shares += [self._held_shares[peer][0] for peer in revealed_seeds]
        key_shares = [self._held_shares[peer][1] for peer in sorted(neighbours_dropped)]
        self._stage = Stage.DONE
        return UnmaskingResponse(
            request.round_seed, self.client_id, tuple(seed_shares), tuple(key_shares)
        )

    # helpers ------------------------------------------------------------------------------

    def _check_signed_survivors(self, request: UnmaskingRequest, owners: set[str]) -> None:
        """Refuse unless each owner's share holders gave ``t`` valid signatures of the list.

        Signatures are verified until every owner has ``t`` of them; a signer counts once.
        """
        threshold = self._setup.threshold
        holders = {owner: self._graph[owner] | {owner} for owner in owners}
        counts = dict.fromkeys(owners, 0)
        short = set(owners)
        survivors = survivor_list_digest(request.survivors)
        checked: set[str] = set()
        for ack in request.signatures:
            signer = ack.client_id
            if not short:
                break
            if signer in checked or signer not in self._peer_identities:
                continue
            credited = [owner for owner in short if signer in holders[owner]]
            if not credited:
                continue
            payload = consistency_payload(self._graph_seed, signer, survivors)
            if not verifies(self._peer_identities[signer], ack.signature, payload):
                continue
            checked.add(signer)
            for owner in credited:
                counts[owner] += 1
                if counts[owner] >= threshold:
                    short.discard(owner)
        for owner in sorted(short):
            self._refuse(
                "unsigned_survivors",
                f"only {counts[owner]} of {owner!r}'s share holders signed this survivor list, "
                f"fewer than t={threshold}; a server showing others another list could rebuild "
                f"both of {owner!r}'s secrets, so nothing is revealed",
            )

    def _signed_pair(
        self, holder: str, seed_share: bytes, key_share: bytes
    ) -> tuple[RevealedShare, RevealedShare]:
        """The share pair this client deals to ``holder``, signed so anyone can check its origin."""
        seed_digest = share_digest(SELF_MASK, seed_share)
        key_digest = share_digest(MASKING_KEY, key_share)
        signature = self._identity.sign(
            share_payload(self._graph_seed, self.client_id, holder, seed_digest, key_digest)
        )
        return (
            RevealedShare(self.client_id, seed_share, signature, key_digest),
            RevealedShare(self.client_id, key_share, signature, seed_digest),
        )

    def _open(self, sealed: EncryptedShare) -> tuple[RevealedShare, RevealedShare]:
        """Decrypt one share pair and check that its dealer signed it for this holder."""
        sender = sealed.sender
        aead = self._share_cipher(sender, sender, self.client_id)
        try:
            plaintext = aead.decrypt(
                sealed.nonce,
                sealed.ciphertext,
                encode(sealed.round_seed, sender, self.client_id),
            )
        except InvalidTag:
            plaintext = b""
        if len(plaintext) != 2 * SHARE_BYTES + SIGNATURE_BYTES:
            self._refuse(
                "bad_share",
                f"the share pair from {sender!r} does not decrypt (tampered with, or sealed for "
                "another round)",
            )
        seed_share, key_share = plaintext[:SHARE_BYTES], plaintext[SHARE_BYTES : 2 * SHARE_BYTES]
        signature = plaintext[2 * SHARE_BYTES :]
        seed_digest = share_digest(SELF_MASK, seed_share)
        key_digest = share_digest(MASKING_KEY, key_share)
        payload = share_payload(self._graph_seed, sender, self.client_id, seed_digest, key_digest)
        own_x = self._index[self.client_id]
        try:
            coordinates = {Share.from_bytes(seed_share).x, Share.from_bytes(key_share).x}
        except ShamirError:
            coordinates = set()
        if coordinates != {own_x} or not verifies(
            self._peer_identities[sender], signature, payload
        ):
            self._refuse(
                "bad_share",
                f"the shares from {sender!r} are not for x={own_x} or not signed by {sender!r} "
                "for this holder and this round's graph",
            )
        return (
            RevealedShare(sender, seed_share, signature, key_digest),
            RevealedShare(sender, key_share, signature, seed_digest),
        )

    def _enter(self, stage: Stage, action: str) -> None:
        """Refuse an action that is not the one this round expects now."""
        if self._stage != stage:
            self._refuse(
                "out_of_order",
                f"it cannot {action} now: it is in round {self._stage.name.lower()}, and each "
                "round happens once, in order",
            )

    def _check_round(self, round_seed: bytes) -> None:
        """Refuse a message of another round."""
        if round_seed != self._setup.round_seed:
            self._refuse("wrong_round", "a message belongs to another round")

    def _refuse(self, reason: str, why: str) -> NoReturn:
        """Raise the refusal ``reason``; the client reveals nothing more this round."""
        logger.warning("client %r refuses the server: %s", self.client_id, reason)
        raise SecAggRefused(reason, f"client {self.client_id!r}: {why}.")

    def _bad_key(self, problem: str) -> SecAggRefused:
        """The refusal this client raises for a peer's unusable public key."""
        return SecAggRefused("bad_public_key", f"client {self.client_id!r}: {problem}")

    def _share_cipher(self, peer: str, sender: str, recipient: str) -> ChaCha20Poly1305:
        """The AEAD for shares from ``sender`` to ``recipient``: one key per ordered pair."""
        shared = self._encryption_secrets.get(peer)
        if shared is None:
            public = self._peer_keys[peer].encryption_public_key
            shared = exchange(self._encryption_key, public, self._bad_key)
            self._encryption_secrets[peer] = shared
        return share_key(shared, self._setup.round_seed, sender, recipient)

    def _encoded_input(
        self, encoded: npt.NDArray[np.unsignedinteger]
    ) -> npt.NDArray[np.unsignedinteger]:
        """A copy of ``x_u`` in the keystream word type, after checking it lies in the ring."""
        setup = self._setup
        if (
            not isinstance(encoded, np.ndarray)
            or encoded.shape != (setup.length,)
            or encoded.dtype.kind != "u"
        ):
            shape = getattr(encoded, "shape", None)
            dtype = getattr(encoded, "dtype", type(encoded).__name__)
            raise SecAggError(
                "input",
                f"client {self.client_id!r}: the encoded input must be an unsigned integer vector "
                f"of shape ({setup.length},), got shape {shape} and dtype {dtype}.",
            )
        if setup.length and int(encoded.max()) >> setup.modulus_bits:
            raise SecAggError(
                "input",
                f"client {self.client_id!r}: the encoded input holds {int(encoded.max())}, outside "
                f"the ring [0, 2^{setup.modulus_bits}); encode it into the ring first.",
            )
        return encoded.astype(self._dtype)
