"""Homomorphic-encryption aggregation: clients encrypt, the server sums ciphertexts blind.

Issue 4, item 7 (``secure = "he"``) and issue 21, item 2 (the key holder as its
own party). CKKS (Cheon, Kim, Kim & Song, "Homomorphic Encryption for
Arithmetic of Approximate Numbers", ASIACRYPT 2017) through TenSEAL (Benaissa
et al., 2021), in the shape NVIDIA FLARE's HE filters use:

* a key holder (:mod:`fedwarden.secure.he_keyholder`) creates the context and
  exports a *public* context (no secret key) for the clients and the
  aggregation server;
* each client calls :func:`encrypt_update` (its update scaled by its weight,
  followed by the weight itself, packed into ciphertext chunks of
  ``poly_modulus_degree / 2`` slots each) and :func:`sign_contribution`: its
  deployment identity key signs (round, client, key, digest of the
  ciphertexts), so nobody can reuse the ciphertext in another round or under
  another name (one key serves one run: a new run gets a new key);
* the aggregation server runs :class:`HomomorphicSum` (``start``, ``add`` each
  contribution, ``result``): it sums the ciphertexts chunk by chunk and never
  decrypts; its result is a :class:`DecryptionRequest` carrying the sum and the
  signed contributions it claims to hold;
* the key holder verifies the request (signatures, distinct authorized
  clients, at least its own minimum, a round never decrypted before, the sum
  recomputed from the contributions) and only then decrypts.

Messages are frozen dataclasses holding TenSEAL's own serialization (never
pickle); a reader skips fields it does not know, and a field's meaning never
changes (a new meaning is a new field). Encryption randomness comes from
Microsoft SEAL's default PRNG (BLAKE2 seeded from the operating system's
random source). Threat model and its limits: ``SECURITY.md``, "Homomorphic
aggregation".
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedwarden.core.canonical import canonical_json
from fedwarden.core.errors import ConfigError, UpdateRejected
from fedwarden.core.records import round_number

CiphertextVector = Any
"""A ``tenseal.CKKSVector`` (TenSEAL ships no type information)."""


@dataclass(frozen=True)
class CkksParameters:
    """CKKS encryption parameters; the defaults are NVIDIA FLARE's.

    ``poly_modulus_degree`` N gives N/2 slots per ciphertext; the coefficient
    modulus primes' bit sizes and the scale 2^``scale_bits`` follow Microsoft
    SEAL's guidance for 128-bit security at N = 8192 (at most 218 bits in all).
    """

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40, 40, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        degree = self.poly_modulus_degree
        if degree < 1024 or degree & (degree - 1):
            raise ConfigError(
                f"CkksParameters.poly_modulus_degree is {degree}; it must be a power of two "
                "of at least 1024 (8192 is the default)"
            )
        if not self.coeff_mod_bit_sizes:
            raise ConfigError(
                "CkksParameters.coeff_mod_bit_sizes is empty; give e.g. (60, 40, 40, 60)"
            )
        if not 0 < self.scale_bits < sum(self.coeff_mod_bit_sizes[:-1]):
            raise ConfigError(
                f"CkksParameters.scale_bits is {self.scale_bits}; it must be positive and below "
                f"the data modulus ({sum(self.coeff_mod_bit_sizes[:-1])} bits)"
            )

    @property
    def slot_count(self) -> int:
        """Values one ciphertext holds: N/2."""
        return self.poly_modulus_degree // 2


def chunk_count(length: int, slot_count: int) -> int:
    """Ciphertexts an update of ``length`` elements needs: the vector plus the weight slot."""
    return -(-(length + 1) // slot_count)


def _key_fingerprint(public_context: bytes) -> str:
    """SHA-256 of the serialized public context: the id every message carries."""
    return hashlib.sha256(public_context).hexdigest()


@dataclass(frozen=True)
class EncryptedUpdate:
    """Client to aggregation server: one client's weighted update under CKKS.

    The plaintext is ``[weight * update, weight]`` (``length + 1`` values) cut
    into ``chunks`` of ``slot_count`` values, the last one shorter; ``key_id``
    names the public context it was encrypted under.
    """

    client_id: str
    length: int
    key_id: str
    chunks: tuple[bytes, ...]

    @property
    def payload_bytes(self) -> int:
        """Bytes the ciphertexts occupy on the wire."""
        return sum(len(chunk) for chunk in self.chunks)


@dataclass(frozen=True)
class EncryptedSum:
    """A chunk-wise sum of encrypted updates: ``[sum of weight * update, total weight]``."""

    length: int
    key_id: str
    chunks: tuple[bytes, ...]

    @property
    def payload_bytes(self) -> int:
        """Bytes the ciphertexts occupy on the wire."""
        return sum(len(chunk) for chunk in self.chunks)


CONTRIBUTION_DOMAIN = b"fedwarden-he-contribution-v1\x00"
"""Prefix of every signed contribution record, so the signature means nothing elsewhere."""


def ciphertext_digest(update: EncryptedUpdate) -> bytes:
    """SHA-256 over an update's chunks, each preceded by its length (unambiguous framing)."""
    digest = hashlib.sha256()
    for chunk in update.chunks:
        digest.update(struct.pack(">Q", len(chunk)))
        digest.update(chunk)
    return digest.digest()


