"""The update pipeline: stages between client training and the new global model."""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "Codec": "fedwarden.pipeline.compress",
    "CompressUpdate": "fedwarden.pipeline.compress",
    "StreamingWeightedMean": "fedwarden.pipeline.mean",
    "Aggregate": "fedwarden.pipeline.stage",
    "Aggregator": "fedwarden.pipeline.stage",
    "Pipeline": "fedwarden.pipeline.stage",
    "Stage": "fedwarden.pipeline.stage",
    "ValidateUpdate": "fedwarden.pipeline.validate",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
