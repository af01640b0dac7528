"""The key agreements of SecAgg+: X25519 secrets, pairwise mask seeds and share-sealing keys."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedwarden.secure.prg import derive_seed
from fedwarden.secure.secagg.messages import SecAggError, encode

__all__ = ["KEY_BYTES", "NONCE_BYTES", "exchange", "pairwise_seed", "share_key"]

KEY_BYTES = 32
NONCE_BYTES = 12
_PAIRWISE_MASK = b"fedwarden/secagg/v1/pairwise-mask"
_SHARE_ENCRYPTION = b"fedwarden/secagg/v1/share-encryption"


def exchange(
    private: X25519PrivateKey,
    peer_public: bytes,
    error: Callable[[str], SecAggError],
) -> bytes:
    """X25519 shared secret; a low-order or malformed peer key raises ``error(message)``."""
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as cause:
        raise error("a peer's X25519 public key is malformed or of low order.") from cause


def pairwise_seed(
    private: X25519PrivateKey,
    peer_public: bytes,
    round_seed: bytes,
    own: str,
    peer: str,
    error: Callable[[str], SecAggError],
) -> bytes:
    """``s_uv``: the 32-byte pairwise mask seed both ``own`` and ``peer`` derive alike."""
    shared = exchange(private, peer_public, error)
    low, high = sorted((own, peer))
    return derive_seed(shared, purpose=_PAIRWISE_MASK, context=encode(round_seed, low, high))


def share_key(shared: bytes, round_seed: bytes, sender: str, recipient: str) -> ChaCha20Poly1305:
    """The AEAD sealing shares from ``sender`` to ``recipient``: one key per ordered pair."""
    context = encode(round_seed, sender, recipient)
    return ChaCha20Poly1305(derive_seed(shared, purpose=_SHARE_ENCRYPTION, context=context))
