"""From a RunConfig to a finished run: build every part, run, resume."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.heterogeneity import label_heterogeneity
from fedwarden.data.sources import load_dataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.local import LocalRuntime
from fedwarden.runtime.ray import RayRuntime
from fedwarden.runtime.state import ClientStateStore
from fedwarden.server.records import RunResult
from fedwarden.server.rundir import RunDirectory
from fedwarden.server.server import CentralTestSet, RoundObserver, Server
from fedwarden.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    PoissonSampler,
    Sampler,
    Strategy,
    StratifiedSampler,
    UniformSampler,
)


def build_trainer(config: RunConfig, dataset: FederatedDataset) -> Trainer:
    """The model adapter named by ``config.model`` for this data set's shape."""
    model = config.model
    num_classes = dataset.num_classes
    if model.kind == "softmax":
        if num_classes is None:
            raise ConfigError("model.kind 'softmax' needs a classification data set")
        return softmax_regression(dataset.num_features, num_classes)
    if model.kind == "mlp":
        if num_classes is None:
            raise ConfigError("model.kind 'mlp' needs a classification data set")
        from fedwarden.models.torch import TorchTrainer, mlp

        return TorchTrainer(partial(mlp, dataset.num_features, num_classes, model.hidden))
    if model.kind == "sklearn":
        from fedwarden.models.sklearn import SklearnTrainer

        return SklearnTrainer(
            model.estimator, num_features=dataset.num_features, num_classes=num_classes
        )
    assert model.factory is not None
    module_name, _, function_name = model.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"model.factory {model.factory!r} cannot be imported ({error}); write it as "
            '"package.module:function" with the package on PYTHONPATH'
        ) from None
    trainer: Trainer = factory(dataset.num_features, num_classes)
    return trainer


def build_strategy(config: RunConfig) -> Strategy:
    """The strategy named by ``config.strategy`` with the clients' training config."""
    section = config.strategy
    train = TrainConfig(
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        learning_rate=config.train.learning_rate,
    )
    if section.name in ("fedavg", "fedprox", "fedavgm"):
        server_lr = section.server_learning_rate or 1.0
        if section.name == "fedavg":
            return FedAvg(train, server_lr)
        if section.name == "fedprox":
            return FedProx(train, section.proximal_mu, server_lr)
        return FedAvgM(train, server_lr, section.momentum)
    fedopt_family: dict[str, type[FedOpt]] = {
        "fedadam": FedAdam,
        "fedyogi": FedYogi,
        "fedadagrad": FedAdagrad,
    }
    fedopt = fedopt_family[section.name]
    return fedopt(
        train,
        server_learning_rate=section.server_learning_rate or 0.01,
        beta1=section.beta1,
        beta2=section.beta2,
        tau=section.tau,
    )


def build_sampler(config: RunConfig, dataset: FederatedDataset) -> Sampler:
    """The cohort sampler named by ``config.sampling``."""
    sampling = config.sampling
    if sampling.scheme == "poisson":
        return PoissonSampler(sampling.rate)
    if sampling.scheme == "stratified":
        assert sampling.attribute is not None
        strata = {
            cid: client.attributes[sampling.attribute]
            for cid, client in dataset.clients.items()
            if sampling.attribute in client.attributes
        }
        return StratifiedSampler(sampling.cohort_size, sampling.attribute, strata)
    return UniformSampler(sampling.cohort_size)


def build_pipeline(config: RunConfig, trainer: Trainer) -> Pipeline:
    """Validation then the streaming weighted mean."""
    return Pipeline(
        [ValidateUpdate(trainer.spec.size, config.pipeline.max_update_norm)],
        StreamingWeightedMean(config.pipeline.weighting),
    )


def build_runtime(config: RunConfig) -> Runtime:
    """The runtime named by ``config.runtime``."""
    if config.runtime.kind == "ray":
        return RayRuntime(config.runtime.workers, config.runtime.address)
    return LocalRuntime(config.runtime.workers)


@dataclass(frozen=True)
class PreparedRun:
    """The data set and trainer of a run, built once and shared by server and workers."""

    dataset: FederatedDataset
    trainer: Trainer


def prepare(config: RunConfig) -> PreparedRun:
    """Load the data and build the model for ``config``."""
    dataset = load_dataset(config.data, config.seed)
    return PreparedRun(dataset, build_trainer(config, dataset))


def resumed(run_dir: Path) -> tuple[RunConfig, int]:
    """The config of the run in ``run_dir`` and how many rounds it completed."""
    directory = RunDirectory(run_dir)
    config = RunConfig.model_validate_json(directory.read_config())
    checkpoint = directory.load_checkpoint()
    return config, 0 if checkpoint is None else checkpoint.round_index + 1


def run(
    config: RunConfig,
    *,
    resume: Path | None = None,
    observer: RoundObserver | None = None,
    write_run_dir: bool = True,
    stop_after: int | None = None,
) -> RunResult:
    """Run ``config`` to the end and return its result.

    With ``resume``, continue the run in that directory instead: ``config``
    must be the one stored there (see :func:`resumed`).
    """
    if resume is not None:
        run_dir: RunDirectory | None = RunDirectory(resume)
    elif write_run_dir:
        run_dir = RunDirectory.create(config.runs_dir, config.name)
        run_dir.write_config(config.model_dump_json(indent=1))
    else:
        run_dir = None
    prepared = prepare(config)
    dataset, trainer = prepared.dataset, prepared.trainer
    pipeline = build_pipeline(config, trainer)
    with build_runtime(config) as runtime:
        server = Server(
            trainer=trainer,
            strategy=build_strategy(config),
            sampler=build_sampler(config, dataset),
            pipeline=pipeline,
            runtime=runtime,
            client_ids=dataset.client_ids,
            rounds=config.rounds,
            seed=config.seed,
            central_test=CentralTestSet(dataset.x_test, dataset.y_test),
            min_cohort=config.sampling.min_cohort,
            deadline_s=config.sampling.deadline_s,
            evaluate_every=config.evaluate_every,
            run_dir=run_dir,
            observer=observer,
        )
        checkpoint = None if run_dir is None else run_dir.load_checkpoint()
        state_dir = None if run_dir is None else run_dir.client_state_dir
        if checkpoint is not None:
            server.restore(checkpoint)
            if state_dir is not None:
                ClientStateStore(state_dir).discard_after(checkpoint.round_index)
        runtime.start(Workload(dataset, trainer, pipeline, config.seed, state_dir))
        finetune = None
        if config.personalization.finetune_epochs:
            finetune = TrainConfig(
                local_epochs=config.personalization.finetune_epochs,
                batch_size=config.train.batch_size,
                learning_rate=config.train.learning_rate,
            )
        result = server.run(finetune=finetune, stop_after=stop_after)
    extras = {"runtime": runtime.name, "num_clients": len(dataset.clients)}
    if dataset.num_classes is not None:
        heterogeneity = label_heterogeneity(dataset)
        extras["label_chi2"] = heterogeneity.chi2
        extras["label_chi2_p_value"] = heterogeneity.p_value
    return RunResult(**{**result.__dict__, "extras": extras})
