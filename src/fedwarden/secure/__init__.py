"""Secure aggregation: SecAgg+ masking with dropout recovery, secret sharing, the mask PRG,
ring encoding, distributed DP, and CKKS homomorphic aggregation."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "MaskSeedError": "fedwarden.secure.prg",
    "apply_mask": "fedwarden.secure.prg",
    "derive_seed": "fedwarden.secure.prg",
    "expand_mask": "fedwarden.secure.prg",
    "Share": "fedwarden.secure.shamir",
    "ShamirError": "fedwarden.secure.shamir",
    "combine_shares": "fedwarden.secure.shamir",
    "split_secret": "fedwarden.secure.shamir",
    "ConsistencyAck": "fedwarden.secure.secagg",
    "ConsistencyCheck": "fedwarden.secure.secagg",
    "EncryptedShare": "fedwarden.secure.secagg",
    "InProcessSecureSum": "fedwarden.secure.secagg",
    "KeyAdvertisement": "fedwarden.secure.secagg",
    "MaskedInput": "fedwarden.secure.secagg",
    "NeighbourKeys": "fedwarden.secure.secagg",
    "RevealedShare": "fedwarden.secure.secagg",
    "RoundSetup": "fedwarden.secure.secagg",
    "SecAggAborted": "fedwarden.secure.secagg",
    "SecAggClient": "fedwarden.secure.secagg",
    "SecAggError": "fedwarden.secure.secagg",
    "SecAggParameters": "fedwarden.secure.secagg",
    "SecAggPolicy": "fedwarden.secure.secagg.policy",
    "SecAggRefused": "fedwarden.secure.secagg",
    "SecAggServer": "fedwarden.secure.secagg",
    "ShareDelivery": "fedwarden.secure.secagg",
    "SharedKeys": "fedwarden.secure.secagg",
    "UnmaskingRequest": "fedwarden.secure.secagg",
    "UnmaskingResponse": "fedwarden.secure.secagg",
    "neighbour_graph": "fedwarden.secure.secagg",
    "secure_threshold": "fedwarden.secure.secagg",
    "RingEncoder": "fedwarden.secure.encoding",
    "RingEncodingError": "fedwarden.secure.encoding",
    "DecodedSum": "fedwarden.secure.encoding",
    "DistributedDiscreteGaussian": "fedwarden.secure.distributed_dp",
    "new_rotation_seed": "fedwarden.secure.distributed_dp",
    "CkksKeyHolder": "fedwarden.secure.he_keyholder",
    "CkksParameters": "fedwarden.secure.he",
    "Contribution": "fedwarden.secure.he",
    "DecryptionRefused": "fedwarden.secure.he_keyholder",
    "DecryptionRequest": "fedwarden.secure.he",
    "EncryptedSum": "fedwarden.secure.he",
    "EncryptedUpdate": "fedwarden.secure.he",
    "HomomorphicSum": "fedwarden.secure.he",
    "PublicContext": "fedwarden.secure.he",
    "encrypt_update": "fedwarden.secure.he",
    "sign_contribution": "fedwarden.secure.he",
    "payload_bytes": "fedwarden.secure.secagg",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
