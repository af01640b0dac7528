"""A user's own model and clients' data, handed to :func:`fedwarden.run` in Python.

``model`` is one of

- a PyTorch module factory: an ``nn.Module`` subclass or any zero-argument
  callable returning a module (each process builds its own module with it, and
  the initial weights come from it under the run's seed); or an ``nn.Module``
  instance, which every process copies, so training starts from its weights.
  The trainer is :class:`~fedwarden.models.torch.TorchTrainer`, or Opacus
  DP-SGD when ``privacy.mechanism = "dp_sgd"``, on ``train.device``;
- a scikit-learn estimator (``SGDClassifier``, ``SGDRegressor``,
  ``LogisticRegression``) with the parameters set on it
  (:meth:`~fedwarden.models.sklearn.SklearnTrainer.from_estimator`);
- a :class:`~fedwarden.models.trainer.Trainer`, such as
  :func:`~fedwarden.models.numpy.softmax_regression` or a
  :class:`~fedwarden.models.numpy.NumpyTrainer` of your own functions.

The clients' data is read by :func:`~fedwarden.data.sources.load_handed`.
Everything else (strategy, sampling, pipeline, privacy, runtime, run
directory) comes from the config, as for ``fedwarden run``. The run's recorded
config says what was handed: ``model.kind = "api"`` with ``model.fingerprint``
(the class and its parameter shapes), ``data.source = "api"`` with
``data.fingerprint`` (each client's size and the example shape); a resumed run
must be handed objects with the same fingerprints. A model's fingerprint names
its class without its module, so a script's ``__main__.Net`` resumes as
``my_project.Net`` when the tensors are the same.

The local and ray runtimes send the model to worker processes with pickle, so
it must be importable there: a class or function defined at module level (in
a script, under ``if __name__ == "__main__":``), not a lambda, a nested
function or a class typed into an interactive session. The inprocess runtime
trains in the calling process and takes any model. The grpc runtime's
clients are separate processes that build their model from the config, so
handed objects are refused there.
"""

from __future__ import annotations

import copy
import hashlib
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.sources import HandedData, load_handed
from fedwarden.models.trainer import Trainer

__all__ = ["Handed", "HandedModel"]


@dataclass(frozen=True)
class HandedModel:
    """A model handed in Python: what kind it is, the object, and what a run records of it."""

    kind: Literal["torch", "sklearn", "trainer"]
    value: Any
    """The module factory (torch), the estimator (sklearn) or the trainer."""
    fingerprint: str
    name: str
    """``module.Name`` of what was handed: the factory, or the instance's class."""

    @classmethod
    def of(cls, model: object) -> HandedModel:
        """Recognise ``model``; refuse anything fedwarden cannot train, saying what it takes."""
        if isinstance(model, Trainer):
            spec = model.spec
            shapes = [(tensor.name, tensor.shape) for tensor in spec.tensors]
            return cls(
                "trainer",
                model,
                f"trainer {type(model).__qualname__}: {len(shapes)} tensors, {spec.size} "
                f"parameters, shapes sha256 {_digest(shapes)}",
                _qualified(type(model)),
            )
        if hasattr(model, "get_params") and hasattr(model, "fit"):
            return cls("sklearn", model, f"scikit-learn {model!r}", _qualified(type(model)))
        from torch import nn  # the torch extra, needed only for a PyTorch model

        factory: Callable[[], nn.Module]
        if isinstance(model, nn.Module):
            factory, name = partial(copy.deepcopy, model), _qualified(type(model))
        elif callable(model):
            factory, name = model, _qualified(model)
        else:
            raise ConfigError(
                f"model is a {type(model).__name__}; hand a torch.nn.Module (a subclass, a "
                "factory returning one, or an instance), a scikit-learn estimator, or a "
                "fedwarden Trainer"
            )
        module = factory()
        if not isinstance(module, nn.Module):
            raise ConfigError(
                f"model {name} returned a {type(module).__name__}, not a "
                "torch.nn.Module; hand a callable that builds the module with no arguments "
                "(functools.partial(MyNet, width=64), or the class itself)"
            )
        shapes = [
            (name, tuple(tensor.shape))
            for name, tensor in module.state_dict().items()
            if tensor.is_floating_point()
        ]
        size = sum(tensor.numel() for tensor in module.parameters())
        return cls(
            "torch",
            factory,
            f"torch module {type(module).__qualname__}: {len(shapes)} tensors, {size} "
            f"parameters, shapes sha256 {_digest(shapes)}",
            name,
        )

    def require_picklable(self) -> None:
        """Refuse a model the local and ray runtimes' worker processes could not import."""
        main = sys.modules.get("__main__")
        if self.name.startswith("__main__.") and getattr(main, "__file__", None) is None:
            raise ConfigError(
                f"model {self.name} is defined in an interactive session, which the worker "
                "processes of the local runtime cannot import; move it into a .py module (or a "
                "script run with python) and import it from there, or use runtime.kind 'inprocess'"
            )
        try:
            pickle.dumps(self.value)
        except (pickle.PicklingError, AttributeError, TypeError) as error:
            raise ConfigError(
                f"model {self.name} cannot be sent to the runtime's worker processes ({error}); "
                "define the model class or factory at module level (not a lambda or a function "
                "inside another), or use functools.partial(ModuleLevelFactory, ...)"
            ) from None


