"""Core types: the flat vector and its ParamSpec, messages, the run config, errors."""

from fedwarden.core.config import RunConfig, load_config
from fedwarden.core.errors import (
    ConfigError,
    DataError,
    FedwardenError,
    PipelineError,
    RuntimeFailure,
    SpecMismatchError,
    UpdateRejected,
)
from fedwarden.core.messages import (
    ClientEvaluation,
    ClientFailure,
    ClientUpdate,
    EvaluateInstruction,
    FitInstruction,
    FitResult,
    TrainConfig,
)
from fedwarden.core.params import ParamSpec, TensorSpec, Vector

__all__ = [
    "ClientEvaluation",
    "ClientFailure",
    "ClientUpdate",
    "ConfigError",
    "DataError",
    "EvaluateInstruction",
    "FedwardenError",
    "FitInstruction",
    "FitResult",
    "ParamSpec",
    "PipelineError",
    "RunConfig",
    "RuntimeFailure",
    "SpecMismatchError",
    "TensorSpec",
    "TrainConfig",
    "UpdateRejected",
    "Vector",
    "load_config",
]
