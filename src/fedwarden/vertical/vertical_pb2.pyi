from fedwarden.runtime.grpc import federation_pb2 as _federation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: _federation_pb2.ProtocolVersion
    def __init__(self, version: _Optional[_Union[_federation_pb2.ProtocolVersion, _Mapping]] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("clip_norm", "noise_multiplier")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    noise_multiplier: float
    def __init__(self, clip_norm: _Optional[float] = ..., noise_multiplier: _Optional[float] = ...) -> None: ...

class Declaration(_message.Message):
    __slots__ = ("version", "name", "table_rows", "aligned_rows", "columns", "release")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_ROWS_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    version: _federation_pb2.ProtocolVersion
    name: str
    table_rows: int
    aligned_rows: int
    columns: int
    release: Release
    def __init__(self, version: _Optional[_Union[_federation_pb2.ProtocolVersion, _Mapping]] = ..., name: _Optional[str] = ..., table_rows: _Optional[int] = ..., aligned_rows: _Optional[int] = ..., columns: _Optional[int] = ..., release: _Optional[_Union[Release, _Mapping]] = ...) -> None: ...

class PsiPoints(_message.Message):
    __slots__ = ("mode", "points")
    MODE_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    points: bytes
    def __init__(self, mode: _Optional[str] = ..., points: _Optional[bytes] = ...) -> None: ...

class PsiAnswer(_message.Message):
    __slots__ = ("double_blinded",)
    DOUBLE_BLINDED_FIELD_NUMBER: _ClassVar[int]
    double_blinded: bytes
    def __init__(self, double_blinded: _Optional[bytes] = ...) -> None: ...

class AlignmentReceipt(_message.Message):
    __slots__ = ("rows", "order_sha256")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ORDER_SHA256_FIELD_NUMBER: _ClassVar[int]
    rows: int
    order_sha256: bytes
    def __init__(self, rows: _Optional[int] = ..., order_sha256: _Optional[bytes] = ...) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("kind", "column_counts", "classes", "cut_width", "hidden_width", "seed", "position")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COLUMN_COUNTS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    CUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_WIDTH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    column_counts: _containers.RepeatedScalarFieldContainer[int]
    classes: int
    cut_width: int
    hidden_width: int
    seed: int
    position: int
    def __init__(self, kind: _Optional[str] = ..., column_counts: _Optional[_Iterable[int]] = ..., classes: _Optional[int] = ..., cut_width: _Optional[int] = ..., hidden_width: _Optional[int] = ..., seed: _Optional[int] = ..., position: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "seed")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("rows", "recipient", "training")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    rows: bytes
    recipient: str
    training: bool
    def __init__(self, rows: _Optional[bytes] = ..., recipient: _Optional[str] = ..., training: bool = ...) -> None: ...

class Activation(_message.Message):
    __slots__ = ("sender", "recipient", "values")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    values: Tensor
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Gradient(_message.Message):
    __slots__ = ("sender", "recipient", "values")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    values: Tensor
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., values: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
