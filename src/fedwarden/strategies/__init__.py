"""Strategies (server optimizers and client instructions) and cohort samplers."""

from fedwarden.strategies.base import Strategy
from fedwarden.strategies.fedavg import FedAvg, FedAvgM, FedProx
from fedwarden.strategies.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from fedwarden.strategies.sampling import (
    PoissonSampler,
    Sampler,
    StratifiedSampler,
    UniformSampler,
)
from fedwarden.strategies.scaffold import Scaffold, ScaffoldTrainer

__all__ = [
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedOpt",
    "FedProx",
    "FedYogi",
    "PoissonSampler",
    "Sampler",
    "Scaffold",
    "ScaffoldTrainer",
    "Strategy",
    "StratifiedSampler",
    "UniformSampler",
]
