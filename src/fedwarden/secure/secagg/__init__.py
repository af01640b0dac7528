"""SecAgg+ secure aggregation: the server learns the sum of a cohort's inputs and nothing else.

Implements the protocol of Bonawitz et al. (CCS 2017), "Practical Secure
Aggregation for Privacy-Preserving Machine Learning" (Figure 4, rounds 0-4,
with the signatures of its malicious-server variant), over the sparse
neighbour graph of Bell et al. (CCS 2020), "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead" (SecAgg+, Section 3): each client masks only
with its ``k`` neighbours; ``k = n - 1`` is classic SecAgg.

The protocol is split along its seams:

* :mod:`~fedwarden.secure.secagg.messages`: the messages, errors and what is signed;
* :mod:`~fedwarden.secure.secagg.parameters`: ``k``, ``t``, the tolerated
  corrupted clients and why ``t > (k + 1 + c) / 2``; the client's own
  :class:`SecAggPolicy` (:mod:`~fedwarden.secure.secagg.policy`); the neighbour graph;
* :mod:`~fedwarden.secure.secagg.client` and :mod:`~fedwarden.secure.secagg.server`:
  the two state machines;
* :mod:`~fedwarden.secure.secagg.rounds`: driving a round (:func:`setup_round`,
  :func:`finish_round`), the same functions in simulation
  (:class:`InProcessSecureSum`) and over the gRPC runtime;
* :mod:`~fedwarden.secure.secagg.wire` and :mod:`~fedwarden.secure.secagg.crypto`:
  the messages' bytes (``secagg.proto``) and the key agreement, sealing and signing.

Rounds: 0 *AdvertiseKeys* (two X25519 public keys and a commitment to the
self-mask seed, signed with the round's parameters); 1 *ShareKeys* (Shamir
``t``-of-(neighbours and itself) shares of ``b_u`` and ``s_sk_u``, each signed
by its dealer and sealed with ChaCha20-Poly1305); 2 *MaskedInputCollection*
(``y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_uv)
(mod 2^b)``, summed as it arrives in O(d) memory); 3 *ConsistencyCheck* (each
survivor signs the survivor list); 4 *Unmasking* (each signer, once it has
verified ``t`` signatures of that one list from the holders of every secret it
reveals, reveals per neighbour the share of ``b_v`` or of ``s_sk_v``, never
both). The threat model is in ``SECURITY.md``, section "Secure aggregation".
"""

from __future__ import annotations

from fedwarden.secure.secagg.client import SecAggClient
from fedwarden.secure.secagg.messages import (
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
    SecAggRefused,
    ShareDelivery,
    SharedKeys,
    SharesReceived,
    UnmaskingRequest,
    UnmaskingResponse,
    payload_bytes,
)
from fedwarden.secure.secagg.parameters import (
    DESIGN_ABORT_PROBABILITY,
    DESIGN_DROPOUT,
    SecAggParameters,
    neighbour_graph,
    secure_threshold,
)
from fedwarden.secure.secagg.policy import SecAggPolicy
from fedwarden.secure.secagg.rounds import (
    ClientMessage,
    InProcessSecureSum,
    ParticipantChannel,
    ServerMessage,
    answer_step,
    finish_round,
    setup_round,
)
from fedwarden.secure.secagg.server import SecAggServer

__all__ = [
    "DESIGN_ABORT_PROBABILITY",
    "DESIGN_DROPOUT",
    "ClientMessage",
    "ConsistencyAck",
    "ConsistencyCheck",
    "EncryptedShare",
    "InProcessSecureSum",
    "KeyAdvertisement",
    "MaskedInput",
    "NeighbourKeys",
    "ParticipantChannel",
    "RevealedShare",
    "RoundSetup",
    "SecAggAborted",
    "SecAggClient",
    "SecAggError",
    "SecAggParameters",
    "SecAggPolicy",
    "SecAggRefused",
    "SecAggServer",
    "ServerMessage",
    "ShareDelivery",
    "SharedKeys",
    "SharesReceived",
    "UnmaskingRequest",
    "UnmaskingResponse",
    "answer_step",
    "finish_round",
    "neighbour_graph",
    "payload_bytes",
    "secure_threshold",
    "setup_round",
]
