"""The federated server: rounds, checkpoints and run directories."""

from fedwarden.server.clustered import (
    ClusteredResult,
    ClusteredTraining,
    cluster_by_update_similarity,
)
from fedwarden.server.listeners import RoundListener
from fedwarden.server.rundir import Checkpoint, RunDirectory
from fedwarden.server.server import CentralTestSet, Server, ServerSettings

__all__ = [
    "CentralTestSet",
    "Checkpoint",
    "ClusteredResult",
    "ClusteredTraining",
    "RoundListener",
    "RunDirectory",
    "Server",
    "ServerSettings",
    "cluster_by_update_similarity",
]
