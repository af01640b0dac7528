"""Core types: the flat vector and its ParamSpec, messages, records, alerts, config, errors."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "Alert": "fedwarden.core.alerts",
    "AlertError": "fedwarden.core.alerts",
    "RoundRecord": "fedwarden.core.records",
    "canonical_json": "fedwarden.core.canonical",
    "RunConfig": "fedwarden.core.config",
    "RunResult": "fedwarden.core.records",
    "check_webhook_url": "fedwarden.core.alerts",
    "load_config": "fedwarden.core.config",
    "ConfigError": "fedwarden.core.errors",
    "DataError": "fedwarden.core.errors",
    "FedwardenError": "fedwarden.core.errors",
    "PipelineError": "fedwarden.core.errors",
    "RuntimeFailure": "fedwarden.core.errors",
    "SpecMismatchError": "fedwarden.core.errors",
    "UpdateRejected": "fedwarden.core.errors",
    "ClientEvaluation": "fedwarden.core.messages",
    "ClientFailure": "fedwarden.core.messages",
    "ClientUpdate": "fedwarden.core.messages",
    "EvaluateInstruction": "fedwarden.core.messages",
    "FitInstruction": "fedwarden.core.messages",
    "FitResult": "fedwarden.core.messages",
    "TrainConfig": "fedwarden.core.messages",
    "ParamSpec": "fedwarden.core.params",
    "TensorSpec": "fedwarden.core.params",
    "Vector": "fedwarden.core.params",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
