"""Homomorphic-encryption aggregation: clients encrypt, the server sums ciphertexts blind.

Issue 4, item 7 (``secure = "he"``). CKKS (Cheon, Kim, Kim & Song, "Homomorphic
Encryption for Arithmetic of Approximate Numbers", ASIACRYPT 2017) through
TenSEAL (Benaissa et al., 2021), in the shape NVIDIA FLARE's HE filters use:

* a :class:`CkksKeyHolder` creates the context and exports a *public* context
  (no secret key) for the clients and the aggregation server; only the key
  holder decrypts, and only sums;
* each client calls :func:`encrypt_update`: its update scaled by its weight,
  followed by the weight itself, packed into ciphertext chunks of
  ``poly_modulus_degree / 2`` slots each;
* the aggregation server runs :class:`HomomorphicSum` (``start``, ``add`` each
  update, ``result``): it sums the ciphertexts chunk by chunk, holding
  O(model size) memory, and never decrypts;
* the key holder's :meth:`CkksKeyHolder.decrypt` turns the encrypted sum into
  the weighted-mean vector and the total weight.

Threat model: an honest-but-curious aggregation server that does not collude
with the key holder. The key fingerprint on each message catches updates made
under another run's key (a configuration mistake); it cannot stop a malicious
client from encrypting garbage under the right key, and the key holder trusts
the server's count of summed updates. CKKS decryption is approximate: Li &
Micciancio (EUROCRYPT 2021) show that publishing exact CKKS decryptions can
leak the secret key; the key holder releases only a float32 rounding of the
mean, which is not a proven defence, so keep the key for one federation only.

Messages are frozen dataclasses holding TenSEAL's own serialization (never
pickle). Encryption randomness comes from Microsoft SEAL's default PRNG
(BLAKE2 seeded from the operating system's random source).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tenseal as ts

from fedwarden.core.errors import ConfigError, RoundAborted, UpdateRejected

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
    """Aggregation server to key holder: the chunk-wise sum of ``num_updates`` encrypted updates.

    Its plaintext is ``[sum of weight * update, total weight]``.
    """

    length: int
    key_id: str
    num_updates: int
    chunks: tuple[bytes, ...]

    @property
    def payload_bytes(self) -> int:
        """Bytes the ciphertexts occupy on the wire."""
        return sum(len(chunk) for chunk in self.chunks)


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
    """The aggregation server's streaming sum of encrypted updates; it never decrypts.

    Same shape as the pipeline's ``Aggregator``: ``start(length)``, ``add`` each
    update, then ``result()``. Memory is one running sum, O(model size). An
    update is checked in full (key, length, chunk count, every ciphertext)
    before it touches the sum, so a refused one leaves the sum unchanged.
    """

    def __init__(self, public_context: bytes) -> None:
        self.public = PublicContext.load(public_context)
        self._length: int | None = None
        self._totals: list[CiphertextVector] = []
        self._contributors: set[str] = set()

    def start(self, length: int) -> None:
        """Begin a round whose plaintext updates have ``length`` elements."""
        if length < 0:
            raise ConfigError(f"HomomorphicSum.start got length {length}; it must be >= 0")
        self._length = length
        self._totals = []
        self._contributors = set()

    def add(self, message: EncryptedUpdate) -> None:
        """Check one encrypted update and add it chunk-wise into the running sum."""
        if self._length is None:
            raise ConfigError("HomomorphicSum.add was called before start(length); start the round")
        who = f"encrypted update from client {message.client_id!r}"
        if message.key_id != self.public.key_id:
            raise UpdateRejected(
                "key",
                f"{who} was encrypted under key {message.key_id[:12]}..., not this run's "
                f"{self.public.key_id[:12]}...; the client must use this run's public context",
            )
        if message.client_id in self._contributors:
            raise UpdateRejected("duplicate", f"{who} arrived twice this round; only one counts")
        if message.length != self._length:
            raise UpdateRejected(
                "length", f"{who} has {message.length} elements; the model has {self._length}"
            )
        sizes = _chunk_sizes(self._length, self.public.slot_count)
        if len(message.chunks) != len(sizes):
            raise UpdateRejected(
                "chunks",
                f"{who} has {len(message.chunks)} ciphertext chunks; {len(sizes)} are needed for "
                f"{self._length} elements plus the weight at {self.public.slot_count} slots each",
            )
        vectors = _read_chunks(self.public.context, message.chunks, sizes, who)
        if self._totals:
            try:
                self._totals = [
                    total + vector for total, vector in zip(self._totals, vectors, strict=True)
                ]
            except (ValueError, RuntimeError) as error:
                raise UpdateRejected(
                    "ciphertext",
                    f"{who} cannot be added to the running sum ({error}); "
                    "re-encrypt it with the run's public context and default scale",
                ) from error
        else:
            self._totals = vectors
        self._contributors.add(message.client_id)

    def result(self) -> EncryptedSum:
        """The round's encrypted sum, for the key holder; valid after at least one ``add``."""
        if self._length is None or not self._totals:
            raise ConfigError("HomomorphicSum.result has no updates to sum; add at least one")
        return EncryptedSum(
            length=self._length,
            key_id=self.public.key_id,
            num_updates=len(self._contributors),
            chunks=tuple(total.serialize() for total in self._totals),
        )


