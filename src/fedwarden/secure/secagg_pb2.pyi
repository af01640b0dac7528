from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RoundSetup(_message.Message):
    __slots__ = ("round_seed", "cohort", "length", "modulus_bits", "num_neighbours", "threshold")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    COHORT_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    MODULUS_BITS_FIELD_NUMBER: _ClassVar[int]
    NUM_NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    cohort: _containers.RepeatedScalarFieldContainer[str]
    length: int
    modulus_bits: int
    num_neighbours: int
    threshold: int
    def __init__(self, round_seed: _Optional[bytes] = ..., cohort: _Optional[_Iterable[str]] = ..., length: _Optional[int] = ..., modulus_bits: _Optional[int] = ..., num_neighbours: _Optional[int] = ..., threshold: _Optional[int] = ...) -> None: ...

class StartRound(_message.Message):
    __slots__ = ("setup", "encoding_json", "peer_certificates")
    class PeerCertificatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    SETUP_FIELD_NUMBER: _ClassVar[int]
    ENCODING_JSON_FIELD_NUMBER: _ClassVar[int]
    PEER_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    setup: RoundSetup
    encoding_json: str
    peer_certificates: _containers.ScalarMap[str, bytes]
    def __init__(self, setup: _Optional[_Union[RoundSetup, _Mapping]] = ..., encoding_json: _Optional[str] = ..., peer_certificates: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class KeyAdvertisement(_message.Message):
    __slots__ = ("round_seed", "client_id", "encryption_public_key", "masking_public_key", "signature", "self_mask_commitment")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASKING_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    client_id: str
    encryption_public_key: bytes
    masking_public_key: bytes
    signature: bytes
    self_mask_commitment: bytes
    def __init__(self, round_seed: _Optional[bytes] = ..., client_id: _Optional[str] = ..., encryption_public_key: _Optional[bytes] = ..., masking_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., self_mask_commitment: _Optional[bytes] = ...) -> None: ...

class NeighbourKeys(_message.Message):
    __slots__ = ("round_seed", "advertisements")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    advertisements: _containers.RepeatedCompositeFieldContainer[KeyAdvertisement]
    def __init__(self, round_seed: _Optional[bytes] = ..., advertisements: _Optional[_Iterable[_Union[KeyAdvertisement, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("round_seed", "sender", "recipient", "nonce", "ciphertext")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, round_seed: _Optional[bytes] = ..., sender: _Optional[str] = ..., recipient: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class SharedKeys(_message.Message):
    __slots__ = ("round_seed", "client_id", "shares")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    client_id: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, round_seed: _Optional[bytes] = ..., client_id: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class ShareDelivery(_message.Message):
    __slots__ = ("round_seed", "shares")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, round_seed: _Optional[bytes] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class SharesReceived(_message.Message):
    __slots__ = ("round_seed", "client_id")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    client_id: str
    def __init__(self, round_seed: _Optional[bytes] = ..., client_id: _Optional[str] = ...) -> None: ...

class ConsistencyCheck(_message.Message):
    __slots__ = ("round_seed", "survivors")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round_seed: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencyAck(_message.Message):
    __slots__ = ("round_seed", "client_id", "signature")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    client_id: str
    signature: bytes
    def __init__(self, round_seed: _Optional[bytes] = ..., client_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskingRequest(_message.Message):
    __slots__ = ("round_seed", "survivors", "dropped", "signatures")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[ConsistencyAck]
    def __init__(self, round_seed: _Optional[bytes] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[ConsistencyAck, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("owner", "share", "signature", "paired_digest")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAIRED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    owner: str
    share: bytes
    signature: bytes
    paired_digest: bytes
    def __init__(self, owner: _Optional[str] = ..., share: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., paired_digest: _Optional[bytes] = ...) -> None: ...

class UnmaskingResponse(_message.Message):
    __slots__ = ("round_seed", "client_id", "self_mask_shares", "secret_key_shares")
    ROUND_SEED_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    SECRET_KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    round_seed: bytes
    client_id: str
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    secret_key_shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, round_seed: _Optional[bytes] = ..., client_id: _Optional[str] = ..., self_mask_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ..., secret_key_shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class ServerStep(_message.Message):
    __slots__ = ("start", "neighbour_keys", "delivery", "check", "request")
    START_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOUR_KEYS_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    CHECK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    start: StartRound
    neighbour_keys: NeighbourKeys
    delivery: ShareDelivery
    check: ConsistencyCheck
    request: UnmaskingRequest
    def __init__(self, start: _Optional[_Union[StartRound, _Mapping]] = ..., neighbour_keys: _Optional[_Union[NeighbourKeys, _Mapping]] = ..., delivery: _Optional[_Union[ShareDelivery, _Mapping]] = ..., check: _Optional[_Union[ConsistencyCheck, _Mapping]] = ..., request: _Optional[_Union[UnmaskingRequest, _Mapping]] = ...) -> None: ...

class ClientStep(_message.Message):
    __slots__ = ("advertisement", "shared", "received", "ack", "response")
    ADVERTISEMENT_FIELD_NUMBER: _ClassVar[int]
    SHARED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    advertisement: KeyAdvertisement
    shared: SharedKeys
    received: SharesReceived
    ack: ConsistencyAck
    response: UnmaskingResponse
    def __init__(self, advertisement: _Optional[_Union[KeyAdvertisement, _Mapping]] = ..., shared: _Optional[_Union[SharedKeys, _Mapping]] = ..., received: _Optional[_Union[SharesReceived, _Mapping]] = ..., ack: _Optional[_Union[ConsistencyAck, _Mapping]] = ..., response: _Optional[_Union[UnmaskingResponse, _Mapping]] = ...) -> None: ...
