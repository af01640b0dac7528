"""The federated server: rounds, checkpoints, run directories, and building runs from configs."""

from fedwarden.server.clustered import (
    ClusteredResult,
    ClusteredTraining,
    cluster_by_update_similarity,
)
from fedwarden.server.launch import prepare, resumed, run
from fedwarden.server.rundir import Checkpoint, RunDirectory
from fedwarden.server.server import CentralTestSet, RoundObserver, Server

__all__ = [
    "CentralTestSet",
    "Checkpoint",
    "ClusteredResult",
    "ClusteredTraining",
    "RoundObserver",
    "RunDirectory",
    "Server",
    "cluster_by_update_similarity",
    "prepare",
    "resumed",
    "run",
]