@dataclass(frozen=True)
class Contribution:
    """Client to server to key holder: one encrypted update, signed for one round of one run.

    ``signature`` is the client's Ed25519 identity key's signature of
    :meth:`signed_record`: (round, client, key, length, ciphertext
    digest). A key holder that knows the client's identity key can check that
    this client made these ciphertexts for this round, without trusting the
    server that forwards them.
    """

    round_index: int
    update: EncryptedUpdate
    signature: bytes

    def signed_record(self) -> bytes:
        """The bytes the client signs: a domain prefix and canonical JSON."""
        record = {
            "round_index": self.round_index,
            "client_id": self.update.client_id,
            "key_id": self.update.key_id,
            "length": self.update.length,
            "ciphertext_sha256": ciphertext_digest(self.update).hex(),
        }
        return CONTRIBUTION_DOMAIN + canonical_json(record, ascii_only=True).encode()

    def signed_by(self, public_key: Ed25519PublicKey) -> bool:
        """Whether ``public_key`` signed this contribution's record."""
        try:
            public_key.verify(self.signature, self.signed_record())
        except InvalidSignature:
            return False
        return True


def sign_contribution(
    update: EncryptedUpdate, round_index: int, identity: Ed25519PrivateKey
) -> Contribution:
    """A client's encrypted update, signed with its identity key for one round of one run."""
    unsigned = Contribution(round_index, update, b"")
    return Contribution(round_index, update, identity.sign(unsigned.signed_record()))


@dataclass(frozen=True)
class DecryptionRequest:
    """Aggregation server to key holder: a round's encrypted sum and the contributions behind it.

    The key holder trusts neither the sum nor the list: it checks every
    contribution's signature, recomputes the sum from them, and decrypts only
    if the recomputed sum equals ``total`` and enough distinct authorized
    clients contributed.
    """

    round_index: int
    total: EncryptedSum
    contributions: tuple[Contribution, ...]

    @property
    def payload_bytes(self) -> int:
        """Bytes of ciphertext the request carries (the sum and every contribution)."""
        return self.total.payload_bytes + sum(
            item.update.payload_bytes for item in self.contributions
        )


@dataclass(frozen=True)
class PublicContext:
    """A CKKS context without its secret key, as clients and the aggregation server hold it."""

    context: Any
    """The ``tenseal.Context``; it can encrypt and add, never decrypt."""
    key_id: str
    slot_count: int

    @classmethod
    def load(cls, serialized: bytes) -> PublicContext:
        """Read the key holder's exported public context; refuse one holding a secret key."""
        try:
            context = ts.context_from(serialized)
        except (ValueError, RuntimeError) as error:
            raise ConfigError(
                f"the public CKKS context could not be read ({error}); pass the bytes of "
                "CkksKeyHolder.public_context() unchanged"
            ) from error
        if context.is_private():
            raise ConfigError(
                "the CKKS context given to a client or the aggregation server holds the secret "
                "key; only the key holder may, so pass CkksKeyHolder.public_context() instead"
            )
        slot_count = (
            context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2
        )
        return cls(context, _key_fingerprint(serialized), slot_count)


def encrypt_update(
    public: PublicContext, client_id: str, update: np.ndarray, weight: float = 1.0
) -> EncryptedUpdate:
    """Encrypt ``[weight * update, weight]`` in slot-sized CKKS chunks (a client's upload).

    Scaling by the weight before encryption, as FLARE's ``HEModelEncryptor``
    does with ``weigh_by_local_iter``, lets the server form the weighted sum
    homomorphically; sending the weight encrypted too means the key holder
    learns only the total weight, never one client's.
    """
    who = f"client {client_id!r}'s update"
    if update.dtype != np.float32:
        raise UpdateRejected("dtype", f"{who} has dtype {update.dtype}; updates must be float32")
    if update.ndim != 1:
        raise UpdateRejected("shape", f"{who} has shape {update.shape}; it must be one flat vector")
    if not (math.isfinite(weight) and weight > 0):
        raise UpdateRejected("weight", f"{who} has weight {weight}; it must be finite and positive")
    if not np.isfinite(update).all():
        raise UpdateRejected("non_finite", f"{who} contains NaN or Inf values")
    plaintext = np.empty(update.size + 1, dtype=np.float64)
    np.multiply(update, weight, out=plaintext[:-1])
    plaintext[-1] = weight
    chunks = tuple(
        ts.ckks_vector(public.context, plaintext[start : start + public.slot_count]).serialize()
        for start in range(0, plaintext.size, public.slot_count)
    )
    return EncryptedUpdate(client_id, int(update.size), public.key_id, chunks)


def _chunk_sizes(length: int, slot_count: int) -> list[int]:
    """Plaintext values in each chunk of a ``length``-element update (weight slot included)."""
    total = length + 1
    return [min(slot_count, total - start) for start in range(0, total, slot_count)]


