"""SecAgg+ secure aggregation: the server learns the sum of a cohort's inputs and nothing else.

Implements the protocol of Bonawitz et al. (CCS 2017), "Practical Secure
Aggregation for Privacy-Preserving Machine Learning" (Figure 4, rounds 0-4),
over the sparse neighbour graph of Bell et al. (CCS 2020), "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead" (SecAgg+, Section 3): each client
masks only with its ``k`` neighbours, so client and server work grow with
``k = O(log n)`` instead of ``n``; ``k = n - 1`` is classic SecAgg.

Rounds (one client state machine :class:`SecAggClient`, one server state
machine :class:`SecAggServer`; the server only routes and sums):

0. *AdvertiseKeys*: each client makes two X25519 key pairs, ``c`` (share
   encryption) and ``s`` (masking), and optionally signs both public keys, the
   round and its id with its long-term Ed25519 identity key.
1. *ShareKeys*: each client draws a 32-byte self-mask seed ``b_u`` and
   Shamir-splits ``b_u`` and its raw masking secret key ``s_sk_u``
   ``t``-of-(its neighbours and itself); each neighbour's pair of shares is
   sealed with ChaCha20-Poly1305 under a key HKDF-derived from
   ``X25519(c_sk_u, c_pk_v)``, the round and the ordered pair ``(u, v)``.
2. *MaskedInputCollection*: ``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv)
   - sum_{v < u} PRG(s_uv) (mod 2^b)`` over the neighbours ``v`` that shared
   keys, with ``s_uv`` HKDF-derived from ``X25519(s_sk_u, s_pk_v)``
   (:mod:`fedwarden.secure.prg`). The server adds each ``y_u`` as it arrives
   into one ``uint64`` buffer (O(d) memory).
3. *ConsistencyCheck*: the server announces the survivors ``U3``; each client
   checks them against what it saw and acknowledges, signing the list when it
   holds an identity key.
4. *Unmasking*: each acknowledging client reveals, per neighbour, the share of
   ``b_v`` if ``v`` survived, or the share of ``s_sk_v`` if ``v`` dropped; never
   both. The server rebuilds survivors' self masks and dropped clients' pairwise
   masks and removes them, leaving ``sum_{u in U3} x_u (mod 2^b)``.

Threat model: an honest-but-curious server, plus these active checks. Public
keys are bound to enrolled identities when identity keys are given; unknown,
duplicate, late or ineligible senders are rejected with
:class:`~fedwarden.core.errors.UpdateRejected` (``reason`` says which); an
honest client raises :class:`SecAggRefused` instead of answering a request for
both shares of one peer, a survivor list different from the one it
acknowledged, or a round with fewer than ``t`` survivors among its share
holders; with fewer than ``t`` shares for any needed secret the round raises
:class:`SecAggAborted` and returns no sum. Share holders count the client itself,
as in Flower's SecAgg+, so ``1 < t <= k + 1``.

Messages are frozen dataclasses of bytes, ints, strings, tuples and NumPy
arrays: a transport serializes them field by field (no pickle).
:func:`payload_bytes` is the size a transport carries for a message's fields.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Any, NoReturn, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedwarden.core.errors import ConfigError, FedwardenError, UpdateRejected
from fedwarden.secure.prg import (
    MAX_MODULUS_BITS,
    SEED_BYTES,
    apply_masks,
    derive_seed,
    reduce_modulo,
    word_dtype,
)
from fedwarden.secure.shamir import SHARE_BYTES, ShamirError, Share, combine_shares, split_secret

__all__ = [
    "DESIGN_ABORT_PROBABILITY",
    "DESIGN_DROPOUT",
    "ConsistencyAck",
    "ConsistencyCheck",
    "EncryptedShare",
    "InProcessSecureSum",
    "KeyAdvertisement",
    "MaskedInput",
    "NeighbourKeys",
    "RevealedShare",
    "RoundSetup",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggParameters",
    "SecAggRefused",
    "SecAggServer",
    "ShareDelivery",
    "SharedKeys",
    "UnmaskingRequest",
    "UnmaskingResponse",
    "neighbour_graph",
    "payload_bytes",
]

logger = logging.getLogger("fedwarden.secure")

_ADVERTISE = b"fedwarden/secagg/v1/advertise-keys"
_CONSISTENCY = b"fedwarden/secagg/v1/consistency-check"
_GRAPH = b"fedwarden/secagg/v1/neighbour-graph"
_PAIRWISE_MASK = b"fedwarden/secagg/v1/pairwise-mask"
_SHARE_ENCRYPTION = b"fedwarden/secagg/v1/share-encryption"
_KEY_BYTES = 32
_NONCE_BYTES = 12
_MAX_COHORT = 65535

DESIGN_DROPOUT = Fraction(3, 10)
"""Fraction of a cohort that default parameters are sized to lose without aborting."""

DESIGN_ABORT_PROBABILITY = Fraction(1, 1024)
"""Bound on the abort probability at :data:`DESIGN_DROPOUT` that default thresholds meet."""


# --- errors ---------------------------------------------------------------------------------


class SecAggError(FedwardenError):
    """Secure aggregation cannot go on as asked; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SecAggRefused(SecAggError):
    """An honest client refuses a server request that could reveal more than the sum."""


class SecAggAborted(SecAggError):
    """The round cannot be unmasked (too few survivors or shares); no sum is revealed."""


# --- parameters and the neighbour graph ------------------------------------------------------


