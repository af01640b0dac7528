"""The model adapter, the strategy and the cohort sampler a config names."""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from fedwarden.build.handed import HandedModel
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import FederatedDataset
from fedwarden.models.numpy import softmax_regression
from fedwarden.models.trainer import Trainer
from fedwarden.privacy.randomness import NoiseSource

if TYPE_CHECKING:
    from fedwarden.models.torch import Loss, ModuleFactory
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
from fedwarden.strategies.scaffold import Scaffold, ScaffoldTrainer

logger = logging.getLogger(__name__)


def build_trainer(
    config: RunConfig,
    dataset: FederatedDataset,
    handed: HandedModel | None = None,
    example_shape: tuple[int, ...] | None = None,
) -> Trainer:
    """The model adapter named by ``config.model`` for this data set's shape.

    ``model.kind = "api"`` trains ``handed``, the model handed to
    :func:`fedwarden.run` in Python (:mod:`fedwarden.build.handed`); a PyTorch
    module gets its rows back in ``example_shape``.
    """
    model = config.model
    num_classes = dataset.num_classes
    if model.kind == "api":
        return _handed_trainer(config, dataset, handed, example_shape)
    if model.kind == "softmax":
        if num_classes is None:
            raise ConfigError("model.kind 'softmax' needs a classification data set")
        return softmax_regression(dataset.num_features, num_classes)
    if model.kind in ("mlp", "cnn", "text"):
        if num_classes is None:
            raise ConfigError(f"model.kind {model.kind!r} needs a classification data set")
        from fedwarden.models.zoo import module_factory

        return _torch_trainer(
            config, module_factory(model, config.data, dataset.num_features, num_classes)
        )
    if model.kind == "sklearn":
        from fedwarden.models.sklearn import SklearnTrainer

        return SklearnTrainer(
            model.estimator, num_features=dataset.num_features, num_classes=num_classes
        )
    assert model.factory is not None
    trainer: Trainer = _model_factory(model.factory)(dataset.num_features, num_classes)
    return trainer


def _handed_trainer(
    config: RunConfig,
    dataset: FederatedDataset,
    handed: HandedModel | None,
    example_shape: tuple[int, ...] | None,
) -> Trainer:
    """The trainer of a model handed in Python."""
    if handed is None:
        if config.model.fingerprint is None:
            raise ConfigError(
                "model.kind 'api' trains the model handed to fedwarden.run(config, model=...) "
                "in Python; hand it there, or name a model.kind this config can build"
            )
        raise ConfigError(
            f"this run's model was handed to fedwarden.run in Python ({config.model.fingerprint})"
            " and nothing else holds it; resume it from Python with fedwarden.run(config, "
            "model=<the same model>, resume=RUN_DIR)"
        )
    if config.privacy.mechanism == "dp_sgd" and handed.kind != "torch":
        raise ConfigError(
            f"privacy.mechanism 'dp_sgd' trains PyTorch modules with Opacus, but the model handed "
            f"is {handed.fingerprint}; hand an nn.Module, or choose privacy.mechanism "
            "'user_level' (user-level DP of whole updates) for this model"
        )
    if handed.kind == "trainer":
        trainer: Trainer = handed.value
        return trainer
    if handed.kind == "sklearn":
        from fedwarden.models.sklearn import SklearnTrainer

        return SklearnTrainer.from_estimator(
            handed.value, num_features=dataset.num_features, num_classes=dataset.num_classes
        )
    from fedwarden.models.torch import shaped

    factory = handed.value
    if example_shape is not None and example_shape != (dataset.num_features,):
        factory = partial(shaped, factory, example_shape)
    return _torch_trainer(config, factory, "cross_entropy" if dataset.num_classes else "mse")


def _torch_trainer(
    config: RunConfig, factory: ModuleFactory, loss: Loss = "cross_entropy"
) -> Trainer:
    """A PyTorch trainer on ``train.device``: Opacus DP-SGD when the config asks for it."""
    from fedwarden.models.torch import TorchTrainer

    privacy = config.privacy
    if privacy.mechanism == "dp_sgd":
        from fedwarden.models.dp_sgd import DpSgdTrainer

        assert privacy.noise_multiplier is not None
        return DpSgdTrainer(
            factory,
            noise_multiplier=privacy.noise_multiplier,
            max_grad_norm=privacy.max_grad_norm,
            delta=privacy.delta,
            noise=NoiseSource.secure_or_testing(privacy.reproducible_noise, config.seed),
            loss=loss,
            device=config.train.device,
        )
    return TorchTrainer(factory, loss=loss, device=config.train.device)


def _model_factory(reference: str) -> Callable[[int, int | None], Trainer]:
    """The function ``"module:function"`` names, its module on ``sys.path`` or in this folder.

    The working directory is searched last, as ``python -m`` searches it first: a project's
    ``model.py`` beside its config is found by ``fedwarden run`` started in that folder, and an
    installed package of the same name still wins. The local runtime's workers are spawned with
    this ``sys.path``, so they unpickle the trainer from the same module.
    """
    module_name, _, function_name = reference.partition(":")
    working_directory = str(Path.cwd())
    if working_directory not in sys.path:
        sys.path.append(working_directory)
    try:
        factory: Callable[[int, int | None], Trainer] = getattr(
            importlib.import_module(module_name), function_name
        )
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"model.factory {reference!r} cannot be imported ({error}); write it as "
            '"package.module:function" with the package on PYTHONPATH or in the folder the '
            "run starts from"
        ) from None
    return factory


def build_strategy(config: RunConfig, population: int, trainer: Trainer) -> Strategy:
    """The strategy named by ``config.strategy`` with the clients' training config.

    SCAFFOLD needs the model's size (``trainer`` is its :class:`ScaffoldTrainer`)
    and the share of the ``population`` sampled per round.
    """
    section = config.strategy
    train = TrainConfig(
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        learning_rate=config.train.learning_rate,
    )
    if section.name == "scaffold":
        assert isinstance(trainer, ScaffoldTrainer)
        sampling = config.sampling
        fraction = (
            sampling.rate
            if sampling.scheme == "poisson"
            else min(sampling.cohort_size, population) / population
        )
        return Scaffold(
            train,
            model_size=trainer.model_size,
            sampled_fraction=fraction,
            server_learning_rate=section.server_learning_rate or 1.0,
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
            cid: attributes[sampling.attribute]
            for cid, attributes in dataset.client_attributes.items()
            if sampling.attribute in attributes
        }
        return StratifiedSampler(sampling.cohort_size, sampling.attribute, strata)
    return UniformSampler(sampling.cohort_size)