def _read_chunks(
    context: Any, chunks: Sequence[bytes], sizes: Sequence[int], who: str
) -> list[CiphertextVector]:
    """Deserialize ciphertext chunks with TenSEAL's reader and check each one's slot count."""
    vectors = []
    for index, (chunk, size) in enumerate(zip(chunks, sizes, strict=True)):
        try:
            vector = ts.ckks_vector_from(context, chunk)
        except (ValueError, RuntimeError) as error:
            raise UpdateRejected(
                "ciphertext",
                f"{who}: chunk {index} is not a CKKS ciphertext for this context ({error}); "
                "re-encrypt it with the run's public context",
            ) from error
        if vector.size() != size:
            raise UpdateRejected(
                "length",
                f"{who}: chunk {index} holds {vector.size()} values; {size} were expected",
            )
        vectors.append(vector)
    return vectors


class HomomorphicSum:
    """The aggregation server's sum of encrypted contributions; it never decrypts.

    Same shape as the pipeline's ``Aggregator``: ``start(length, ...)``,
    ``add`` each contribution, then ``result()``. It holds one running sum and
    the contributions themselves, which the key holder needs to recompute the
    sum: O(cohort x model size) ciphertext, the price of a key holder that
    counts contributors itself. A contribution is checked in full (round, key,
    length, chunk count, every ciphertext) before it touches the sum, so a
    refused one leaves the sum unchanged. Signatures are the key holder's to
    check (and the transport's: the gRPC server checks each upload's).
    """

    def __init__(self, public_context: bytes) -> None:
        self.public = PublicContext.load(public_context)
        self._length: int | None = None
        self._round_index = 0
        self._totals: list[CiphertextVector] = []
        self._contributions: dict[str, Contribution] = {}

    def start(self, length: int, round_index: int) -> None:
        """Begin round ``round_index``, whose plaintext updates have ``length`` elements."""
        if length < 0:
            raise ConfigError(f"HomomorphicSum.start got length {length}; it must be >= 0")
        self._length = length
        self._round_index = round_index
        self._totals = []
        self._contributions = {}

    def add(self, contribution: Contribution) -> None:
        """Check one signed contribution and add its ciphertexts chunk-wise into the running sum."""
        if self._length is None:
            raise ConfigError("HomomorphicSum.add was called before start(length); start the round")
        message = contribution.update
        who = f"encrypted update from client {message.client_id!r}"
        if contribution.round_index != self._round_index:
            raise UpdateRejected(
                "round",
                f"{who} is signed for round {round_number(contribution.round_index)}, not round "
                f"{round_number(self._round_index)}",
            )
        if message.key_id != self.public.key_id:
            raise UpdateRejected(
                "key",
                f"{who} was encrypted under key {message.key_id[:12]}..., not this run's "
                f"{self.public.key_id[:12]}...; the client must use this run's public context",
            )
        if message.client_id in self._contributions:
            raise UpdateRejected("duplicate", f"{who} arrived twice this round; only one counts")
        vectors = read_update(self.public, message, self._length, who)
        self._totals = add_chunks(self._totals, vectors, who)
        self._contributions[message.client_id] = contribution

    def result(self) -> DecryptionRequest:
        """The round's encrypted sum and its contributions, for the key holder."""
        if self._length is None or not self._totals:
            raise ConfigError("HomomorphicSum.result has no updates to sum; add at least one")
        total = EncryptedSum(
            length=self._length,
            key_id=self.public.key_id,
            chunks=tuple(chunk.serialize() for chunk in self._totals),
        )
        return DecryptionRequest(self._round_index, total, tuple(self._contributions.values()))


def read_update(
    public: PublicContext, message: EncryptedUpdate, length: int, who: str
) -> list[CiphertextVector]:
    """Check an encrypted update's length and chunk count, then read its ciphertexts."""
    if message.length != length:
        raise UpdateRejected(
            "length", f"{who} has {message.length} elements; the model has {length}"
        )
    sizes = _chunk_sizes(length, public.slot_count)
    if len(message.chunks) != len(sizes):
        raise UpdateRejected(
            "chunks",
            f"{who} has {len(message.chunks)} ciphertext chunks; {len(sizes)} are needed for "
            f"{length} elements plus the weight at {public.slot_count} slots each",
        )
    return _read_chunks(public.context, message.chunks, sizes, who)


def add_chunks(
    totals: list[CiphertextVector], vectors: list[CiphertextVector], who: str
) -> list[CiphertextVector]:
    """``totals + vectors`` chunk-wise (``vectors`` alone when ``totals`` is empty)."""
    if not totals:
        return vectors
    try:
        return [total + vector for total, vector in zip(totals, vectors, strict=True)]
    except (ValueError, RuntimeError) as error:
        raise UpdateRejected(
            "ciphertext",
            f"{who} cannot be added to the running sum ({error}); "
            "re-encrypt it with the run's public context and default scale",
        ) from error
