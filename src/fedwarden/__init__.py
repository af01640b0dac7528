"""fedwarden: privacy-preserving federated learning that proves what it did.

A first run::

    from fedwarden import RunConfig, run

    result = run(RunConfig.from_mapping({"rounds": 20, "data": {"source": "digits"}}))
    print(result.accuracy)

Your own PyTorch module and one ``torch.utils.data.Dataset`` per client, everything
else from the config::

    result = run(config, model=MyNet, clients=[site_a, site_b], test=held_out)
"""

from __future__ import annotations

from fedwarden._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ClientUpdate": "fedwarden.core",
    "ConfigError": "fedwarden.core",
    "FedwardenError": "fedwarden.core",
    "ParamSpec": "fedwarden.core",
    "RunConfig": "fedwarden.core",
    "RunResult": "fedwarden.core",
    "TrainConfig": "fedwarden.core",
    "load_config": "fedwarden.core",
    "FederatedDataset": "fedwarden.data",
    "load_dataset": "fedwarden.data",
    "NumpyTrainer": "fedwarden.models",
    "Trainer": "fedwarden.models",
    "softmax_regression": "fedwarden.models",
    "Pipeline": "fedwarden.pipeline",
    "StreamingWeightedMean": "fedwarden.pipeline",
    "ValidateUpdate": "fedwarden.pipeline",
    "InProcessRuntime": "fedwarden.runtime",
    "LocalRuntime": "fedwarden.runtime",
    "RayRuntime": "fedwarden.runtime",
    "Server": "fedwarden.server",
    "run": "fedwarden.build",
    "FedAdam": "fedwarden.strategies",
    "FedAvg": "fedwarden.strategies",
    "FedAvgM": "fedwarden.strategies",
    "FedProx": "fedwarden.strategies",
    "UniformSampler": "fedwarden.strategies",
}

__all__ = sorted([*_EXPORTS, "__version__"])
__getattr__ = lazy_exports(__name__, _EXPORTS)
