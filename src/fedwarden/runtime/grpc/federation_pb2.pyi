from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(_message.Message):
    __slots__ = ("major", "minor")
    MAJOR_FIELD_NUMBER: _ClassVar[int]
    MINOR_FIELD_NUMBER: _ClassVar[int]
    major: int
    minor: int
    def __init__(self, major: _Optional[int] = ..., minor: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("version", "client_id", "software_version", "identity_public_key")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    version: ProtocolVersion
    client_id: str
    software_version: str
    identity_public_key: bytes
    def __init__(self, version: _Optional[_Union[ProtocolVersion, _Mapping]] = ..., client_id: _Optional[str] = ..., software_version: _Optional[str] = ..., identity_public_key: _Optional[bytes] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("version", "run_id", "run_config_json", "num_features", "num_classes", "heartbeat_seconds", "chunk_bytes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    NUM_FEATURES_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    version: ProtocolVersion
    run_id: str
    run_config_json: str
    num_features: int
    num_classes: int
    heartbeat_seconds: int
    chunk_bytes: int
    def __init__(self, version: _Optional[_Union[ProtocolVersion, _Mapping]] = ..., run_id: _Optional[str] = ..., run_config_json: _Optional[str] = ..., num_features: _Optional[int] = ..., num_classes: _Optional[int] = ..., heartbeat_seconds: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class TrainConfig(_message.Message):
    __slots__ = ("local_epochs", "batch_size", "learning_rate", "proximal_mu")
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    def __init__(self, local_epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., proximal_mu: _Optional[float] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("version", "num_bytes", "sha256")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    version: str
    num_bytes: int
    sha256: bytes
    def __init__(self, version: _Optional[str] = ..., num_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class FitTask(_message.Message):
    __slots__ = ("train", "round_parameters")
    class RoundParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    ROUND_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    train: TrainConfig
    round_parameters: _containers.ScalarMap[str, float]
    def __init__(self, train: _Optional[_Union[TrainConfig, _Mapping]] = ..., round_parameters: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluateTask(_message.Message):
    __slots__ = ("finetune", "has_finetune")
    FINETUNE_FIELD_NUMBER: _ClassVar[int]
    HAS_FINETUNE_FIELD_NUMBER: _ClassVar[int]
    finetune: TrainConfig
    has_finetune: bool
    def __init__(self, finetune: _Optional[_Union[TrainConfig, _Mapping]] = ..., has_finetune: bool = ...) -> None: ...

class ProtocolStep(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: bytes
    def __init__(self, message: _Optional[bytes] = ...) -> None: ...

class RunFinished(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "run_id", "round_index", "model", "fit", "evaluate", "finished", "protocol")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FIT_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    run_id: str
    round_index: int
    model: ModelRef
    fit: FitTask
    evaluate: EvaluateTask
    finished: RunFinished
    protocol: ProtocolStep
    def __init__(self, task_id: _Optional[str] = ..., run_id: _Optional[str] = ..., round_index: _Optional[int] = ..., model: _Optional[_Union[ModelRef, _Mapping]] = ..., fit: _Optional[_Union[FitTask, _Mapping]] = ..., evaluate: _Optional[_Union[EvaluateTask, _Mapping]] = ..., finished: _Optional[_Union[RunFinished, _Mapping]] = ..., protocol: _Optional[_Union[ProtocolStep, _Mapping]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_ms",)
    SENT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_ms: int
    def __init__(self, sent_unix_ms: _Optional[int] = ...) -> None: ...

class TaskFailed(_message.Message):
    __slots__ = ("task_id", "reason", "message")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    message: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ClientSignal(_message.Message):
    __slots__ = ("hello", "heartbeat", "failed")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    hello: JoinRequest
    heartbeat: Heartbeat
    failed: TaskFailed
    def __init__(self, hello: _Optional[_Union[JoinRequest, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., failed: _Optional[_Union[TaskFailed, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("run_id", "version")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    version: str
    def __init__(self, run_id: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("run_id", "round_index", "task_id", "client_id", "num_examples", "metadata_json", "payload_bytes", "payload_sha256", "signature", "payload_kind")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_INDEX_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round_index: int
    task_id: str
    client_id: str
    num_examples: int
    metadata_json: str
    payload_bytes: int
    payload_sha256: bytes
    signature: bytes
    payload_kind: str
    def __init__(self, run_id: _Optional[str] = ..., round_index: _Optional[int] = ..., task_id: _Optional[str] = ..., client_id: _Optional[str] = ..., num_examples: _Optional[int] = ..., metadata_json: _Optional[str] = ..., payload_bytes: _Optional[int] = ..., payload_sha256: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., payload_kind: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadReceipt(_message.Message):
    __slots__ = ("accepted", "reason", "message")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    message: str
    def __init__(self, accepted: bool = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
