"""The served model: a registered version rebuilt for prediction from the registry.

The weights and ParamSpec come from the model registry, checked against their
audited registration when the audit log's root public key is given
(:mod:`fedwarden.serve.provenance`); the kind of model and its input come from
the config of the run that trained it (``softmax``: NumPy multinomial logistic
regression; ``mlp``: the PyTorch multilayer perceptron).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import FedwardenError
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.governance.registry import ModelRegistry, ModelVersion
from fedwarden.serve.provenance import check_weights_provenance

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.floating[Any]]
Scores = Callable[[npt.NDArray[np.float32]], FloatArray]

PRODUCTION = "production"
"""The version written in place of ``X.Y.Z`` to serve a model's production version."""

_KNOWN_RANGES: dict[str, tuple[float, float]] = {"digits": (0.0, 1.0)}
"""Feature value ranges that data sources fix without statistics (digits: pixels / 16)."""


class ServeError(FedwardenError):
    """A model version cannot be served as asked."""


@dataclass(frozen=True)
class DeclaredInput:
    """What a model takes and gives: features per instance, their range if known, classes."""

    num_features: int
    num_classes: int
    lower: float | None = None
    upper: float | None = None

    def describe(self) -> str:
        """One sentence saying what a valid instance is."""
        bounds = "" if self.lower is None else f" in [{self.lower:g}, {self.upper:g}]"
        return f"each instance is a list of {self.num_features} finite numbers{bounds}"


@dataclass(frozen=True)
class ServedModel:
    """A registered version rebuilt for prediction: ``scores`` maps instances to class scores.

    ``run_id`` is the run that trained it.
    """

    reference: str
    run_id: str
    declared: DeclaredInput
    scores: Scores

    def probabilities(self, instances: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Class probabilities: the softmax of the model's class scores, one row per instance."""
        scores = np.asarray(self.scores(instances), dtype=np.float64)
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities: npt.NDArray[np.float64] = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities


def resolve_version(registry: ModelRegistry, reference: str) -> ModelVersion:
    """The version named ``MODEL@X.Y.Z``, or the production version for ``MODEL@production``."""
    name, separator, version = reference.rpartition("@")
    if not (separator and version == PRODUCTION):
        return registry.show(reference)
    found = registry.production(name)
    if found is None:
        raise ServeError(
            f"model {name!r} has no production version; promote one "
            "(`fedwarden models promote`) or serve a version as MODEL@X.Y.Z"
        )
    return found


def load_served_model(
    registry: ModelRegistry, reference: str, root_public_key: Ed25519PublicKey | None = None
) -> ServedModel:
    """Rebuild the version ``reference`` from its weights, ParamSpec and run config.

    With the audit log's ``root_public_key``, the weights must be those its audited
    registration recorded (:func:`~fedwarden.serve.provenance.check_weights_provenance`).
    """
    version = resolve_version(registry, reference)
    vector = registry.weights(version.reference)
    if root_public_key is None:
        logger.warning(
            "serving %s checked against the registry's own hash only: give the root public "
            "key (audit.pub) to check it against its audited registration",
            version.reference,
        )
    else:
        check_weights_provenance(registry.store, version, vector, root_public_key)
    spec = ParamSpec.from_json(version.spec_json)
    run = registry.store.run(version.run_id)
    if run is None:
        raise ServeError(
            f"{version.reference} was trained by run {version.run_id!r}, which the store no "
            "longer holds; the model kind and input come from that run's config"
        )
    config = RunConfig.from_mapping(json.loads(run.config_json), source=f"run {run.run_id}")
    value_range = _KNOWN_RANGES.get(config.data.source)
    lower, upper = (None, None) if value_range is None else value_range
    kind = config.model.kind
    if kind == "softmax":
        num_features, num_classes = spec.tensors[0].shape
        scores = _softmax_scores(spec, vector, num_features, num_classes)
    elif kind == "mlp":
        num_features, num_classes = spec.tensors[0].shape[1], spec.tensors[-1].shape[0]
        scores = _mlp_scores(spec, vector, num_features, num_classes, config.model.hidden)
    else:
        raise ServeError(
            f"{version.reference} is a {kind!r} model, which the prediction service cannot "
            "rebuild yet; it serves 'softmax' and 'mlp' models"
        )
    declared = DeclaredInput(num_features, num_classes, lower, upper)
    logger.info("loaded %s (%s, %s)", version.reference, kind, declared.describe())
    return ServedModel(version.reference, version.run_id, declared, scores)


def _check_spec(reference: str, built: ParamSpec, stored: ParamSpec) -> None:
    """Refuse weights whose stored ParamSpec is not the one the rebuilt model has."""
    if built != stored:
        raise ServeError(
            f"the stored ParamSpec of the weights ({', '.join(stored.names)}) is not the "
            f"rebuilt {reference} model's ({', '.join(built.names)}); the run config and the "
            "registered weights disagree"
        )


def _softmax_scores(spec: ParamSpec, vector: Vector, num_features: int, num_classes: int) -> Scores:
    """Class scores of the NumPy softmax regression with these weights."""
    from fedwarden.models.numpy import softmax_regression

    trainer = softmax_regression(num_features, num_classes)
    _check_spec("softmax", trainer.spec, spec)
    return partial(trainer.predict, vector)


def _mlp_scores(
    spec: ParamSpec,
    vector: Vector,
    num_features: int,
    num_classes: int,
    hidden: tuple[int, ...],
) -> Scores:
    """Class scores of the PyTorch multilayer perceptron with these weights."""
    import torch

    from fedwarden.models.torch import TorchTrainer, mlp

    trainer = TorchTrainer(partial(mlp, num_features, num_classes, hidden))
    _check_spec("mlp", trainer.spec, spec)
    module = trainer.load(vector)
    module.eval()

    def scores(instances: npt.NDArray[np.float32]) -> FloatArray:
        with torch.inference_mode():
            outputs: FloatArray = module(torch.from_numpy(instances)).numpy()
        return outputs

    return scores