@dataclass(frozen=True)
class Handed:
    """What :func:`fedwarden.run` was handed: a model, clients' data, or both."""

    model: HandedModel | None
    data: HandedData | None

    @classmethod
    def of(
        cls, config: RunConfig, model: object | None, clients: object | None, test: object | None
    ) -> Handed:
        """Read the handed objects for ``config``'s run; refuse what its runtime cannot carry."""
        if test is not None and clients is None:
            raise ConfigError(
                "test= is the central test set of the clients handed with clients=; hand both, "
                "or put the test set in the data source the config names"
            )
        if config.runtime.kind == "grpc":
            raise ConfigError(
                "runtime.kind 'grpc' starts each client as its own `fedwarden client` process, "
                "which builds its model and reads its data from the config and its files, not "
                "from objects handed in Python; use runtime.kind 'local', 'inprocess' or 'ray', "
                "or save each client's data as a file and name the model in the config"
            )
        handed_model = None if model is None else HandedModel.of(model)
        if handed_model is not None and config.runtime.kind != "inprocess":
            handed_model.require_picklable()
        data = None if clients is None else load_handed(clients, test, config.data, config.seed)
        return cls(handed_model, data)

    def stamp(self, config: RunConfig) -> RunConfig:
        """``config`` recording what was handed: ``model.kind`` / ``data.source`` ``"api"``."""
        update: dict[str, Any] = {}
        if self.model is not None:
            update["model"] = config.model.model_copy(
                update={"kind": "api", "fingerprint": self.model.fingerprint, "factory": None}
            )
        if self.data is not None:
            update["data"] = config.data.model_copy(
                update={
                    "source": "api",
                    "fingerprint": self.data.fingerprint,
                    "path": None,
                    "num_clients": len(self.data.dataset.clients),
                }
            )
        return RunConfig.model_validate({**config.model_dump(), **update})

    def require_resumes(self, stored: RunConfig, run_dir: Path | str) -> None:
        """Refuse to resume a run whose recorded model or data is not what was handed now."""
        for section, handed, argument in (
            ("model", self.model, "model"),
            ("data", self.data, "clients"),
        ):
            recorded = getattr(stored, section)
            fingerprint = None if handed is None else handed.fingerprint
            if recorded.fingerprint != fingerprint:
                was = recorded.fingerprint or f"{section} from the config"
                now = fingerprint or f"no {argument}= (the config's {section})"
                raise ConfigError(
                    f"the run in {run_dir} was trained with {section} {was!r}, but this call "
                    f"hands {now!r}; resume it with the same {argument}= it started with"
                )

    def require_model_reads(self, trainer: Trainer, dataset: FederatedDataset, seed: int) -> None:
        """Refuse a handed model that cannot evaluate two of the first client's examples."""
        if self.model is None:
            return
        client = next(iter(dataset.clients.values()))
        try:
            trainer.evaluate(trainer.initial_vector(seed), client.x_train[:2], client.y_train[:2])
        except Exception as error:  # the user's model: any failure is a wrong model for the data
            raise ConfigError(
                f"the model handed to fedwarden.run ({self.model.fingerprint}) cannot read the "
                f"clients' examples of shape {self.example_shape(dataset)} with "
                f"{dataset.num_classes or 'no'} classes ({type(error).__name__}: {error}); "
                "make its input and output sizes fit the data"
            ) from error

    def dataset(self, load: Callable[[], FederatedDataset]) -> FederatedDataset:
        """The handed clients' data set, or the one ``load`` reads from the config."""
        return load() if self.data is None else self.data.dataset

    def example_shape(self, dataset: FederatedDataset) -> tuple[int, ...]:
        """The shape of one example before it became a row (a row itself for config data)."""
        return (dataset.num_features,) if self.data is None else self.data.example_shape


def _qualified(value: object) -> str:
    """``module.QualifiedName`` of a class or function, else its type's."""
    name = getattr(value, "__qualname__", None) or type(value).__qualname__
    return f"{getattr(value, '__module__', type(value).__module__)}.{name}"


def _digest(shapes: list[tuple[str, tuple[int, ...]]]) -> str:
    """A short hash of tensor names and shapes (what a resumed run's model must match)."""
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]
