"""SecAgg+ messages to and from bytes (``secagg.proto``), field by field, never pickled.

The server's messages travel as a ``ServerStep``; round 0's :class:`RoundSetup`
travels inside a :class:`StartRound` that also says how to encode an update
and relays the cohort's certificates, from which each client takes its peers'
identity keys after checking them itself. A client's
reply travels as a ``ClientStep``. Parsing refuses anything that is not a
well-formed message of the expected kind with :class:`SecAggWireError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError

from fedwarden.core.errors import FedwardenError
from fedwarden.secure import secagg_pb2 as pb
from fedwarden.secure.secagg import (
    ClientMessage,
    ConsistencyAck,
    ConsistencyCheck,
    EncryptedShare,
    KeyAdvertisement,
    NeighbourKeys,
    RevealedShare,
    RoundSetup,
    ServerMessage,
    ShareDelivery,
    SharedKeys,
    SharesReceived,
    UnmaskingRequest,
    UnmaskingResponse,
)


class SecAggWireError(FedwardenError):
    """Bytes that are not the secure-aggregation message expected here."""


@dataclass(frozen=True)
class StartRound:
    """Round 0 on the wire: the setup, the update encoding, and the cohort's certificates (PEM)."""

    setup: RoundSetup
    encoding_json: str
    peer_certificates: Mapping[str, bytes]


def server_step_bytes(message: StartRound | ServerMessage) -> bytes:
    """A server message as ``ServerStep`` bytes (``RoundSetup`` goes inside a StartRound)."""
    step = pb.ServerStep()
    if isinstance(message, StartRound):
        step.start.setup.CopyFrom(_setup(message.setup))
        step.start.encoding_json = message.encoding_json
        step.start.peer_certificates.update(message.peer_certificates)
    elif isinstance(message, NeighbourKeys):
        step.neighbour_keys.round_seed = message.round_seed
        step.neighbour_keys.advertisements.extend(_advertisement(a) for a in message.advertisements)
    elif isinstance(message, ShareDelivery):
        step.delivery.round_seed = message.round_seed
        step.delivery.shares.extend(_share(share) for share in message.shares)
    elif isinstance(message, ConsistencyCheck):
        step.check.round_seed = message.round_seed
        step.check.survivors.extend(message.survivors)
    elif isinstance(message, UnmaskingRequest):
        step.request.round_seed = message.round_seed
        step.request.survivors.extend(message.survivors)
        step.request.dropped.extend(message.dropped)
        step.request.signatures.extend(_ack(ack) for ack in message.signatures)
    else:
        raise TypeError(f"{type(message).__name__} is not a server message (send a StartRound)")
    return step.SerializeToString()


def read_server_step(data: bytes) -> StartRound | ServerMessage:
    """Parse ``ServerStep`` bytes."""
    step = _parse(pb.ServerStep, data)
    kind = step.WhichOneof("step")
    if kind == "start":
        setup = step.start.setup
        return StartRound(
            RoundSetup(
                setup.round_seed,
                tuple(setup.cohort),
                setup.length,
                setup.modulus_bits,
                setup.num_neighbours,
                setup.threshold,
            ),
            step.start.encoding_json,
            dict(step.start.peer_certificates),
        )
    if kind == "neighbour_keys":
        keys = step.neighbour_keys
        return NeighbourKeys(
            keys.round_seed, tuple(_read_advertisement(a) for a in keys.advertisements)
        )
    if kind == "delivery":
        return ShareDelivery(
            step.delivery.round_seed, tuple(_read_share(s) for s in step.delivery.shares)
        )
    if kind == "check":
        return ConsistencyCheck(step.check.round_seed, tuple(step.check.survivors))
    if kind == "request":
        request = step.request
        return UnmaskingRequest(
            request.round_seed,
            tuple(request.survivors),
            tuple(request.dropped),
            tuple(_read_ack(ack) for ack in request.signatures),
        )
    raise SecAggWireError("a secure-aggregation server step holds no message")