@dataclass(frozen=True)
class SecAggParameters:
    """Ring size, neighbour count ``k`` and Shamir threshold ``t`` of one SecAgg+ round.

    ``None`` means the default for the cohort size ``n`` (see :meth:`resolved`).
    Defaults are sized so that a round survives :data:`DESIGN_DROPOUT` (30%) of
    the cohort dropping out: ``k = 6 * ceil(log2 n)`` (even, so a ``k``-regular
    graph exists; ``O(log n)`` as in Bell et al. 2020), capped at ``n - 1``;
    ``t`` is the largest threshold, at most ``ceil(2 (k + 1) / 3)`` of the
    ``k + 1`` share holders and at least 2, for which clients dropping
    independently with probability 0.3 abort the round with probability at most
    :data:`DESIGN_ABORT_PROBABILITY` (union bound over the cohort:
    ``n * P[Binomial(k, 0.7) < t]``). For ``n = 100`` that is ``k = 42``,
    ``t = 16``. A higher ``t`` resists larger coalitions of curious clients but
    aborts more often; set ``threshold`` to choose.
    """

    modulus_bits: int = 32
    num_neighbours: int | None = None
    threshold: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.modulus_bits) or not 1 <= self.modulus_bits <= MAX_MODULUS_BITS:
            raise ConfigError(
                f"secure aggregation: modulus_bits must be an int in 1..{MAX_MODULUS_BITS}, "
                f"got {self.modulus_bits!r}."
            )
        if self.num_neighbours is not None and (
            not _is_int(self.num_neighbours) or self.num_neighbours < 1
        ):
            raise ConfigError(
                "secure aggregation: num_neighbours must be a positive int or None (default "
                f"O(log n)), got {self.num_neighbours!r}."
            )
        if self.threshold is not None and (not _is_int(self.threshold) or self.threshold < 2):
            raise ConfigError(
                "secure aggregation: threshold must be an int of at least 2 or None (default "
                f"ceil(2(k+1)/3)), got {self.threshold!r}."
            )

    def resolved(self, cohort_size: int) -> SecAggParameters:
        """These parameters with ``k`` and ``t`` filled in and checked for a cohort of ``n``."""
        n = cohort_size
        if not _is_int(n) or not 2 <= n <= _MAX_COHORT:
            raise ConfigError(
                f"secure aggregation needs a cohort of 2..{_MAX_COHORT} clients, got {n!r}."
            )
        k = self.num_neighbours
        if k is None:
            k = min(n - 1, 6 * (n - 1).bit_length())
        if k > n - 1:
            raise ConfigError(
                f"secure aggregation: num_neighbours={k} exceeds n - 1 = {n - 1} for a cohort of "
                f"{n}; use at most {n - 1} (classic SecAgg)."
            )
        if k % 2 == 1 and n % 2 == 1:
            raise ConfigError(
                f"secure aggregation: no graph on {n} clients gives each exactly {k} neighbours "
                f"(k * n = {k * n} is odd); use an even num_neighbours such as {k - 1} or {k + 1}."
            )
        t = self.threshold if self.threshold is not None else _default_threshold(n, k)
        if not 1 < t <= k + 1:
            raise ConfigError(
                f"secure aggregation: threshold={t} must satisfy 1 < t <= k + 1 = {k + 1} "
                f"(num_neighbours={k} plus the client itself hold shares) for a cohort of {n}."
            )
        return SecAggParameters(modulus_bits=self.modulus_bits, num_neighbours=k, threshold=t)


def _default_threshold(cohort_size: int, num_neighbours: int) -> int:
    """The largest ``t`` in ``2..ceil(2(k+1)/3)`` meeting the design abort bound (see above).

    Exact integer arithmetic: ``P[Binomial(k, q) < t]`` with ``q = 1 - DESIGN_DROPOUT``.
    """
    k = num_neighbours
    stay = 1 - DESIGN_DROPOUT
    # n * tail / m^k <= N / D, with q = a / m and the bound N / D, in integers.
    allowed = stay.denominator**k * DESIGN_ABORT_PROBABILITY.numerator
    best, tail = 2, 0
    for t in range(1, max(2, math.ceil(2 * (k + 1) / 3)) + 1):
        below = t - 1  # P[Binomial < t] gains the term for exactly t - 1 successes
        tail += (
            math.comb(k, below)
            * stay.numerator**below
            * (stay.denominator - stay.numerator) ** (k - below)
        )
        if cohort_size * tail * DESIGN_ABORT_PROBABILITY.denominator > allowed:
            break
        best = max(best, t)
    return best


