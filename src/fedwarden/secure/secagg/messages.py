"""SecAgg+ messages, errors and the byte strings its parties sign.

Every message is a frozen dataclass of bytes, ints, strings, tuples and NumPy
arrays: a transport serializes it field by field (no pickle), and
:func:`payload_bytes` is the size it carries. How the messages may change:
a field is added with a default, never renamed or given a new meaning; the
signed byte strings below change only with their version label.

What is signed, each with the signer's long-term Ed25519 identity key (the
key its enrolment certificate binds), and why:

* the **key advertisement** (round 0): the round's public parameters
  (:meth:`RoundSetup.digest`: seed, cohort, length, ring, ``k``, ``t``), the
  client's two X25519 public keys and its commitment to its self-mask seed.
  A server that shows two clients different parameters gets advertisements
  that do not verify for the other.
* every **share pair** (round 1): the dealer signs the digests of the two
  shares it deals to one holder, bound to the round's graph seed (the hash of
  every advertisement) and to the holder. The signature travels inside the
  sealed payload and again, with the revealed share and the other share's
  digest, in round 4, so the server can tell a forged share from an honest one
  and name the client that sent it.
* the **survivor list** (round 3): bound to the graph seed, which covers every
  advertiser's fresh public keys, so a signature names one protocol instance
  (this run's round) and cannot be replayed in another.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.core.errors import FedwardenError

__all__ = [
    "SIGNATURE_BYTES",
    "ConsistencyAck",
    "ConsistencyCheck",
    "EncryptedShare",
    "KeyAdvertisement",
    "MaskedInput",
    "NeighbourKeys",
    "RevealedShare",
    "RoundSetup",
    "SecAggAborted",
    "SecAggError",
    "SecAggRefused",
    "ShareDelivery",
    "SharedKeys",
    "SharesReceived",
    "UnmaskingRequest",
    "UnmaskingResponse",
    "advertisement_payload",
    "consistency_payload",
    "digest",
    "encode",
    "graph_seed",
    "payload_bytes",
    "self_mask_commitment",
    "share_digest",
    "share_payload",
    "survivor_list_digest",
    "verifies",
]

SIGNATURE_BYTES = 64
"""Length of an Ed25519 signature."""

_SETUP = b"fedwarden/secagg/v2/round-setup"
_ADVERTISE = b"fedwarden/secagg/v2/advertise-keys"
_COMMIT = b"fedwarden/secagg/v2/self-mask-commitment"
_GRAPH = b"fedwarden/secagg/v2/graph-seed"
_SHARE = b"fedwarden/secagg/v2/share"
_CONSISTENCY = b"fedwarden/secagg/v2/consistency-check"
_SURVIVORS = b"fedwarden/secagg/v2/survivor-list"
SELF_MASK = b"self-mask-seed"
"""Label of a share of a client's self-mask seed ``b_u`` in :func:`share_payload`."""
MASKING_KEY = b"masking-key"
"""Label of a share of a client's masking secret key ``s_sk_u`` in :func:`share_payload`."""


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

    def digest(self) -> bytes:
        """SHA-256 of every field: what each key advertisement binds the round's parameters by."""
        return digest(
            _SETUP,
            self.round_seed,
            self.length,
            self.modulus_bits,
            self.num_neighbours,
            self.threshold,
            *self.cohort,
        )


@dataclass(frozen=True)
class KeyAdvertisement:
    """Round 0, client to server: two X25519 public keys and a self-mask commitment, signed."""

    round_seed: bytes
    client_id: str
    encryption_public_key: bytes
    masking_public_key: bytes
    self_mask_commitment: bytes
    signature: bytes


@dataclass(frozen=True)
class NeighbourKeys:
    """Round 0, server to each advertiser: every advertisement of the round (``U1``)."""

    round_seed: bytes
    advertisements: tuple[KeyAdvertisement, ...]


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1: the sender's signed shares of ``b`` and ``s_sk`` for one recipient, sealed."""

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


@dataclass(frozen=True)
class SharesReceived:
    """Round 1 end, client to server: the client opened the shares delivered to it."""

    round_seed: bytes
    client_id: str


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
    """Round 3, client to server: its signature of the survivor list it accepted."""

    round_seed: bytes
    client_id: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskingRequest:
    """Round 4, server to clients: survivors, dropouts, and the survivors' list signatures."""

    round_seed: bytes
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[ConsistencyAck, ...] = ()


@dataclass(frozen=True)
class RevealedShare:
    """One serialized Shamir share of ``owner``'s secret, as ``owner`` signed it for its holder.

    ``signature`` is ``owner``'s signature of the pair (:func:`share_payload`);
    ``paired_digest`` is the digest of the pair's other share, which stays secret.
    """

    owner: str
    share: bytes
    signature: bytes = b""
    paired_digest: bytes = b""


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


# --- what is signed ---------------------------------------------------------------------------


def encode(*parts: bytes | str | int) -> bytes:
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


def digest(*parts: bytes | str | int) -> bytes:
    """SHA-256 of the encoded parts."""
    return hashlib.sha256(encode(*parts)).digest()


def self_mask_commitment(setup_digest: bytes, client_id: str, self_mask_seed: bytes) -> bytes:
    """The hash a client publishes of its self-mask seed, checked after the seed is rebuilt."""
    return digest(_COMMIT, setup_digest, client_id, self_mask_seed)


def advertisement_payload(setup_digest: bytes, advertisement: KeyAdvertisement) -> bytes:
    """What a client signs in round 0: the round's parameters, its id, keys and commitment."""
    return encode(
        _ADVERTISE,
        setup_digest,
        advertisement.client_id,
        advertisement.encryption_public_key,
        advertisement.masking_public_key,
        advertisement.self_mask_commitment,
    )


def graph_seed(setup_digest: bytes, advertisements: Sequence[KeyAdvertisement]) -> bytes:
    """The neighbour graph's seed: a hash of every advertisement once all are fixed.

    No single party picks it: each advertiser contributes two fresh public keys.
    """
    ordered = sorted(advertisements, key=lambda advertisement: advertisement.client_id)
    return digest(
        _GRAPH,
        setup_digest,
        *(advertisement_payload(setup_digest, item) + item.signature for item in ordered),
    )


def share_digest(secret: bytes, share: bytes) -> bytes:
    """The digest of one share of ``secret`` (:data:`SELF_MASK` or :data:`MASKING_KEY`)."""
    return digest(_SHARE, secret, share)


def share_payload(
    graph: bytes, owner: str, holder: str, self_mask_digest: bytes, masking_key_digest: bytes
) -> bytes:
    """What a dealer signs for each holder: the round's graph, who deals, who holds, both shares."""
    return encode(_SHARE, graph, owner, holder, self_mask_digest, masking_key_digest)


def survivor_list_digest(survivors: Sequence[str]) -> bytes:
    """The digest of a survivor list, which round 3 signatures cover."""
    return digest(_SURVIVORS, *survivors)


def consistency_payload(graph: bytes, client_id: str, survivors: bytes) -> bytes:
    """What a survivor signs in round 3: the survivor list's digest, bound to this instance."""
    return encode(_CONSISTENCY, graph, client_id, survivors)


def verifies(key: Ed25519PublicKey, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` is ``key``'s Ed25519 signature of ``payload``."""
    try:
        key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True
