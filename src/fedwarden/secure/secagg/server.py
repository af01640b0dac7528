"""The server's side of a SecAgg+ round: routes ciphertexts, sums masked inputs, unmasks.

Bonawitz et al. (CCS 2017), Figure 4, server steps, with the signatures of the
malicious-server variant; the neighbour graph of Bell et al. (CCS 2020). The
server only routes and sums: it never holds a client's unmasked input, and
its memory is one ``uint64`` sum plus one correction vector. It verifies what
it can, so that one misbehaving client cannot end a round:

* a message that is unknown, repeated, late, from a dropout, or fails a
  signature is rejected (:class:`~fedwarden.core.errors.UpdateRejected`) and the
  round goes on without it;
* every share revealed in round 4 carries its dealer's signature. When a
  rebuilt secret does not match its dealer's signed commitment (the hash of
  the self-mask seed, or the advertised public key), the server checks the
  signatures of that secret's shares: a client that revealed a share its
  dealer did not sign is excluded, recorded in :attr:`SecAggServer.misbehaving`,
  and the round still finishes when ``t`` honest holders of every needed
  secret remain (signatures are checked only then, which keeps honest rounds
  fast);
* a rebuilt secret that does not match its dealer's signed commitment (a
  dealer that signed inconsistent shares) aborts the round naming the dealer.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection, Mapping, Sequence
from typing import NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.secure.prg import SEED_BYTES, apply_masks, reduce_modulo, word_dtype
from fedwarden.secure.secagg.client import Stage
from fedwarden.secure.secagg.crypto import KEY_BYTES, pairwise_seed
from fedwarden.secure.secagg.messages import (
    MASKING_KEY,
    SELF_MASK,
    ConsistencyAck,
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    MaskedInput,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    SecAggAborted,
    SecAggError,
    ShareDelivery,
    SharedKeys,
    UnmaskingRequest,
    UnmaskingResponse,
    advertisement_payload,
    consistency_payload,
    graph_seed,
    self_mask_commitment,
    share_digest,
    share_payload,
    survivor_list_digest,
    verifies,
)
from fedwarden.secure.secagg.parameters import SecAggParameters, neighbour_graph
from fedwarden.secure.shamir import ShamirError, Share, combine_shares

__all__ = ["SecAggServer"]

logger = logging.getLogger("fedwarden.secure")


class SecAggServer:
    """The server's side of a SecAgg+ round (module docstring).

    Each ``receive_*`` method takes one client message of the current round
    and raises :class:`~fedwarden.core.errors.UpdateRejected` (``reason`` says
    why) for a message it does not use; each ``close_*`` ends a round and
    returns what goes to the clients. :meth:`unmask` returns
    ``sum_{u in U3} x_u mod 2^b`` or raises :class:`SecAggAborted`.
    ``identities`` are the cohort's enrolled Ed25519 identity keys.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        length: int,
        params: SecAggParameters,
        *,
        identities: Mapping[str, Ed25519PublicKey],
        round_seed: bytes | None = None,
    ) -> None:
        members = sorted(cohort)
        if len(set(members)) != len(members) or not all(
            isinstance(member, str) and member for member in members
        ):
            raise ConfigError(
                "secure aggregation: the cohort must be distinct, non-empty client ids."
            )
        if not isinstance(length, int) or isinstance(length, bool) or length < 0:
            raise ConfigError(f"secure aggregation: length must be an int >= 0, got {length!r}.")
        round_seed = secrets.token_bytes(SEED_BYTES) if round_seed is None else round_seed
        if not isinstance(round_seed, bytes) or len(round_seed) != SEED_BYTES:
            raise ConfigError(
                f"secure aggregation: round_seed must be {SEED_BYTES} bytes, got {round_seed!r}."
            )
        resolved = params.resolved(len(members))
        assert resolved.num_neighbours is not None and resolved.threshold is not None
        self.setup = RoundSetup(
            round_seed,
            tuple(members),
            length,
            resolved.modulus_bits,
            resolved.num_neighbours,
            resolved.threshold,
        )
        self.params = resolved
        self._setup_digest = self.setup.digest()
        self._members = frozenset(members)
        self._index = {client: position + 1 for position, client in enumerate(members)}
        self._dtype = word_dtype(resolved.modulus_bits)
        self._threshold = resolved.threshold
        self._identities = dict(identities)
        self._stage = Stage.ADVERTISE
        self._abort: SecAggAborted | None = None
        self._advertisements: dict[str, KeyAdvertisement] = {}
        self._graph_seed = b""
        self._graph: dict[str, frozenset[str]] = {}
        self._recipients: dict[str, frozenset[str]] = {}
        self._routed: dict[str, list[EncryptedShare]] = {}
        self._sharers: frozenset[str] = frozenset()
        self._sum = np.zeros(length, dtype=np.uint64)
        self._submitted: set[str] = set()
        self._survivors: tuple[str, ...] = ()
        self._acknowledged: dict[str, ConsistencyAck] = {}
        self._responses: dict[str, UnmaskingResponse] = {}
        self._seeds: dict[str, bytes] = {}
        self._keys: dict[str, X25519PrivateKey] = {}
        self.misbehaving: dict[str, str] = {}
        """Clients excluded for a provable offence (a forged share), with the reason."""

    @property
    def survivors(self) -> tuple[str, ...]:
        """Clients whose masked inputs are in the sum (so far, while inputs are collected)."""
        return self._survivors or tuple(sorted(self._submitted))

    @property
    def graph(self) -> dict[str, frozenset[str]]:
        """The round's neighbour graph over the advertisers (empty until round 0 ends)."""
        return dict(self._graph)

    @property
    def graph_seed(self) -> bytes:
        """The hash of every advertisement, which names this protocol instance in signatures."""
        return self._graph_seed

    @property
    def acknowledged(self) -> tuple[str, ...]:
        """Survivors that signed the survivor list in round 3 (asked for shares in round 4)."""
        return tuple(sorted(self._acknowledged))

    # round 0 ------------------------------------------------------------------------------

    def receive_advertisement(self, message: KeyAdvertisement) -> None:
        """Round 0: record a client's public keys after checking its identity signature."""
        sender = self._admit(
            Stage.ADVERTISE,
            message.round_seed,
            message.client_id,
            self._advertisements,
            self._members,
        )
        if (
            len(message.encryption_public_key) != KEY_BYTES
            or len(message.masking_public_key) != KEY_BYTES
        ):
            self._reject("malformed", sender, "public keys must be 32-byte raw X25519 keys")
        key = self._identities.get(sender)
        if key is None:
            self._reject("not_enrolled", sender, "it has no enrolled identity key")
        if not verifies(key, message.signature, advertisement_payload(self._setup_digest, message)):
            self._reject(
                "bad_signature", sender, "its key advertisement fails identity verification"
            )
        self._advertisements[sender] = message

    def close_advertisements(self) -> dict[str, NeighbourKeys]:
        """End round 0 (``U1`` = advertisers): each gets every advertisement; graph is fixed."""
        self._close(Stage.ADVERTISE, self._advertisements, "advertised keys")
        advertisements = tuple(
            self._advertisements[client] for client in sorted(self._advertisements)
        )
        self._graph_seed = graph_seed(self._setup_digest, advertisements)
        self._graph = neighbour_graph(
            [item.client_id for item in advertisements], self.setup.num_neighbours, self._graph_seed
        )
        message = NeighbourKeys(self.setup.round_seed, advertisements)
        return {client: message for client in self._advertisements}

    # round 1 ------------------------------------------------------------------------------

    def receive_shares(self, message: SharedKeys) -> None:
        """Round 1: accept a client's sealed share pairs, one per neighbour."""
        sender = self._admit(
            Stage.SHARE,
            message.round_seed,
            message.client_id,
            self._recipients,
            self._advertisements,
        )
        recipients = [share.recipient for share in message.shares]
        if (
            len(set(recipients)) != len(recipients)
            or set(recipients) != self._graph[sender]
            or any(share.sender != sender for share in message.shares)
            or any(share.round_seed != self.setup.round_seed for share in message.shares)
        ):
            self._reject("bad_routing", sender, "its shares must go once to each neighbour")
        self._recipients[sender] = frozenset(recipients)
        for share in message.shares:
            self._routed.setdefault(share.recipient, []).append(share)

    def close_sharing(self) -> dict[str, ShareDelivery]:
        """End round 1 (``U2`` = sharers): each sharer gets the shares other sharers sent it."""
        self._close(Stage.SHARE, self._recipients, "shared keys")
        self._sharers = frozenset(self._recipients)
        return {
            client: ShareDelivery(
                self.setup.round_seed,
                tuple(
                    share for share in self._routed.pop(client, []) if share.sender in self._sharers
                ),
            )
            for client in sorted(self._sharers)
        }

    # round 2 ------------------------------------------------------------------------------

    def receive_masked_input(self, message: MaskedInput) -> None:
        """Round 2: check one masked input and add it to the running sum mod 2^b."""
        sender = self._admit(
            Stage.COLLECT, message.round_seed, message.client_id, self._submitted, self._sharers
        )
        masked = message.masked
        if (
            not isinstance(masked, np.ndarray)
            or masked.shape != (self.setup.length,)
            or masked.dtype != self._dtype
        ):
            self._reject(
                "shape",
                sender,
                f"a masked input must be a {self._dtype} vector of shape "
                f"({self.setup.length},), got {getattr(masked, 'dtype', None)} "
                f"{getattr(masked, 'shape', None)}",
            )
        bits = self.setup.modulus_bits
        if bits < 8 * masked.dtype.itemsize and self.setup.length and int(masked.max()) >> bits:
            self._reject("range", sender, f"its values leave the ring Z_2^{bits}")
        np.add(self._sum, masked, out=self._sum)
        self._submitted.add(sender)

    def close_masked_inputs(self) -> ConsistencyCheck:
        """End round 2 (``U3`` = submitters): the survivor list for the consistency check."""
        self._close(Stage.COLLECT, self._submitted, "sent masked inputs")
        self._survivors = tuple(sorted(self._submitted))
        return ConsistencyCheck(self.setup.round_seed, self._survivors)

    # round 3 ------------------------------------------------------------------------------

    def receive_consistency_ack(self, message: ConsistencyAck) -> None:
        """Round 3: accept a survivor's signature of the survivor list."""
        sender = self._admit(
            Stage.CONSISTENCY,
            message.round_seed,
            message.client_id,
            self._acknowledged,
            set(self._survivors),
        )
        payload = consistency_payload(
            self._graph_seed, sender, survivor_list_digest(self._survivors)
        )
        if not verifies(self._identities[sender], message.signature, payload):
            self._reject(
                "bad_signature", sender, "its signature of the survivor list does not verify"
            )
        self._acknowledged[sender] = message

    def close_consistency(self) -> UnmaskingRequest:
        """End round 3 (``U4`` = signers): ask them for shares, showing every signature."""
        self._close(Stage.CONSISTENCY, self._acknowledged, "signed the survivors")
        self._check_recoverable(self._acknowledged)
        return UnmaskingRequest(
            self.setup.round_seed,
            self._survivors,
            tuple(sorted(self._sharers - set(self._survivors))),
            tuple(self._acknowledged[client] for client in sorted(self._acknowledged)),
        )

    # round 4 ------------------------------------------------------------------------------

    def receive_unmasking_response(self, message: UnmaskingResponse) -> None:
        """Round 4: accept revealed shares after checking each is held and signed by its dealer.

        A client revealing a share its dealer did not sign is excluded and
        recorded in :attr:`misbehaving`; its other shares are not used either.
        """
        sender = self._admit(
            Stage.UNMASK, message.round_seed, message.client_id, self._responses, self._acknowledged
        )
        survivors = set(self._survivors)
        dropped = self._sharers - survivors
        for revealed, owners in (
            (message.self_mask_shares, survivors),
            (message.secret_key_shares, dropped),
        ):
            seen: set[str] = set()
            for item in revealed:
                holders = self._recipients.get(item.owner, frozenset()) | {item.owner}
                if item.owner not in owners or item.owner in seen or sender not in holders:
                    self._reject(
                        "bad_share",
                        sender,
                        f"it revealed a share of {item.owner!r} it does not hold or was not asked "
                        "for",
                    )
                try:
                    x = Share.from_bytes(item.share).x
                except ShamirError:
                    x = -1
                if x != self._index[sender]:
                    self._reject("bad_share", sender, f"its share of {item.owner!r} is malformed")
                seen.add(item.owner)
        self._responses[sender] = message

    def unmask(self) -> npt.NDArray[np.uint64]:
        """End round 4: remove survivors' self masks and dropouts' pairwise masks; the exact sum.

        Raises :class:`SecAggAborted`, returning nothing, when any needed secret
        has fewer than ``t`` revealed shares or a dealer's shares are inconsistent.
        """
        self._close(Stage.UNMASK, self._responses, "revealed shares")
        while True:
            self._check_recoverable(self._responses)
            inconsistent = self._inconsistent_secret()
            if inconsistent is None:
                break
            self._exclude_forgers(*inconsistent)
        setup = self.setup
        survivors = set(self._survivors)
        masks = [(self._seeds[client], 1) for client in self._survivors]
        for client, masking_key in sorted(self._keys.items()):
            for peer in sorted(self._recipients[client] & survivors):
                peer_public = self._advertisements[peer].masking_public_key
                seed = pairwise_seed(
                    masking_key, peer_public, setup.round_seed, peer, client, self._abort_for
                )
                # The survivor added +PRG(s) for a higher-id dropout, -PRG(s) for a lower one.
                masks.append((seed, 1 if client > peer else -1))
        correction = np.zeros(setup.length, dtype=self._dtype)
        apply_masks(correction, masks, setup.modulus_bits)
        total = self._sum
        np.subtract(total, correction, out=total)
        self._sum = np.zeros(0, dtype=np.uint64)
        self._stage = Stage.DONE
        return reduce_modulo(total, setup.modulus_bits)

    # helpers ------------------------------------------------------------------------------

    def _inconsistent_secret(self) -> tuple[str, bytes] | None:
        """Rebuild every needed secret; the first whose shares disagree or miss its commitment."""
        seed_shares, key_shares = self._collect_shares()
        self._seeds, self._keys = {}, {}
        for client in self._survivors:
            seed = self._reconstruct(seed_shares.get(client, []), SEED_BYTES)
            commitment = self._advertisements[client].self_mask_commitment
            if seed is None or self_mask_commitment(self._setup_digest, client, seed) != commitment:
                return client, SELF_MASK
            self._seeds[client] = seed
        for client in sorted(self._sharers - set(self._survivors)):
            if not self._recipients[client] & set(self._survivors):
                continue
            raw = self._reconstruct(key_shares.get(client, []), KEY_BYTES)
            if raw is None:
                return client, MASKING_KEY
            masking_key = X25519PrivateKey.from_private_bytes(raw)
            advertised = self._advertisements[client].masking_public_key
            if masking_key.public_key().public_bytes_raw() != advertised:
                return client, MASKING_KEY
            self._keys[client] = masking_key
        return None

    def _exclude_forgers(self, owner: str, secret: bytes) -> None:
        """Exclude the clients whose share of ``owner``'s ``secret`` ``owner`` did not sign.

        When every share verifies, ``owner`` itself signed inconsistent shares: abort.
        """
        forgers = []
        for responder, response in sorted(self._responses.items()):
            shares = (
                response.self_mask_shares if secret == SELF_MASK else response.secret_key_shares
            )
            for item in shares:
                if item.owner == owner and not self._signed_by_owner(responder, item, secret):
                    forgers.append(responder)
        if not forgers:
            self._fail(
                "dealer_cheated",
                f"{owner!r}'s {secret.decode()} rebuilt from shares it signed does not match its "
                "signed commitment: it dealt inconsistent shares",
            )
        for forger in forgers:
            logger.warning(
                "secure aggregation excludes %r: it revealed a share of %r that %r did not sign",
                forger,
                owner,
                owner,
            )
            self.misbehaving[forger] = "forged_share"
            del self._responses[forger]

    def _signed_by_owner(self, holder: str, item: RevealedShare, secret: bytes) -> bool:
        """Whether ``item.owner`` signed ``item`` as one of the pair it dealt to ``holder``."""
        digest = share_digest(secret, item.share)
        pair = (digest, item.paired_digest) if secret == SELF_MASK else (item.paired_digest, digest)
        payload = share_payload(self._graph_seed, item.owner, holder, *pair)
        return verifies(self._identities[item.owner], item.signature, payload)

    def _admit(
        self,
        stage: Stage,
        round_seed: bytes,
        sender: str,
        seen: Collection[str],
        eligible: Collection[str],
    ) -> str:
        """The sender of a message for ``stage``; UpdateRejected with the reason if refused."""
        if self._abort is not None:
            raise self._abort
        if round_seed != self.setup.round_seed:
            self._reject("wrong_round", sender, "the message belongs to another round")
        if self._stage != stage:
            reason = "late" if self._stage > stage else "early"
            self._reject(
                reason,
                sender,
                f"a round-{stage.name.lower()} message arrived during round "
                f"{self._stage.name.lower()}",
            )
        if sender not in self._members:
            self._reject("unknown_sender", sender, "it is not in this round's cohort")
        if sender in seen:
            self._reject("duplicate", sender, "it already sent this round's message")
        if sender in self.misbehaving:
            self._reject("excluded", sender, "it was excluded for a forged share")
        if sender not in eligible:
            self._reject("dropped_out", sender, "it missed an earlier round of this protocol")
        return sender

    def _close(self, stage: Stage, arrived: Collection[str], what: str) -> None:
        """End ``stage``; abort the protocol when fewer than ``t`` clients ``what``."""
        if self._abort is not None:
            raise self._abort
        if self._stage != stage:
            raise SecAggError(
                "out_of_order",
                f"secure aggregation: the server cannot end round {stage.name.lower()} during "
                f"round {self._stage.name.lower()}; call the close_* methods in order, once.",
            )
        if len(arrived) < self._threshold:
            self._fail(
                "too_few_clients",
                f"only {len(arrived)} clients {what}, fewer than the threshold t={self._threshold}",
            )
        self._stage = Stage(stage + 1)

    def _check_recoverable(self, responders: Collection[str]) -> None:
        """Abort unless every needed secret has at least ``t`` holders among ``responders``."""
        survivors = set(self._survivors)
        present = set(responders)
        for client in self._survivors:
            holders = (self._recipients[client] & self._sharers) | {client}
            self._require(client, len(holders & present), "self-mask seed")
        for client in sorted(self._sharers - survivors):
            if self._recipients[client] & survivors:
                holders = self._recipients[client] & self._sharers
                self._require(client, len(holders & present), "masking key")

    def _require(self, owner: str, available: int, secret: str) -> None:
        """Abort when ``available`` holders cannot rebuild ``owner``'s ``secret``."""
        if available < self._threshold:
            self._fail(
                "too_few_shares",
                f"only {available} holders of {owner!r}'s {secret} can answer, fewer than the "
                f"threshold t={self._threshold}",
            )

    def _collect_shares(self) -> tuple[dict[str, list[Share]], dict[str, list[Share]]]:
        """Revealed shares grouped by owner: self-mask seed shares, then masking key shares."""
        seeds: dict[str, list[Share]] = {}
        keys: dict[str, list[Share]] = {}
        for response in self._responses.values():
            for item in response.self_mask_shares:
                seeds.setdefault(item.owner, []).append(Share.from_bytes(item.share))
            for item in response.secret_key_shares:
                keys.setdefault(item.owner, []).append(Share.from_bytes(item.share))
        return seeds, keys

    def _reconstruct(self, shares: list[Share], size: int) -> bytes | None:
        """A secret rebuilt from ``shares``, or None when they do not lie on one polynomial."""
        try:
            return combine_shares(sorted(shares, key=lambda share: share.x), self._threshold, size)
        except ShamirError:
            return None

    def _abort_for(self, problem: str) -> SecAggAborted:
        """The abort raised for a public key that cannot be used in unmasking."""
        return SecAggAborted("bad_public_key", f"secure aggregation aborted: {problem}")

    def _reject(self, reason: str, sender: str, why: str) -> NoReturn:
        """Raise UpdateRejected for one message of ``sender``."""
        logger.warning("secure aggregation rejected a message from %r: %s", sender, reason)
        raise UpdateRejected(
            reason,
            f"secure aggregation rejected a message from {sender!r}: {why}. It is not used; the "
            "round goes on without it.",
        )

    def _fail(self, reason: str, why: str) -> NoReturn:
        """Abort the round for good: no sum will be returned."""
        self._abort = SecAggAborted(
            reason,
            f"secure aggregation aborted: {why}. Nothing is unmasked and no sum is returned; "
            "run the round again with more clients or a lower threshold.",
        )
        self._sum = np.zeros(0, dtype=np.uint64)
        logger.warning("secure aggregation aborted: %s", reason)
        raise self._abort
