"""The update pipeline: stages between client training and the new global model."""

from fedwarden.pipeline.mean import StreamingWeightedMean
from fedwarden.pipeline.stage import Aggregate, Aggregator, Pipeline, Stage
from fedwarden.pipeline.validate import ValidateUpdate

__all__ = [
    "Aggregate",
    "Aggregator",
    "Pipeline",
    "Stage",
    "StreamingWeightedMean",
    "ValidateUpdate",
]
