"""fedwarden: privacy-preserving federated learning that proves what it did.

A first run::

    from fedwarden import RunConfig, run

    result = run(RunConfig.from_mapping({"rounds": 20, "data": {"source": "digits"}}))
    print(result.accuracy)
"""

from fedwarden.core import (
    ClientUpdate,
    ConfigError,
    FedwardenError,
    ParamSpec,
    RunConfig,
    TrainConfig,
    load_config,
)
from fedwarden.data import FederatedDataset, load_dataset
from fedwarden.models import NumpyTrainer, Trainer, softmax_regression
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime import LocalRuntime, RayRuntime
from fedwarden.server import RunResult, Server, run
from fedwarden.strategies import FedAdam, FedAvg, FedAvgM, FedProx, UniformSampler

__version__ = "0.1.0"

__all__ = [
    "ClientUpdate",
    "ConfigError",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedProx",
    "FederatedDataset",
    "FedwardenError",
    "LocalRuntime",
    "NumpyTrainer",
    "ParamSpec",
    "Pipeline",
    "RayRuntime",
    "RunConfig",
    "RunResult",
    "Server",
    "StreamingWeightedMean",
    "Trainer",
    "TrainConfig",
    "UniformSampler",
    "ValidateUpdate",
    "__version__",
    "load_dataset",
    "load_config",
    "run",
    "softmax_regression",
]
