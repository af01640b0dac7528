"""Vertical federated learning: parties holding different columns of the same entities.

Rows are aligned by private set intersection on entity ids
(:mod:`fedwarden.vertical.alignment`); a split neural network or a vertical
logistic regression is then trained across the parties, exchanging only
cut-layer activations and their gradients (:mod:`fedwarden.vertical.split`),
optionally under differential privacy (:mod:`fedwarden.vertical.release`).
The runtime is local: every party lives in one process and talks through
explicit messages; running the parties over gRPC is not implemented.
"""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "AlignedRows": "fedwarden.vertical.alignment",
    "align_rows": "fedwarden.vertical.alignment",
    "CutActivation": "fedwarden.vertical.messages",
    "CutGradient": "fedwarden.vertical.messages",
    "ExchangeLog": "fedwarden.vertical.messages",
    "GaussianRelease": "fedwarden.vertical.release",
    "clip_rows": "fedwarden.vertical.release",
    "SplitArchitecture": "fedwarden.vertical.architecture",
    "StackedModel": "fedwarden.vertical.architecture",
    "SumOfLogits": "fedwarden.vertical.architecture",
    "split_logistic": "fedwarden.vertical.architecture",
    "split_mlp": "fedwarden.vertical.architecture",
    "FeatureParty": "fedwarden.vertical.split",
    "LabelParty": "fedwarden.vertical.split",
    "SplitLearning": "fedwarden.vertical.split",
    "TrainingPlan": "fedwarden.vertical.split",
    "VerticalError": "fedwarden.vertical.messages",
    "centralized_accuracy": "fedwarden.vertical.split",
    "train_centralized": "fedwarden.vertical.split",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