def client_step_bytes(message: ClientMessage) -> bytes:
    """A client reply as ``ClientStep`` bytes."""
    step = pb.ClientStep()
    if isinstance(message, KeyAdvertisement):
        step.advertisement.CopyFrom(_advertisement(message))
    elif isinstance(message, SharedKeys):
        step.shared.round_seed = message.round_seed
        step.shared.client_id = message.client_id
        step.shared.shares.extend(_share(share) for share in message.shares)
    elif isinstance(message, SharesReceived):
        step.received.round_seed = message.round_seed
        step.received.client_id = message.client_id
    elif isinstance(message, ConsistencyAck):
        step.ack.CopyFrom(_ack(message))
    else:
        step.response.round_seed = message.round_seed
        step.response.client_id = message.client_id
        step.response.self_mask_shares.extend(_revealed(r) for r in message.self_mask_shares)
        step.response.secret_key_shares.extend(_revealed(r) for r in message.secret_key_shares)
    return step.SerializeToString()


def read_client_step(data: bytes) -> ClientMessage:
    """Parse ``ClientStep`` bytes."""
    step = _parse(pb.ClientStep, data)
    kind = step.WhichOneof("step")
    if kind == "advertisement":
        return _read_advertisement(step.advertisement)
    if kind == "shared":
        shared = step.shared
        return SharedKeys(
            shared.round_seed, shared.client_id, tuple(_read_share(s) for s in shared.shares)
        )
    if kind == "received":
        return SharesReceived(step.received.round_seed, step.received.client_id)
    if kind == "ack":
        return _read_ack(step.ack)
    if kind == "response":
        response = step.response
        return UnmaskingResponse(
            response.round_seed,
            response.client_id,
            tuple(_read_revealed(r) for r in response.self_mask_shares),
            tuple(_read_revealed(r) for r in response.secret_key_shares),
        )
    raise SecAggWireError("a secure-aggregation client step holds no message")


_Step = TypeVar("_Step", pb.ServerStep, pb.ClientStep)


def _parse(message_type: type[_Step], data: bytes) -> _Step:
    """Parse protobuf bytes; ``SecAggWireError`` when they are not a message of that type."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        raise SecAggWireError(f"not a {message_type.__name__}: {error}") from None


def _setup(setup: RoundSetup) -> pb.RoundSetup:
    return pb.RoundSetup(
        round_seed=setup.round_seed,
        cohort=setup.cohort,
        length=setup.length,
        modulus_bits=setup.modulus_bits,
        num_neighbours=setup.num_neighbours,
        threshold=setup.threshold,
    )


def _advertisement(message: KeyAdvertisement) -> pb.KeyAdvertisement:
    return pb.KeyAdvertisement(
        round_seed=message.round_seed,
        client_id=message.client_id,
        encryption_public_key=message.encryption_public_key,
        masking_public_key=message.masking_public_key,
        self_mask_commitment=message.self_mask_commitment,
        signature=message.signature,
    )


def _read_advertisement(message: pb.KeyAdvertisement) -> KeyAdvertisement:
    return KeyAdvertisement(
        message.round_seed,
        message.client_id,
        message.encryption_public_key,
        message.masking_public_key,
        message.self_mask_commitment,
        message.signature,
    )


def _share(share: EncryptedShare) -> pb.EncryptedShare:
    return pb.EncryptedShare(
        round_seed=share.round_seed,
        sender=share.sender,
        recipient=share.recipient,
        nonce=share.nonce,
        ciphertext=share.ciphertext,
    )


def _read_share(share: pb.EncryptedShare) -> EncryptedShare:
    return EncryptedShare(
        share.round_seed, share.sender, share.recipient, share.nonce, share.ciphertext
    )


def _revealed(revealed: RevealedShare) -> pb.RevealedShare:
    return pb.RevealedShare(
        owner=revealed.owner,
        share=revealed.share,
        signature=revealed.signature,
        paired_digest=revealed.paired_digest,
    )


def _read_revealed(revealed: pb.RevealedShare) -> RevealedShare:
    return RevealedShare(revealed.owner, revealed.share, revealed.signature, revealed.paired_digest)


def _ack(ack: ConsistencyAck) -> pb.ConsistencyAck:
    return pb.ConsistencyAck(
        round_seed=ack.round_seed, client_id=ack.client_id, signature=ack.signature
    )


def _read_ack(ack: pb.ConsistencyAck) -> ConsistencyAck:
    return ConsistencyAck(ack.round_seed, ack.client_id, ack.signature)
