"""scikit-learn linear models as fedwarden trainers.

The flat vector holds the estimator's ``coef_`` and ``intercept_`` (ParamSpec
names ``"coef"`` and ``"intercept"``) with scikit-learn's own shapes:
``(num_classes, num_features)`` and ``(num_classes,)`` for a multiclass
classifier, ``(1, num_features)`` and ``(1,)`` for a binary one (the score of
class 1), ``(num_features,)`` and ``(1,)`` for a regressor. Every fit builds a
fresh estimator from the vector, so nothing of one client reaches the next.

How each estimator trains locally:

- ``sgd_classifier`` / ``sgd_regressor``: ``train.local_epochs`` passes of
  ``partial_fit`` with a constant step ``eta0 = train.learning_rate``, each over
  the client's examples in the order
  :func:`~fedwarden.models.batching.epoch_order` draws from ``client.rng``.
  scikit-learn's SGD steps once per example, so ``train.batch_size`` is ignored.
  ``sgd_classifier`` defaults to ``loss="log_loss"`` (logistic regression, the
  loss :meth:`SklearnTrainer.evaluate` reports) rather than scikit-learn's
  hinge; pass ``loss=...`` to change it.
- ``logistic_regression``: ``fit`` warm-started from the vector with
  ``max_iter = train.local_epochs`` solver iterations (lbfgs by default);
  ``train.learning_rate`` and ``train.batch_size`` are ignored. A client whose
  data lack some classes still trains a model over every class: one
  zero-weight example of each missing class is appended, which leaves the
  objective (and so the solution) exactly the client's own.

FedProx's proximal term is not available here: scikit-learn's solvers have no
hook for it, and a fit with ``proximal_mu > 0`` is refused.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, TypeAlias, get_args

import numpy as np
import numpy.typing as npt
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier, SGDRegressor

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import FitResult, Metrics, TrainConfig
from fedwarden.core.params import VECTOR_DTYPE, ParamSpec, Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.batching import epoch_order
from fedwarden.models.numpy import classification_metrics
from fedwarden.models.trainer import ClientContext

__all__ = ["SklearnTrainer"]

EstimatorName = Literal["sgd_classifier", "sgd_regressor", "logistic_regression"]
Estimator: TypeAlias = SGDClassifier | SGDRegressor | LogisticRegression
Array = npt.NDArray[np.generic]

_CLASSES: dict[str, type[Estimator]] = {
    "sgd_classifier": SGDClassifier,
    "sgd_regressor": SGDRegressor,
    "logistic_regression": LogisticRegression,
}

_SGD_RESERVED = {
    "learning_rate": "the step size is constant, at TrainConfig.learning_rate",
    "eta0": "the step size is TrainConfig.learning_rate",
    "shuffle": "examples are visited in the order client.rng draws",
    "max_iter": "TrainConfig.local_epochs sets the number of passes",
    "early_stopping": "TrainConfig.local_epochs sets the number of passes",
    "warm_start": "every fit starts from the server's vector",
    "average": "averaged SGD keeps a second set of weights that the vector cannot carry",
}
_RESERVED: dict[str, dict[str, str]] = {
    "sgd_classifier": _SGD_RESERVED,
    "sgd_regressor": _SGD_RESERVED,
    "logistic_regression": {
        "max_iter": "TrainConfig.local_epochs sets the solver iterations",
        "warm_start": "every fit starts from the server's vector",
    },
}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd_classifier": {"loss": "log_loss", "random_state": 0},
    "sgd_regressor": {"random_state": 0},
    "logistic_regression": {},
}
_FIXED: dict[str, dict[str, Any]] = {
    "sgd_classifier": {"learning_rate": "constant", "shuffle": False},
    "sgd_regressor": {"learning_rate": "constant", "shuffle": False},
    "logistic_regression": {"warm_start": True},
}


def _same(value: object, default: object) -> bool:
    """Whether a parameter is still its default (NaN equals NaN, as scikit-learn clones)."""
    if isinstance(value, float) and isinstance(default, float):
        return value == default or (np.isnan(value) and np.isnan(default))
    return value is default or value == default


_WARM_START_SOLVERS = ("lbfgs", "newton-cg", "newton-cholesky")
"""Solvers that start from the given coefficients and for which zero-weight rows are exact."""


class SklearnTrainer:
    """A :class:`~fedwarden.models.trainer.Trainer` for a scikit-learn linear model.

    ``num_classes`` is the number of classes (labels ``0 .. num_classes - 1``)
    for the classifiers and ``None`` for ``sgd_regressor``. ``estimator_params``
    go to the scikit-learn constructor, except those the federated round
    decides (the step size, the number of passes, shuffling and warm starts),
    which are refused with the reason.
    """

    def __init__(
        self,
        estimator: EstimatorName,
        *,
        num_features: int,
        num_classes: int | None,
        **estimator_params: Any,
    ) -> None:
        if estimator not in _CLASSES:
            raise ConfigError(
                f"estimator={estimator!r} is not one of "
                f"{', '.join(map(repr, get_args(EstimatorName)))}"
            )
        if num_features < 1:
            raise ConfigError(f"num_features={num_features}; a model needs at least one feature")
        if estimator == "sgd_regressor" and num_classes is not None:
            raise ConfigError(
                f"sgd_regressor is a regressor; set num_classes=None, not {num_classes}"
            )
        if estimator != "sgd_regressor" and (num_classes is None or num_classes < 2):
            raise ConfigError(f"{estimator} needs num_classes of 2 or more, got {num_classes}")
        for name, reason in _RESERVED[estimator].items():
            if name in estimator_params:
                raise ConfigError(f"{estimator} does not take {name}: {reason}")
        if estimator == "sgd_classifier" and estimator_params.get("class_weight") == "balanced":
            raise ConfigError(
                "sgd_classifier cannot use class_weight='balanced': partial_fit needs the class "
                "weights before it sees the data; pass them as a dict {label: weight}"
            )
        solver = estimator_params.get("solver", "lbfgs")
        if estimator == "logistic_regression" and solver not in _WARM_START_SOLVERS:
            raise ConfigError(
                f"solver={solver!r} cannot train a federated logistic regression; use one of "
                f"{', '.join(map(repr, _WARM_START_SOLVERS))}, which start from the server's "
                "coefficients"
            )
        allowed = set(_CLASSES[estimator]().get_params()) - set(_RESERVED[estimator])
        unknown = sorted(set(estimator_params) - allowed)
        if unknown:
            raise ConfigError(
                f"{estimator} has no parameter {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(allowed))}"
            )
        self.estimator = estimator
        self.num_features = num_features
        self.num_classes = num_classes
        self.estimator_params = {**_DEFAULTS[estimator], **estimator_params, **_FIXED[estimator]}
        rows = 1 if num_classes is None or num_classes == 2 else num_classes
        coef_shape = (num_features,) if num_classes is None else (rows, num_features)
        self._spec = ParamSpec.from_arrays(
            {"coef": np.zeros(coef_shape, VECTOR_DTYPE), "intercept": np.zeros(rows, VECTOR_DTYPE)}
        )

    @classmethod
    def from_estimator(
        cls, estimator: object, *, num_features: int, num_classes: int | None
    ) -> SklearnTrainer:
        """The trainer of a user's estimator object, with the parameters they set on it.

        Parameters left at scikit-learn's defaults are not passed on, so this
        trainer's own defaults (``loss="log_loss"`` for ``SGDClassifier``)
        apply; a parameter the federated round decides is refused as in the
        constructor.
        """
        name: EstimatorName | None = next(
            (name for name in get_args(EstimatorName) if type(estimator) is _CLASSES[name]), None
        )
        if name is None:
            raise ConfigError(
                f"{type(estimator).__name__} is not an estimator fedwarden trains federatedly; "
                "hand an SGDClassifier, SGDRegressor or LogisticRegression, or wrap your model "
                "as a Trainer"
            )
        assert isinstance(estimator, (SGDClassifier, SGDRegressor, LogisticRegression))
        defaults = type(estimator)().get_params()
        changed = {
            key: value
            for key, value in estimator.get_params().items()
            if key not in defaults or not _same(value, defaults[key])
        }
        return cls(name, num_features=num_features, num_classes=num_classes, **changed)

    @property
    def spec(self) -> ParamSpec:
        """Layout of ``coef`` and ``intercept`` in the flat vector."""
        return self._spec

    def initial_vector(self, seed: int) -> Vector:
        """All zeros, whatever the seed.

        The models are convex, so a zero start loses nothing, and it is where
        scikit-learn itself starts; ``seed`` is accepted for the Trainer protocol.
        """
        return self._spec.zeros()

    def load(self, vector: Vector) -> Estimator:
        """A new estimator whose coefficients are ``vector``, ready to predict."""
        views = self._spec.views(vector)
        estimator = self._new_estimator()
        estimator.coef_ = views["coef"].astype(np.float64)
        estimator.intercept_ = views["intercept"].astype(np.float64)
        estimator.n_features_in_ = self.num_features
        if self.num_classes is not None:
            estimator.classes_ = np.arange(self.num_classes)
        return estimator

    def vector_of(self, estimator: Estimator) -> Vector:
        """The flat vector of ``estimator``'s ``coef_`` and ``intercept_``."""
        return self._spec.flatten(
            {"coef": estimator.coef_, "intercept": np.atleast_1d(estimator.intercept_)}
        )

    def fit(self, vector: Vector, client: ClientContext, train: TrainConfig) -> FitResult:
        """Train from ``vector`` on the client's training split; return ``new - vector``."""
        if train.proximal_mu > 0:
            raise ConfigError(
                f"proximal_mu={train.proximal_mu}: FedProx's proximal term is only built into "
                "the PyTorch and NumPy trainers; use one of those, or proximal_mu=0 with "
                f"{self.estimator}"
            )
        x, y = self._examples(client.data.x_train, client.data.y_train, client.data)
        estimator = self.load(vector)
        if len(y) and train.local_epochs:
            if isinstance(estimator, LogisticRegression):
                self._fit_logistic(estimator, x, y, train)
            else:
                self._fit_sgd(estimator, x, y, train, client.rng)
        update = self.vector_of(estimator)
        update -= vector
        train_loss = self._metrics(estimator, x, y)["loss"] if len(y) else 0.0
        return FitResult(update, len(y), {"train_loss": train_loss})

    def _fit_sgd(
        self,
        estimator: SGDClassifier | SGDRegressor,
        x: npt.NDArray[np.float64],
        y: Array,
        train: TrainConfig,
        rng: np.random.Generator,
    ) -> None:
        """``train.local_epochs`` passes of per-example SGD, in ``client.rng``'s order."""
        estimator.set_params(eta0=train.learning_rate)
        classes = {} if self.num_classes is None else {"classes": np.arange(self.num_classes)}
        for _ in range(train.local_epochs):
            order = epoch_order(len(y), rng)
            estimator.partial_fit(x[order], y[order], **classes)

    def _fit_logistic(
        self,
        estimator: LogisticRegression,
        x: npt.NDArray[np.float64],
        y: Array,
        train: TrainConfig,
    ) -> None:
        """Warm-started solver iterations over every class, missing ones at zero weight.

        ``class_weight="balanced"`` is undefined for a class without examples, so
        for such a client it is applied here, over the classes it has, as
        scikit-learn applies it to data holding only those classes.
        """
        missing = np.setdiff1d(estimator.classes_, y)
        weights = np.ones(len(y))
        if len(missing) and isinstance(estimator.class_weight, str):
            present, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
            weights = len(y) / (len(present) * counts[inverse])
            estimator.set_params(class_weight=None)
        weights = np.concatenate([weights, np.zeros(len(missing))])
        x = np.concatenate([x, np.zeros((len(missing), self.num_features))])
        y = np.concatenate([y, missing])
        estimator.set_params(max_iter=train.local_epochs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(x, y, sample_weight=weights)

    def evaluate(self, vector: Vector, x: Array, y: Array) -> Metrics:
        """Log loss and accuracy of the decision scores (classifiers) or mse (regressor)."""
        features, targets = self._examples(x, y, None)
        if not len(targets):
            return {name: float("nan") for name in self._metric_names()}
        return self._metrics(self.load(vector), features, targets)

    def _metrics(self, estimator: Estimator, x: npt.NDArray[np.float64], y: Array) -> Metrics:
        if self.num_classes is None:
            return {"loss": float(np.mean((estimator.predict(x) - y) ** 2))}
        scores = estimator.decision_function(x)
        if scores.ndim == 1:
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        return classification_metrics(scores, y)

    def _metric_names(self) -> tuple[str, ...]:
        return ("loss",) if self.num_classes is None else ("loss", "accuracy")

    def _examples(
        self, x: Array, y: Array, client: ClientData | None
    ) -> tuple[npt.NDArray[np.float64], Array]:
        """Features as float64 and labels checked against ``num_classes`` (or targets as float)."""
        where = "evaluation data" if client is None else f"client {client.client_id!r}"
        features = np.asarray(x, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise DataError(
                f"{where} has features of shape {features.shape}; the model takes "
                f"(examples, {self.num_features})"
            )
        if self.num_classes is None:
            return features, np.asarray(y, dtype=np.float64)
        labels = np.asarray(y)
        if len(labels) and (
            not np.issubdtype(labels.dtype, np.integer)
            or labels.min() < 0
            or labels.max() >= self.num_classes
        ):
            raise DataError(
                f"{where} has labels of dtype {labels.dtype} in [{labels.min()}, {labels.max()}]; "
                f"the model takes integer labels 0 .. {self.num_classes - 1}"
            )
        return features, labels

    def _new_estimator(self) -> Estimator:
        """A fresh, unfitted estimator with this trainer's parameters."""
        return _CLASSES[self.estimator](**self.estimator_params)
