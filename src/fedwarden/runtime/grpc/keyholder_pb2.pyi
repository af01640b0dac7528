from fedwarden.runtime.grpc import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublicContextRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _federation_pb2.ProtocolVersion
    def __init__(self, version: _Optional[_Union[_federation_pb2.ProtocolVersion, _Mapping]] = ...) -> None: ...

class PublicContextReply(_message.Message):
    __slots__ = ("version", "public_context", "key_id", "min_updates")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    MIN_UPDATES_FIELD_NUMBER: _ClassVar[int]
    version: _federation_pb2.ProtocolVersion
    public_context: bytes
    key_id: str
    min_updates: int
    def __init__(self, version: _Optional[_Union[_federation_pb2.ProtocolVersion, _Mapping]] = ..., public_context: _Optional[bytes] = ..., key_id: _Optional[str] = ..., min_updates: _Optional[int] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("round_index", "client_id", "key_id", "length", "chunks", "signature")
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    round_index: int
    client_id: str
    key_id: str
    length: int
    chunks: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    def __init__(self, round_index: _Optional[int] = ..., client_id: _Optional[str] = ..., key_id: _Optional[str] = ..., length: _Optional[int] = ..., chunks: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("version", "round_index", "length", "key_id", "total_chunks", "contributions")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    version: _federation_pb2.ProtocolVersion
    round_index: int
    length: int
    key_id: str
    total_chunks: _containers.RepeatedScalarFieldContainer[bytes]
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    def __init__(self, version: _Optional[_Union[_federation_pb2.ProtocolVersion, _Mapping]] = ..., round_index: _Optional[int] = ..., length: _Optional[int] = ..., key_id: _Optional[str] = ..., total_chunks: _Optional[_Iterable[bytes]] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ...) -> None: ...

class DecryptReply(_message.Message):
    __slots__ = ("mean", "total_weight", "contributors")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    mean: bytes
    total_weight: float
    contributors: int
    def __init__(self, mean: _Optional[bytes] = ..., total_weight: _Optional[float] = ..., contributors: _Optional[int] = ...) -> None: ...