def neighbour_graph(
    cohort: Sequence[str], num_neighbours: int, round_seed: bytes
) -> dict[str, frozenset[str]]:
    """The symmetric ``k``-regular SecAgg+ neighbour graph of ``cohort`` for one round.

    Bell et al. (CCS 2020), Section 3: a random ``k``-regular graph. Here it is
    a circulant (Harary-like) graph over a permutation of the cohort that
    anyone can recompute from the public ``round_seed``: clients are ordered by
    ``SHA-256(label, round_seed, id)``, and position ``i`` links to positions
    ``i +- 1 .. i +- floor(k / 2)`` and, for odd ``k`` (``n`` even), ``i + n / 2``.
    """
    order = sorted(cohort, key=lambda client: (_digest(_GRAPH, round_seed, client), client))
    n = len(order)
    offsets = list(range(1, num_neighbours // 2 + 1))
    if num_neighbours % 2 == 1:
        offsets.append(n // 2)
    graph: dict[str, set[str]] = {client: set() for client in order}
    for position, client in enumerate(order):
        for offset in offsets:
            peer = order[(position + offset) % n]
            graph[client].add(peer)
            graph[peer].add(client)
    return {client: frozenset(peers) for client, peers in graph.items()}


# --- messages --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundSetup:
    """Server to every client: the public description of one round (cohort sorted by id)."""

    round_seed: bytes
    cohort: tuple[str, ...]
    length: int
    modulus_bits: int
    num_neighbours: int
    threshold: int


@dataclass(frozen=True)
class KeyAdvertisement:
    """Round 0, client to server: the client's two X25519 public keys, optionally signed."""

    round_seed: bytes
    client_id: str
    encryption_public_key: bytes
    masking_public_key: bytes
    signature: bytes = b""


@dataclass(frozen=True)
class NeighbourKeys:
    """Round 0, server to client: the advertisements of the client's neighbours."""

    round_seed: bytes
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1: the sender's shares of ``b`` and ``s_sk`` for one recipient, AEAD-sealed."""

    round_seed: bytes
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class SharedKeys:
    """Round 1, client to server: one sealed share pair per neighbour, for the server to route."""

    round_seed: bytes
    client_id: str
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True)
class ShareDelivery:
    """Round 1, server to client: the sealed share pairs addressed to it by neighbours."""

    round_seed: bytes
    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client to server: ``y_u`` (``uint32`` for ``b <= 32``, else ``uint64``)."""

    round_seed: bytes
    client_id: str
    masked: npt.NDArray[np.unsignedinteger]


@dataclass(frozen=True)
class ConsistencyCheck:
    """Round 3, server to survivors: the clients whose masked inputs are in the sum."""

    round_seed: bytes
    survivors: tuple[str, ...]


@dataclass(frozen=True)
class ConsistencyAck:
    """Round 3, client to server: acceptance of the survivor list, signed with an identity key."""

    round_seed: bytes
    client_id: str
    signature: bytes = b""


@dataclass(frozen=True)
class UnmaskingRequest:
    """Round 4, server to clients: survivors (``b`` shares wanted) and dropouts (``s_sk``)."""

    round_seed: bytes
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]


@dataclass(frozen=True)
class RevealedShare:
    """One serialized :class:`~fedwarden.secure.shamir.Share` of ``owner``'s secret."""

    owner: str
    share: bytes


@dataclass(frozen=True)
class UnmaskingResponse:
    """Round 4, client to server: shares of survivors' self-mask seeds and dropouts' keys."""

    round_seed: bytes
    client_id: str
    self_mask_shares: tuple[RevealedShare, ...]
    secret_key_shares: tuple[RevealedShare, ...]


def payload_bytes(message: object) -> int:
    """Bytes a transport carries for ``message``'s fields, framing excluded.

    bytes and arrays count their length, strings their UTF-8 length, ints 8
    bytes; tuples and nested messages are summed.
    """
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, np.ndarray):
        return int(message.nbytes)
    if isinstance(message, str):
        return len(message.encode())
    if isinstance(message, int):
        return 8
    if isinstance(message, tuple):
        return sum(payload_bytes(item) for item in message)
    if is_dataclass(message) and not isinstance(message, type):
        return sum(payload_bytes(getattr(message, field.name)) for field in fields(message))
    raise TypeError(f"payload_bytes cannot size a {type(message).__name__}.")


# --- the client ------------------------------------------------------------------------------


class _Stage(IntEnum):
    """Protocol rounds, in order; a message is accepted only in its own round."""

    ADVERTISE = 0
    SHARE = 1
    COLLECT = 2
    CONSISTENCY = 3
    UNMASK = 4
    DONE = 5


class _RoundView:
    """What both sides derive from a :class:`RoundSetup`: graph, Shamir x-coordinates, ring."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self.members = frozenset(setup.cohort)
        self.index = {client: position + 1 for position, client in enumerate(setup.cohort)}
        self.graph = neighbour_graph(setup.cohort, setup.num_neighbours, setup.round_seed)
        self.threshold = setup.threshold
        self.modulus_bits = setup.modulus_bits
        self.dtype = word_dtype(setup.modulus_bits)


class SecAggClient:
    """One client's side of a SecAgg+ round (Bonawitz et al. 2017, Figure 4, client steps).

    Call in order: :meth:`advertise_keys`, :meth:`share_keys`,
    :meth:`receive_shares`, :meth:`mask_input`, :meth:`check_consistency`,
    :meth:`unmask`. Each refuses (:class:`SecAggRefused`) a call out of order
    or a server message inconsistent with what the client saw. The secrets
    (``b_u``, both X25519 secret keys, the shares it holds) never leave the
    object except as the shares round 4 allows.
    """

    def __init__(
        self,
        client_id: str,
        setup: RoundSetup,
        *,
        identity: Ed25519PrivateKey | None = None,
        peer_identities: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        self._view = _RoundView(setup)
        if client_id not in self._view.members:
            raise SecAggRefused(
                "not_in_cohort", f"client {client_id!r} is not in this round's cohort."
            )
        self.client_id = client_id
        self._identity = identity
        self._peer_identities = peer_identities
        self._neighbours = self._view.graph[client_id]
        self._encryption_key = X25519PrivateKey.generate()
        self._masking_key = X25519PrivateKey.generate()
        self._self_mask_seed = secrets.token_bytes(SEED_BYTES)
        self._peer_keys: dict[str, KeyAdvertisement] = {}
        self._own_shares: tuple[Share, Share] | None = None
        self._held_shares: dict[str, tuple[Share, Share]] = {}
        self._acknowledged: tuple[str, ...] = ()
        self._stage = _Stage.ADVERTISE

    def advertise_keys(self) -> KeyAdvertisement:
        """Round 0: both public keys, signed with the identity key when there is one."""
        self._enter(_Stage.ADVERTISE, "advertise keys")
        setup = self._view.setup
        encryption_public = self._encryption_key.public_key().public_bytes_raw()
        masking_public = self._masking_key.public_key().public_bytes_raw()
        signature = b""
        if self._identity is not None:
            signature = self._identity.sign(
                _advertisement_payload(
                    setup.round_seed, self.client_id, encryption_public, masking_public
                )
            )
        self._stage = _Stage.SHARE
        return KeyAdvertisement(
            setup.round_seed, self.client_id, encryption_public, masking_public, signature
        )

    def share_keys(self, neighbour_keys: NeighbourKeys) -> SharedKeys:
        """Round 1: Shamir-share ``b_u`` and ``s_sk_u`` with the advertised neighbours, sealed."""
        self._enter(_Stage.SHARE, "share keys")
        setup = self._view.setup
        self._check_round(neighbour_keys.round_seed)
        for advertisement in neighbour_keys.advertisements:
            peer = advertisement.client_id
            if peer not in self._neighbours or peer in self._peer_keys:
                raise SecAggRefused(
                    "unexpected_peer",
                    f"client {self.client_id!r}: the server sent keys of {peer!r}, which is not "
                    "a neighbour in this round's graph or was sent twice; refusing to share.",
                )
            self._verify_peer(advertisement)
            self._peer_keys[peer] = advertisement
        holders = sorted([self.client_id, *self._peer_keys])
        if len(holders) < self._view.threshold:
            raise SecAggRefused(
                "too_few_neighbours",
                f"client {self.client_id!r}: only {len(holders)} share holders (itself and "
                f"{len(holders) - 1} neighbours) advertised keys, fewer than the threshold "
                f"t={self._view.threshold}; its masks could never be removed.",
            )
        coordinates = [self._view.index[holder] for holder in holders]
        seed_shares = split_secret(self._self_mask_seed, self._view.threshold, coordinates)
        key_shares = split_secret(
            self._masking_key.private_bytes_raw(), self._view.threshold, coordinates
        )
        sealed = []
        for holder, seed_share, key_share in zip(holders, seed_shares, key_shares, strict=True):
            if holder == self.client_id:
                self._own_shares = (seed_share, key_share)
                continue
            aead = self._share_cipher(holder, sender=self.client_id, recipient=holder)
            nonce = secrets.token_bytes(_NONCE_BYTES)
            plaintext = seed_share.to_bytes() + key_share.to_bytes()
            associated = _encode(setup.round_seed, self.client_id, holder)
            sealed.append(
                EncryptedShare(
                    setup.round_seed,
                    self.client_id,
                    holder,
                    nonce,
                    aead.encrypt(nonce, plaintext, associated),
                )
            )
        self._stage = _Stage.COLLECT
        return SharedKeys(setup.round_seed, self.client_id, tuple(sealed))

    def receive_shares(self, delivery: ShareDelivery) -> None:
        """Round 1 end: open the share pairs neighbours sealed for this client."""
        self._enter(_Stage.COLLECT, "receive shares")
        if self._held_shares:
            raise SecAggRefused(
                "duplicate", f"client {self.client_id!r} already received its shares this round."
            )
        self._check_round(delivery.round_seed)
        held: dict[str, tuple[Share, Share]] = {}
        for sealed in delivery.shares:
            sender = sealed.sender
            if (
                sealed.recipient != self.client_id
                or sender not in self._peer_keys
                or sender in held
            ):
                raise SecAggRefused(
                    "unexpected_share",
                    f"client {self.client_id!r}: a share from {sender!r} to {sealed.recipient!r} "
                    "does not come from an advertised neighbour, is not addressed here, or "
                    "repeats.",
                )
            self._check_round(sealed.round_seed)
            aead = self._share_cipher(sender, sender=sender, recipient=self.client_id)
            try:
                plaintext = aead.decrypt(
                    sealed.nonce,
                    sealed.ciphertext,
                    _encode(sealed.round_seed, sender, self.client_id),
                )
                pair = (
                    Share.from_bytes(plaintext[:SHARE_BYTES]),
                    Share.from_bytes(plaintext[SHARE_BYTES:]),
                )
            except (InvalidTag, ValueError, ShamirError) as error:
                raise SecAggRefused(
                    "bad_share",
                    f"client {self.client_id!r}: the share pair from {sender!r} does not decrypt "
                    "to two shares (tampered with, or sealed for another round).",
                ) from error
            own_x = self._view.index[self.client_id]
            if pair[0].x != own_x or pair[1].x != own_x:
                raise SecAggRefused(
                    "bad_share",
                    f"client {self.client_id!r}: the shares from {sender!r} are for x={pair[0].x}, "
                    f"not this client's x={own_x}.",
                )
            held[sender] = pair
        self._held_shares = held

    def mask_input(self, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """Round 2: ``y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod 2^b``."""
        self._enter(_Stage.COLLECT, "mask its input")
        setup = self._view.setup
        masked = self._encoded_input(encoded)
        masks = [(self._self_mask_seed, 1)]
        for peer in sorted(self._held_shares):
            seed = _pairwise_seed(
                self._masking_key,
                self._peer_keys[peer].masking_public_key,
                setup.round_seed,
                self.client_id,
                peer,
                self._refusal,
            )
            masks.append((seed, 1 if peer > self.client_id else -1))
        apply_masks(masked, masks, setup.modulus_bits)
        self._stage = _Stage.CONSISTENCY
        return MaskedInput(
            setup.round_seed, self.client_id, reduce_modulo(masked, setup.modulus_bits)
        )

    def check_consistency(self, check: ConsistencyCheck) -> ConsistencyAck:
        """Round 3: accept the survivor list if it is consistent and leaves ``t`` holders here."""
        self._enter(_Stage.CONSISTENCY, "check consistency")
        self._check_round(check.round_seed)
        survivors = check.survivors
        if list(survivors) != sorted(set(survivors)) or not set(survivors) <= self._view.members:
            raise SecAggRefused(
                "inconsistent_survivors",
                f"client {self.client_id!r}: the survivor list is not a sorted list of distinct "
                "cohort members.",
            )
        if self.client_id not in survivors:
            raise SecAggRefused(
                "inconsistent_survivors",
                f"client {self.client_id!r} sent its masked input but is not listed as a survivor.",
            )
        unshared = (set(survivors) & self._neighbours) - set(self._held_shares)
        if unshared:
            raise SecAggRefused(
                "inconsistent_survivors",
                f"client {self.client_id!r}: neighbours {sorted(unshared)} are listed as survivors "
                "but never shared keys with it, so their inputs cannot be in the sum.",
            )
        local = len((self._neighbours | {self.client_id}) & set(survivors))
        if len(survivors) < self._view.threshold or local < self._view.threshold:
            raise SecAggRefused(
                "too_few_survivors",
                f"client {self.client_id!r}: {len(survivors)} survivors in all and {local} among "
                f"its share holders, fewer than the threshold t={self._view.threshold}; a sum "
                "over so few clients is not revealed.",
            )
        signature = b""
        if self._identity is not None:
            signature = self._identity.sign(
                _consistency_payload(check.round_seed, self.client_id, survivors)
            )
        self._acknowledged = survivors
        self._stage = _Stage.UNMASK
        return ConsistencyAck(check.round_seed, self.client_id, signature)

    def unmask(self, request: UnmaskingRequest) -> UnmaskingResponse:
        """Round 4: shares of ``b_v`` for surviving and of ``s_sk_v`` for dropped neighbours.

        Refuses a request naming a peer as both survivor and dropout, a survivor
        list other than the acknowledged one, or dropouts inconsistent with the
        shares this client received; answers at most once per round.
        """
        self._enter(_Stage.UNMASK, "unmask")
        self._check_round(request.round_seed)
        survivors, dropped = set(request.survivors), set(request.dropped)
        both = survivors & dropped
        if both:
            raise SecAggRefused(
                "both_shares",
                f"client {self.client_id!r}: the server asks for both the self-mask share and the "
                f"secret-key share of {sorted(both)}; revealing both would unmask their inputs.",
            )
        if request.survivors != self._acknowledged:
            raise SecAggRefused(
                "inconsistent_survivors",
                f"client {self.client_id!r}: the unmasking request lists other survivors than the "
                "consistency check it acknowledged.",
            )
        neighbours_dropped = dropped & self._neighbours
        unknown = neighbours_dropped - set(self._held_shares)
        unlisted = set(self._held_shares) - survivors - dropped
        if unknown or unlisted:
            raise SecAggRefused(
                "inconsistent_dropouts",
                f"client {self.client_id!r}: dropouts {sorted(unknown)} never shared keys with it "
                f"and neighbours {sorted(unlisted)} that did are neither survivors nor dropouts.",
            )
        assert self._own_shares is not None  # set in share_keys, which _enter has ordered first
        seed_shares = [RevealedShare(self.client_id, self._own_shares[0].to_bytes())]
        seed_shares += [
            RevealedShare(peer, self._held_shares[peer][0].to_bytes())
            for peer in sorted(survivors & set(self._held_shares))
        ]
        key_shares = [
            RevealedShare(peer, self._held_shares[peer][1].to_bytes())
            for peer in sorted(neighbours_dropped)
        ]
        self._stage = _Stage.DONE
        return UnmaskingResponse(
            request.round_seed, self.client_id, tuple(seed_shares), tuple(key_shares)
        )

    def _enter(self, stage: _Stage, action: str) -> None:
        """Refuse an action that is not the one this round expects now."""
        if self._stage != stage:
            raise SecAggRefused(
                "out_of_order",
                f"client {self.client_id!r} cannot {action} now: it is in round "
                f"{self._stage.name.lower()}, and each round happens once, in order.",
            )

    def _check_round(self, round_seed: bytes) -> None:
        """Refuse a message of another round."""
        if round_seed != self._view.setup.round_seed:
            raise SecAggRefused(
                "wrong_round", f"client {self.client_id!r}: a message belongs to another round."
            )

    def _verify_peer(self, advertisement: KeyAdvertisement) -> None:
        """Check a neighbour's advertisement against its enrolled identity, when there are any."""
        if self._peer_identities is None:
            return
        reason = _signature_problem(advertisement, self._peer_identities)
        if reason is not None:
            raise SecAggRefused(
                reason,
                f"client {self.client_id!r}: the keys advertised for {advertisement.client_id!r} "
                f"fail identity verification ({reason}); refusing to share with them.",
            )

    def _refusal(self, problem: str) -> SecAggRefused:
        """The refusal this client raises for a peer's unusable public key."""
        return SecAggRefused("bad_public_key", f"client {self.client_id!r}: {problem}")

    def _share_cipher(self, peer: str, *, sender: str, recipient: str) -> ChaCha20Poly1305:
        """The AEAD for shares from ``sender`` to ``recipient``: one key per ordered pair."""
        shared = _exchange(
            self._encryption_key,
            self._peer_keys[peer].encryption_public_key,
            self._refusal,
        )
        context = _encode(self._view.setup.round_seed, sender, recipient)
        return ChaCha20Poly1305(derive_seed(shared, purpose=_SHARE_ENCRYPTION, context=context))

    def _encoded_input(
        self, encoded: npt.NDArray[np.unsignedinteger]
    ) -> npt.NDArray[np.unsignedinteger]:
        """A copy of ``x_u`` in the keystream word type, after checking it lies in the ring."""
        setup = self._view.setup
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
        return encoded.astype(self._view.dtype)


# --- the server ------------------------------------------------------------------------------


_Message = TypeVar("_Message")


class SecAggServer:
    """The server's side of a SecAgg+ round: routes ciphertexts, sums masked inputs, unmasks.

    Bonawitz et al. (2017), Figure 4, server steps. Each ``receive_*`` method
    takes one client message of the current round and raises
    :class:`~fedwarden.core.errors.UpdateRejected` for a sender that is unknown,
    repeats, comes late (after the round's ``close_*``), dropped out earlier, or
    fails a check; each ``close_*`` ends a round and returns what goes to the
    clients. :meth:`unmask` returns ``sum_{u in U3} x_u mod 2^b`` or raises
    :class:`SecAggAborted`. The server never holds a client's unmasked input;
    memory is one ``uint64`` sum plus one correction vector.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        length: int,
        params: SecAggParameters,
        *,
        round_seed: bytes | None = None,
        identities: Mapping[str, Ed25519PublicKey] | None = None,
    ) -> None:
        members = sorted(cohort)
        if len(set(members)) != len(members) or not all(
            isinstance(member, str) and member for member in members
        ):
            raise ConfigError(
                "secure aggregation: the cohort must be distinct, non-empty client ids."
            )
        if not _is_int(length) or length < 0:
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
        self._view = _RoundView(self.setup)
        self._identities = identities
        self._stage = _Stage.ADVERTISE
        self._abort: SecAggAborted | None = None
        self._advertisements: dict[str, KeyAdvertisement] = {}
        self._recipients: dict[str, frozenset[str]] = {}
        self._routed: dict[str, list[EncryptedShare]] = {}
        self._sharers: frozenset[str] = frozenset()
        self._sum = np.zeros(length, dtype=np.uint64)
        self._submitted: set[str] = set()
        self._survivors: tuple[str, ...] = ()
        self._acknowledged: set[str] = set()
        self._responses: dict[str, UnmaskingResponse] = {}

    @property
    def survivors(self) -> tuple[str, ...]:
        """Clients whose masked inputs are in the sum (so far, while inputs are collected)."""
        return self._survivors or tuple(sorted(self._submitted))

    @property
    def acknowledged(self) -> tuple[str, ...]:
        """Survivors that accepted the survivor list in round 3 (asked for shares in round 4)."""
        return tuple(sorted(self._acknowledged))

    # round 0 ------------------------------------------------------------------------------

    def receive_advertisement(self, message: KeyAdvertisement) -> None:
        """Round 0: record a client's public keys after checking its identity signature."""
        sender = self._admit(
            _Stage.ADVERTISE,
            message.round_seed,
            message.client_id,
            self._advertisements,
            self._view.members,
        )
        if (
            len(message.encryption_public_key) != _KEY_BYTES
            or len(message.masking_public_key) != _KEY_BYTES
        ):
            self._reject("malformed", sender, "public keys must be 32-byte raw X25519 keys")
        if self._identities is not None:
            reason = _signature_problem(message, self._identities)
            if reason is not None:
                self._reject(reason, sender, "its key advertisement fails identity verification")
        self._advertisements[sender] = message

    def close_advertisements(self) -> dict[str, NeighbourKeys]:
        """End round 0 (``U1`` = advertisers): each gets its advertised neighbours' keys."""
        self._close(_Stage.ADVERTISE, self._advertisements, "advertised keys")
        advertised = self._advertisements
        return {
            client: NeighbourKeys(
                self.setup.round_seed,
                tuple(
                    advertised[peer]
                    for peer in sorted(self._view.graph[client])
                    if peer in advertised
                ),
            )
            for client in advertised
        }

    # round 1 ------------------------------------------------------------------------------

    def receive_shares(self, message: SharedKeys) -> None:
        """Round 1: accept a client's sealed share pairs, one per advertised neighbour."""
        sender = self._admit(
            _Stage.SHARE,
            message.round_seed,
            message.client_id,
            self._recipients,
            self._advertisements,
        )
        recipients = [share.recipient for share in message.shares]
        allowed = self._view.graph[sender] & set(self._advertisements)
        if (
            len(set(recipients)) != len(recipients)
            or not set(recipients) <= allowed
            or any(share.sender != sender for share in message.shares)
            or any(share.round_seed != self.setup.round_seed for share in message.shares)
        ):
            self._reject(
                "bad_routing", sender, "its shares must go once to each advertised neighbour"
            )
        if len(recipients) + 1 < self._view.threshold:
            self._reject(
                "too_few_shares",
                sender,
                f"it shared with {len(recipients)} neighbours; with itself that is fewer than "
                f"t={self._view.threshold} holders",
            )
        self._recipients[sender] = frozenset(recipients)
        for share in message.shares:
            self._routed.setdefault(share.recipient, []).append(share)

    def close_sharing(self) -> dict[str, ShareDelivery]:
        """End round 1 (``U2`` = sharers): each sharer gets the shares other sharers sent it."""
        self._close(_Stage.SHARE, self._recipients, "shared keys")
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
            _Stage.COLLECT, message.round_seed, message.client_id, self._submitted, self._sharers
        )
        masked = message.masked
        if (
            not isinstance(masked, np.ndarray)
            or masked.shape != (self.setup.length,)
            or masked.dtype != self._view.dtype
        ):
            self._reject(
                "shape",
                sender,
                f"a masked input must be a {self._view.dtype} vector of shape "
                f"({self.setup.length},), got {getattr(masked, 'dtype', None)} "
                f"{getattr(masked, 'shape', None)}",
            )
        bits = self.setup.modulus_bits
        if bits < 8 * masked.dtype.itemsize and self.setup.length and int(masked.max()) >> bits:
            self._reject(
                "range", sender, f"its values leave the ring Z_2^{self.setup.modulus_bits}"
            )
        np.add(self._sum, masked, out=self._sum)
        self._submitted.add(sender)

    def close_masked_inputs(self) -> ConsistencyCheck:
        """End round 2 (``U3`` = submitters): the survivor list for the consistency check."""
        self._close(_Stage.COLLECT, self._submitted, "sent masked inputs")
        self._survivors = tuple(sorted(self._submitted))
        return ConsistencyCheck(self.setup.round_seed, self._survivors)

    # round 3 ------------------------------------------------------------------------------

    def receive_consistency_ack(self, message: ConsistencyAck) -> None:
        """Round 3: accept a survivor's acknowledgement, verifying its signature when enrolled."""
        sender = self._admit(
            _Stage.CONSISTENCY,
            message.round_seed,
            message.client_id,
            self._acknowledged,
            set(self._survivors),
        )
        if self._identities is not None:
            payload = _consistency_payload(self.setup.round_seed, sender, self._survivors)
            if not message.signature:
                self._reject("unsigned", sender, "its consistency acknowledgement is unsigned")
            if not _verifies(self._identities[sender], message.signature, payload):
                self._reject("bad_signature", sender, "its consistency signature does not verify")
        self._acknowledged.add(sender)

    def close_consistency(self) -> UnmaskingRequest:
        """End round 3 (``U4`` = acknowledgers): ask them for the shares that unmask the sum."""
        self._close(_Stage.CONSISTENCY, self._acknowledged, "acknowledged the survivors")
        self._check_recoverable(self._acknowledged)
        return UnmaskingRequest(
            self.setup.round_seed,
            self._survivors,
            tuple(sorted(self._sharers - set(self._survivors))),
        )

    # round 4 ------------------------------------------------------------------------------

    def receive_unmasking_response(self, message: UnmaskingResponse) -> None:
        """Round 4: accept a client's revealed shares after checking each is one it holds."""
        sender = self._admit(
            _Stage.UNMASK,
            message.round_seed,
            message.client_id,
            self._responses,
            self._acknowledged,
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
                    share = Share.from_bytes(item.share)
                except ShamirError:
                    share = None
                if share is None or share.x != self._view.index[sender]:
                    self._reject("bad_share", sender, f"its share of {item.owner!r} is malformed")
                seen.add(item.owner)
        self._responses[sender] = message

    def unmask(self) -> npt.NDArray[np.uint64]:
        """End round 4: remove survivors' self masks and dropouts' pairwise masks; the exact sum.

        Raises :class:`SecAggAborted`, returning nothing, when any needed secret
        has fewer than ``t`` revealed shares.
        """
        self._close(_Stage.UNMASK, self._responses, "revealed shares")
        self._check_recoverable(self._responses)
        setup = self.setup
        correction = np.zeros(setup.length, dtype=self._view.dtype)
        seed_shares, key_shares = self._collect_shares()
        masks: list[tuple[bytes, int]] = []
        for client in self._survivors:
            seed = self._reconstruct(
                client, seed_shares.get(client, []), SEED_BYTES, "self-mask seed"
            )
            masks.append((seed, 1))
        survivors = set(self._survivors)
        for client in sorted(self._sharers - survivors):
            affected = sorted(self._recipients[client] & survivors)
            if not affected:
                continue
            raw = self._reconstruct(client, key_shares.get(client, []), _KEY_BYTES, "masking key")
            masking_key = X25519PrivateKey.from_private_bytes(raw)
            advertised = self._advertisements[client].masking_public_key
            if masking_key.public_key().public_bytes_raw() != advertised:
                self._fail(
                    "bad_reconstruction",
                    f"the masking key rebuilt for {client!r} does not match the public key it "
                    "advertised: some revealed shares are forged",
                )
            for peer in affected:
                peer_public = self._advertisements[peer].masking_public_key
                seed = _pairwise_seed(
                    masking_key, peer_public, setup.round_seed, peer, client, self._abort_for
                )
                # The survivor added +PRG(s) for a higher-id dropout, -PRG(s) for a lower one.
                masks.append((seed, 1 if client > peer else -1))
        apply_masks(correction, masks, setup.modulus_bits)
        total = self._sum
        np.subtract(total, correction, out=total)
        self._sum = np.zeros(0, dtype=np.uint64)
        self._stage = _Stage.DONE
        return reduce_modulo(total, setup.modulus_bits)

    # helpers ------------------------------------------------------------------------------

    def _admit(
        self,
        stage: _Stage,
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
        if sender not in self._view.members:
            self._reject("unknown_sender", sender, "it is not in this round's cohort")
        if sender in seen:
            self._reject("duplicate", sender, "it already sent this round's message")
        if sender not in eligible:
            self._reject("dropped_out", sender, "it missed an earlier round of this protocol")
        return sender

    def _close(self, stage: _Stage, arrived: Collection[str], what: str) -> None:
        """End ``stage``; abort the protocol when fewer than ``t`` clients ``what``."""
        if self._abort is not None:
            raise self._abort
        if self._stage != stage:
            raise SecAggError(
                "out_of_order",
                f"secure aggregation: the server cannot end round {stage.name.lower()} during "
                f"round {self._stage.name.lower()}; call the close_* methods in order, once.",
            )
        if len(arrived) < self._view.threshold:
            self._fail(
                "too_few_clients",
                f"only {len(arrived)} clients {what}, fewer than the threshold "
                f"t={self._view.threshold}",
            )
        self._stage = _Stage(stage + 1)

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
        if available < self._view.threshold:
            self._fail(
                "too_few_shares",
                f"only {available} holders of {owner!r}'s {secret} can answer, fewer than the "
                f"threshold t={self._view.threshold}",
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

    def _reconstruct(self, owner: str, shares: list[Share], size: int, secret: str) -> bytes:
        """Rebuild ``owner``'s ``secret`` from ``shares``; abort the round if they cannot."""
        try:
            return combine_shares(
                sorted(shares, key=lambda share: share.x), self._view.threshold, size
            )
        except ShamirError as error:
            self._fail("bad_reconstruction", f"{owner!r}'s {secret} cannot be rebuilt: {error}")

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


# --- driving a round ------------------------------------------------------------------------


@dataclass(frozen=True)
class SharesReceived:
    """Round 1 end, client to server: the client opened the shares delivered to it."""

    round_seed: bytes
    client_id: str


ServerMessage = RoundSetup | NeighbourKeys | ShareDelivery | ConsistencyCheck | UnmaskingRequest
"""What the server sends a client in rounds 0, 1, 1 (delivery), 3 and 4."""
ClientMessage = KeyAdvertisement | SharedKeys | SharesReceived | ConsistencyAck | UnmaskingResponse
"""What a client answers to each :data:`ServerMessage`, in the same order."""


class ParticipantChannel(Protocol):
    """How a round's server reaches its clients: objects in this process, or a runtime."""

    def exchange(self, messages: Mapping[str, ServerMessage]) -> dict[str, ClientMessage]:
        """Deliver ``messages[c]`` to each client ``c``; the replies of those that answered.

        A client that refuses, fails or does not answer in time is absent from
        the result: to the protocol it has dropped out.
        """
        ...


def setup_round(server: SecAggServer, channel: ParticipantChannel) -> None:
    """Rounds 0 and 1 through ``channel``: advertise keys, share them, deliver the shares."""
    advertisements = channel.exchange({client: server.setup for client in server.setup.cohort})
    _deliver(server.receive_advertisement, advertisements, KeyAdvertisement)
    shared = channel.exchange(server.close_advertisements())
    _deliver(server.receive_shares, shared, SharedKeys)
    channel.exchange(server.close_sharing())


def finish_round(server: SecAggServer, channel: ParticipantChannel) -> npt.NDArray[np.uint64]:
    """Rounds 3 and 4 through ``channel`` with the submitters; the exact sum mod 2^b.

    Raises :class:`SecAggAborted` (and returns nothing) when fewer than ``t``
    survivors or shares remain.
    """
    check = server.close_masked_inputs()
    acks = channel.exchange({client: check for client in check.survivors})
    _deliver(server.receive_consistency_ack, acks, ConsistencyAck)
    request = server.close_consistency()
    responses = channel.exchange({client: request for client in server.acknowledged})
    _deliver(server.receive_unmasking_response, responses, UnmaskingResponse)
    return server.unmask()


def answer_step(client: SecAggClient, message: ServerMessage) -> ClientMessage:
    """The client's answer to one server message (the method of its round)."""
    if isinstance(message, RoundSetup):
        return client.advertise_keys()
    if isinstance(message, NeighbourKeys):
        return client.share_keys(message)
    if isinstance(message, ShareDelivery):
        client.receive_shares(message)
        return SharesReceived(message.round_seed, client.client_id)
    if isinstance(message, ConsistencyCheck):
        return client.check_consistency(message)
    return client.unmask(message)


_Reply = TypeVar("_Reply", KeyAdvertisement, SharedKeys, ConsistencyAck, UnmaskingResponse)


def _deliver(
    receive: Callable[[_Reply], None],
    replies: Mapping[str, ClientMessage],
    kind: type[_Reply],
) -> None:
    """Hand each reply of the expected kind to the server; a rejected one is left out."""
    for client, reply in replies.items():
        if not isinstance(reply, kind) or reply.client_id != client:
            logger.warning(
                "secure aggregation: %r answered with a %s, not its own %s; left out",
                client,
                type(reply).__name__,
                kind.__name__,
            )
            continue
        try:
            receive(reply)
        except UpdateRejected:
            continue


class InProcessParticipants:
    """The clients of one round as :class:`SecAggClient` objects in this process.

    Counts what a transport would carry (``bytes_up`` / ``bytes_down``, by
    :func:`payload_bytes`, each server message once per recipient) and the
    time spent in client methods (``client_seconds``). Clients named in
    ``vanish`` stop answering; those in ``vanish_after_advertising`` stop
    after round 0.
    """

    def __init__(
        self,
        setup: RoundSetup,
        identities: Mapping[str, Ed25519PrivateKey] | None,
        public: Mapping[str, Ed25519PublicKey] | None,
    ) -> None:
        self.clients = {
            client: SecAggClient(
                client,
                setup,
                identity=None if identities is None else identities.get(client),
                peer_identities=public,
            )
            for client in setup.cohort
        }
        self.client_seconds = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.vanish: set[str] = set()
        self.vanish_after_advertising: set[str] = set()
        self._lock = threading.Lock()

    def exchange(self, messages: Mapping[str, ServerMessage]) -> dict[str, ClientMessage]:
        """Each listed client handles its message; refusals count as dropping out."""
        replies: dict[str, ClientMessage] = {}
        for client_id, message in messages.items():
            client = self.clients.get(client_id)
            if client is None or client_id in self.vanish:
                continue
            self.bytes_down += payload_bytes(message)
            try:
                reply = self.timed(answer_step, client, message)
            except SecAggRefused as refusal:
                logger.warning("client %r refused the server: %s", client_id, refusal.reason)
                continue
            self.bytes_up += payload_bytes(reply)
            replies[client_id] = reply
        if messages and all(isinstance(m, RoundSetup) for m in messages.values()):
            self.vanish |= self.vanish_after_advertising
        return replies

    def mask(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """Round 2 for one client: mask ``encoded`` (callable from several threads at once)."""
        return self.timed(self.clients[client_id].mask_input, encoded)

    def timed(self, step: Callable[..., _Message], *args: Any) -> _Message:
        """Run a client step and add its time to ``client_seconds``."""
        start = time.perf_counter()
        try:
            return step(*args)
        finally:
            with self._lock:
                self.client_seconds += time.perf_counter() - start


class InProcessSecureSum:
    """A whole SecAgg+ round in one process: separate client objects talk to one server object.

    Used by the pipeline in simulation. Messages pass by reference between
    :class:`SecAggClient` objects and a :class:`SecAggServer` through
    :class:`InProcessParticipants`, with the same :func:`setup_round` and
    :func:`finish_round` the gRPC runtime drives over the network; the server
    never sees a client's input or secrets. Counters for benchmarks:

    * ``client_seconds``: time spent in client methods, summed over clients;
    * ``server_seconds``: time spent in the server's part;
    * ``bytes_up`` / ``bytes_down``: :func:`payload_bytes` of every client-to-server
      message, and of every server-to-client message counted once per recipient.
    """

    def __init__(
        self,
        cohort: Sequence[str],
        length: int,
        params: SecAggParameters,
        *,
        identities: Mapping[str, Ed25519PrivateKey] | None = None,
        round_seed: bytes | None = None,
    ) -> None:
        public = (
            None
            if identities is None
            else {client: key.public_key() for client, key in identities.items()}
        )
        started = time.perf_counter()
        self._server = SecAggServer(
            cohort, length, params, round_seed=round_seed, identities=public
        )
        self.server_seconds = time.perf_counter() - started
        self._participants = InProcessParticipants(self._server.setup, identities, public)
        self._ready = False

    @property
    def client_seconds(self) -> float:
        return self._participants.client_seconds

    @property
    def bytes_up(self) -> int:
        return self._participants.bytes_up

    @property
    def bytes_down(self) -> int:
        return self._participants.bytes_down

    @property
    def params(self) -> SecAggParameters:
        """The resolved parameters of this round (``k`` and ``t`` filled in)."""
        setup = self._server.setup
        return SecAggParameters(setup.modulus_bits, setup.num_neighbours, setup.threshold)

    @property
    def survivors(self) -> tuple[str, ...]:
        """Clients whose inputs are in the sum (those that submitted so far)."""
        return self._server.survivors

    def setup(self, drop_during_setup: Collection[str] = ()) -> None:
        """Rounds 0 and 1; clients in ``drop_during_setup`` vanish after advertising keys."""
        if self._ready:
            raise SecAggError("out_of_order", "secure aggregation: setup() runs once per round.")
        self._check_known(drop_during_setup, "drop_during_setup")
        self._participants.vanish_after_advertising = set(drop_during_setup)
        self._as_server(setup_round, self._server, self._participants)
        self._ready = True

    def submit(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> int:
        """Round 2 for one client: it masks ``encoded``, the server adds it; bytes uploaded."""
        return self.receive(self.mask(client_id, encoded))

    def mask(self, client_id: str, encoded: npt.NDArray[np.unsignedinteger]) -> MaskedInput:
        """The client half of round 2: ``client_id`` masks ``encoded``.

        Safe to call from several threads for different clients at once, as
        separate devices would (NumPy and the cipher release the GIL); hand each
        result to :meth:`receive` from one thread.
        """
        participants = self._participants
        if (
            not self._ready
            or client_id not in participants.clients
            or client_id in (participants.vanish)
        ):
            raise SecAggError(
                "not_ready",
                f"secure aggregation: {client_id!r} cannot submit: call setup() first, and submit "
                "only for cohort clients that did not drop out during setup.",
            )
        return participants.mask(client_id, encoded)

    def receive(self, masked: MaskedInput) -> int:
        """The server half of round 2: add one masked input to the sum; bytes uploaded."""
        self._as_server(self._server.receive_masked_input, masked)
        size = payload_bytes(masked)
        self._participants.bytes_up += size
        return size

    def finish(self, drop_during_unmasking: Collection[str] = ()) -> npt.NDArray[np.uint64]:
        """Rounds 3 and 4 with the submitters; the exact sum mod 2^b of the submitted inputs.

        Clients in ``drop_during_unmasking`` vanish after submitting. Raises
        :class:`SecAggAborted` (and returns nothing) when fewer than ``t``
        survivors or shares remain.
        """
        self._check_known(drop_during_unmasking, "drop_during_unmasking")
        self._participants.vanish |= set(drop_during_unmasking)
        return self._as_server(finish_round, self._server, self._participants)

    def _as_server(self, step: Callable[..., _Message], *args: Any) -> _Message:
        """Run ``step`` and charge its time, less the clients' share of it, to the server."""
        start, clients_before = time.perf_counter(), self._participants.client_seconds
        try:
            return step(*args)
        finally:
            clients = self._participants.client_seconds - clients_before
            self.server_seconds += time.perf_counter() - start - clients

    def _check_known(self, clients: Iterable[str], argument: str) -> None:
        """Refuse dropout sets naming clients outside the cohort."""
        unknown = set(clients) - set(self._server.setup.cohort)
        if unknown:
            raise SecAggError(
                "unknown_client",
                f"secure aggregation: {argument} names {sorted(unknown)}, not in the cohort.",
            )


# --- shared cryptographic helpers ------------------------------------------------------------


def _is_int(value: object) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _encode(*parts: bytes | str | int) -> bytes:
    """Unambiguous concatenation: each part length-prefixed (strings UTF-8, ints 8 bytes)."""
    out = bytearray()
    for part in parts:
        if isinstance(part, str):
            data = part.encode()
        elif isinstance(part, int):
            data = part.to_bytes(8, "big")
        else:
            data = bytes(part)
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def _digest(*parts: bytes | str | int) -> bytes:
    """SHA-256 of the encoded parts."""
    return hashlib.sha256(_encode(*parts)).digest()


def _advertisement_payload(
    round_seed: bytes, client_id: str, encryption_public: bytes, masking_public: bytes
) -> bytes:
    """What a client signs in round 0: its two public keys, bound to the round and its id."""
    return _encode(_ADVERTISE, round_seed, client_id, encryption_public, masking_public)


def _consistency_payload(round_seed: bytes, client_id: str, survivors: Sequence[str]) -> bytes:
    """What a client signs in round 3: the survivor list, bound to the round and its id."""
    return _encode(_CONSISTENCY, round_seed, client_id, *survivors)


def _verifies(key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is ``key``'s Ed25519 signature of ``payload``."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _signature_problem(
    advertisement: KeyAdvertisement, identities: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """Why an advertisement fails identity verification (a reason tag), or None if it passes."""
    key = identities.get(advertisement.client_id)
    if key is None:
        return "not_enrolled"
    if not advertisement.signature:
        return "unsigned"
    payload = _advertisement_payload(
        advertisement.round_seed,
        advertisement.client_id,
        advertisement.encryption_public_key,
        advertisement.masking_public_key,
    )
    return None if _verifies(key, advertisement.signature, payload) else "bad_signature"


def _exchange(
    private: X25519PrivateKey,
    peer_public: bytes,
    error: Callable[[str], SecAggError],
) -> bytes:
    """X25519 shared secret; a low-order or malformed peer key raises ``error(message)``."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as cause:
        raise error("a peer's X25519 public key is malformed or of low order.") from cause


def _pairwise_seed(
    private: X25519PrivateKey,
    peer_public: bytes,
    round_seed: bytes,
    own: str,
    peer: str,
    error: Callable[[str], SecAggError],
) -> bytes:
    """``s_uv``: the 32-byte pairwise mask seed both ``own`` and ``peer`` derive alike."""
    shared = _exchange(private, peer_public, error)
    low, high = sorted((own, peer))
    return derive_seed(shared, purpose=_PAIRWISE_MASK, context=_encode(round_seed, low, high))