class CkksKeyHolder:
    """Holder of the CKKS secret key: makes the context, exports its public half, decrypts sums.

    ``min_updates`` is the fewest updates a sum must hold before it is
    decrypted (default 2): decrypting a "sum" of one would reveal that
    client's update.
    """

    def __init__(self, parameters: CkksParameters | None = None, min_updates: int = 2) -> None:
        self.parameters = parameters or CkksParameters()
        if min_updates < 1:
            raise ConfigError(f"CkksKeyHolder.min_updates is {min_updates}; it must be >= 1")
        self.min_updates = min_updates
        try:
            self._context = ts.context(
                ts.SCHEME_TYPE.CKKS,
                poly_modulus_degree=self.parameters.poly_modulus_degree,
                coeff_mod_bit_sizes=list(self.parameters.coeff_mod_bit_sizes),
            )
        except (ValueError, RuntimeError) as error:
            raise ConfigError(
                f"TenSEAL refused the CKKS parameters {self.parameters} ({error}); keep the "
                "coefficient modulus within the budget for the polynomial degree"
            ) from error
        self._context.global_scale = 2.0**self.parameters.scale_bits
        self._public_context: bytes = self._context.serialize(
            save_public_key=True,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
        self.key_id = _key_fingerprint(self._public_context)

    def public_context(self) -> bytes:
        """The context without its secret key, for clients and the aggregation server."""
        return self._public_context

    def decrypt(self, message: EncryptedSum) -> tuple[np.ndarray, float]:
        """Decrypt an encrypted sum into the weighted-mean vector (float32) and the total weight."""
        if message.key_id != self.key_id:
            raise ConfigError(
                f"the encrypted sum is under key {message.key_id[:12]}..., but this key holder "
                f"holds {self.key_id[:12]}...; send it to the key holder of its run"
            )
        if message.num_updates < self.min_updates:
            raise RoundAborted(
                f"the encrypted sum holds {message.num_updates} update(s); this key holder "
                f"decrypts only sums of at least {self.min_updates}, so one client's update is "
                "never revealed"
            )
        sizes = _chunk_sizes(message.length, self.parameters.slot_count)
        if len(message.chunks) != len(sizes):
            raise ConfigError(
                f"the encrypted sum has {len(message.chunks)} chunks; {len(sizes)} are needed "
                f"for {message.length} elements plus the weight"
            )
        try:
            vectors = _read_chunks(self._context, message.chunks, sizes, "the encrypted sum")
        except UpdateRejected as error:
            raise ConfigError(
                f"{error}; the sum must come from this run's HomomorphicSum"
            ) from error
        plaintext = np.concatenate([np.asarray(vector.decrypt()) for vector in vectors])
        total_weight = float(plaintext[-1])
        if not total_weight > 0:
            raise ConfigError(
                f"the decrypted total weight is {total_weight}; clients must encrypt positive "
                "weights, so this sum was not formed from valid updates"
            )
        return (plaintext[:-1] / total_weight).astype(np.float32), total_weight
