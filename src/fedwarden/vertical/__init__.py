"""Vertical federated learning: parties holding different columns of the same entities.

Rows are aligned by private set intersection on entity ids
(:mod:`fedwarden.vertical.alignment`); a split neural network or a vertical
logistic regression is then trained across the parties, exchanging only
cut-layer activations and their gradients (:mod:`fedwarden.vertical.split`),
optionally under differential privacy (:mod:`fedwarden.vertical.release`), with
the labels protected from the feature parties by label DP
(:mod:`fedwarden.vertical.label_dp`, on by default over the network).
The label party drives training; each feature party lives in the same
process (:class:`FeatureParty`) or in its own, served over gRPC with mutual
TLS (:mod:`fedwarden.vertical.remote`, ``fedwarden vertical party``) and
reached through a :class:`RemoteFeatureParty`. Either way only explicit
messages cross, and the training loop is the same.
"""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

_EXPORTS = {
    "AlignedRows": "fedwarden.vertical.alignment",
    "AlignmentFollower": "fedwarden.vertical.alignment",
    "AlignmentPeer": "fedwarden.vertical.alignment",
    "align_as_leader": "fedwarden.vertical.alignment",
    "align_rows": "fedwarden.vertical.alignment",
    "CutActivation": "fedwarden.vertical.messages",
    "CutGradient": "fedwarden.vertical.messages",
    "ExchangeLog": "fedwarden.vertical.messages",
    "GaussianRelease": "fedwarden.vertical.release",
    "LabelRandomizedResponse": "fedwarden.vertical.label_dp",
    "clip_rows": "fedwarden.vertical.release",
    "release_events": "fedwarden.vertical.release",
    "ArchitectureSpec": "fedwarden.vertical.architecture",
    "SplitArchitecture": "fedwarden.vertical.architecture",
    "StackedModel": "fedwarden.vertical.architecture",
    "SumOfLogits": "fedwarden.vertical.architecture",
    "split_logistic": "fedwarden.vertical.architecture",
    "split_mlp": "fedwarden.vertical.architecture",
    "FeaturePartyServer": "fedwarden.vertical.remote.server",
    "PartyTable": "fedwarden.vertical.remote.tables",
    "RemoteFeatureParty": "fedwarden.vertical.remote.client",
    "VerticalResult": "fedwarden.vertical.remote.driver",
    "load_party_table": "fedwarden.vertical.remote.tables",
    "train_label_party": "fedwarden.vertical.remote.driver",
    "BottomParty": "fedwarden.vertical.split",
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
