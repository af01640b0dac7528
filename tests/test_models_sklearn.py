"""Specifications of the scikit-learn trainer: exact vectors, sklearn's training, all classes."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.metrics import log_loss

from fedwarden.core.errors import ConfigError, DataError
from fedwarden.core.messages import FitResult, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.sklearn import SklearnTrainer
from fedwarden.models.trainer import ClientContext
from harness import fedavg_in_process

SGD_TRAIN = TrainConfig(local_epochs=2, batch_size=32, learning_rate=0.01)
LBFGS_TRAIN = TrainConfig(local_epochs=5, batch_size=32, learning_rate=0.0)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data / 16).astype(np.float32), data.target


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    data = load_breast_cancer()
    x = (data.data - data.data.mean(axis=0)) / data.data.std(axis=0)
    return x.astype(np.float32), data.target


def client(client_id: str, x: np.ndarray, y: np.ndarray) -> ClientData:
    return ClientData(client_id, x, y, x[:1], y[:1])


def fit(
    trainer: SklearnTrainer, vector: Vector, data: ClientData, train: TrainConfig, seed: int = 0
) -> FitResult:
    return trainer.fit(
        vector, ClientContext(data.client_id, data, 0, np.random.default_rng(seed)), train
    )


def random_vector(trainer: SklearnTrainer, seed: int = 0) -> Vector:
    return np.random.default_rng(seed).normal(0.0, 0.1, trainer.spec.size).astype(np.float32)


def fedavg_accuracy(
    trainer: SklearnTrainer, x: np.ndarray, y: np.ndarray, train: TrainConfig, rounds: int
) -> float:
    """Accuracy on a held-out fifth after ``rounds`` of FedAvg over three clients."""
    order = np.random.default_rng(0).permutation(len(y))
    test = order[: len(y) // 5]
    clients = [
        client(f"c{i}", x[p], y[p]) for i, p in enumerate(np.array_split(order[len(y) // 5 :], 3))
    ]
    vector, _ = fedavg_in_process(trainer, clients, train, rounds)
    return trainer.evaluate(vector, x[test], y[test])["accuracy"]


def test_spec_holds_coef_and_intercept_in_sklearn_shapes() -> None:
    shapes = {
        ("sgd_classifier", 10): ((10, 64), (10,)),
        ("logistic_regression", 2): ((1, 64), (1,)),
        ("sgd_regressor", None): ((64,), (1,)),
    }
    for (estimator, classes), (coef, intercept) in shapes.items():
        trainer = SklearnTrainer(estimator, num_features=64, num_classes=classes)  # type: ignore[arg-type]
        assert trainer.spec.names == ("coef", "intercept")
        assert [t.shape for t in trainer.spec.tensors] == [coef, intercept]


@pytest.mark.parametrize(
    ("estimator", "classes"),
    [("sgd_classifier", 10), ("logistic_regression", 2), ("sgd_regressor", None)],
)
def test_vector_round_trips_exactly_through_the_estimator(
    estimator: Any, classes: int | None
) -> None:
    trainer = SklearnTrainer(estimator, num_features=64, num_classes=classes)
    vector = random_vector(trainer)
    loaded = trainer.load(vector)
    assert np.array_equal(loaded.coef_, trainer.spec.views(vector)["coef"])
    assert np.array_equal(np.atleast_1d(loaded.intercept_), trainer.spec.views(vector)["intercept"])
    assert np.array_equal(trainer.vector_of(loaded), vector)


def test_initial_vector_is_zeros_whatever_the_seed() -> None:
    trainer = SklearnTrainer("sgd_classifier", num_features=64, num_classes=10)
    assert not np.any(trainer.initial_vector(0)) and not np.any(trainer.initial_vector(1))


def test_sgd_fit_is_partial_fit_in_epoch_order_and_returns_new_minus_old(
    digits: Any,
) -> None:
    x, y = digits[0][:300], digits[1][:300]
    trainer = SklearnTrainer("sgd_classifier", num_features=64, num_classes=10, alpha=1e-3)
    vector = random_vector(trainer)
    result = fit(trainer, vector, client("a", x, y), SGD_TRAIN, seed=4)

    reference = SGDClassifier(
        loss="log_loss",
        alpha=1e-3,
        learning_rate="constant",
        eta0=0.01,
        shuffle=False,
        random_state=0,
    )
    reference.coef_ = trainer.spec.views(vector)["coef"].astype(np.float64)
    reference.intercept_ = trainer.spec.views(vector)["intercept"].astype(np.float64)
    rng = np.random.default_rng(4)
    for _ in range(SGD_TRAIN.local_epochs):
        order = rng.permutation(len(y))
        reference.partial_fit(x[order].astype(np.float64), y[order], classes=np.arange(10))
    assert np.array_equal(result.update, trainer.vector_of(reference) - vector)
    assert result.num_examples == 300
    assert result.metrics["train_loss"] == pytest.approx(
        log_loss(y, _softmax(reference.decision_function(x)))
    )


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_logistic_regression_fit_is_warm_started_solver_iterations(digits: Any) -> None:
    x, y = digits[0][:300], digits[1][:300]
    trainer = SklearnTrainer("logistic_regression", num_features=64, num_classes=10, C=0.5)
    vector = random_vector(trainer)
    result = fit(trainer, vector, client("a", x, y), LBFGS_TRAIN)

    reference = LogisticRegression(C=0.5, warm_start=True, max_iter=LBFGS_TRAIN.local_epochs)
    reference.coef_ = trainer.spec.views(vector)["coef"].astype(np.float64)
    reference.intercept_ = trainer.spec.views(vector)["intercept"].astype(np.float64)
    reference.fit(x.astype(np.float64), y, sample_weight=np.ones(len(y)))
    assert np.array_equal(result.update, trainer.vector_of(reference) - vector)


def test_identically_seeded_fits_are_bit_identical_and_seeds_change_the_order(digits: Any) -> None:
    trainer = SklearnTrainer("sgd_classifier", num_features=64, num_classes=10)
    data = client("a", digits[0][:200], digits[1][:200])
    vector = random_vector(trainer)
    first, second = (
        fit(trainer, vector, data, SGD_TRAIN, seed=1),
        fit(trainer, vector, data, SGD_TRAIN, seed=1),
    )
    assert np.array_equal(first.update, second.update)
    assert not np.array_equal(first.update, fit(trainer, vector, data, SGD_TRAIN, seed=2).update)


@pytest.mark.parametrize("estimator", ["sgd_classifier", "logistic_regression"])
def test_nothing_leaks_from_one_client_into_the_next(digits: Any, estimator: Any) -> None:
    x, y = digits
    trainer = SklearnTrainer(estimator, num_features=64, num_classes=10)
    train = SGD_TRAIN if estimator == "sgd_classifier" else LBFGS_TRAIN
    client_a, client_b = client("a", x[:200], y[:200]), client("b", x[200:300], y[200:300] % 4)
    vector = random_vector(trainer)
    first = fit(trainer, vector, client_a, train, seed=7)
    fit(trainer, random_vector(trainer, 1), client_b, train, seed=8)
    again = fit(trainer, vector, client_a, train, seed=7)
    copy = pickle.loads(pickle.dumps(trainer))
    assert np.array_equal(first.update, again.update)
    assert np.array_equal(first.update, fit(copy, vector, client_a, train, seed=7).update)


def test_fedprox_is_refused_naming_the_trainers_that_have_it(digits: Any) -> None:
    trainer = SklearnTrainer("sgd_classifier", num_features=64, num_classes=10)
    train = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.01, proximal_mu=0.1)
    with pytest.raises(ConfigError, match="only built into the PyTorch and NumPy trainers"):
        fit(trainer, trainer.initial_vector(0), client("a", *digits), train)


@pytest.mark.parametrize(
    ("estimator", "train"),
    [("sgd_classifier", TrainConfig(1, 32, 0.01)), ("logistic_regression", LBFGS_TRAIN)],
)
def test_fedavg_of_three_clients_learns_digits(
    digits: Any, estimator: Any, train: TrainConfig
) -> None:
    trainer = SklearnTrainer(estimator, num_features=64, num_classes=10)
    x, y = digits
    assert fedavg_accuracy(trainer, x, y, train, rounds=4) > 0.8


@pytest.mark.parametrize(
    ("estimator", "train"),
    [("sgd_classifier", TrainConfig(1, 32, 0.01)), ("logistic_regression", LBFGS_TRAIN)],
)
def test_fedavg_learns_the_binary_breast_cancer_task(
    breast_cancer: Any, estimator: Any, train: TrainConfig
) -> None:
    trainer = SklearnTrainer(estimator, num_features=30, num_classes=2)
    x, y = breast_cancer
    assert fedavg_accuracy(trainer, x, y, train, rounds=3) > 0.9


def test_evaluate_reports_log_loss_of_the_predicted_probabilities(
    digits: Any, breast_cancer: Any
) -> None:
    for (x, y), classes in ((digits, 10), (breast_cancer, 2)):
        trainer = SklearnTrainer(
            "logistic_regression", num_features=x.shape[1], num_classes=classes
        )
        vector = random_vector(trainer)
        estimator = trainer.load(vector)
        metrics = trainer.evaluate(vector, x, y)
        assert metrics["loss"] == pytest.approx(
            log_loss(y, estimator.predict_proba(x), labels=np.arange(classes))
        )
        assert metrics["accuracy"] == pytest.approx(float(np.mean(estimator.predict(x) == y)))


def test_logistic_regression_client_missing_classes_minimizes_its_own_objective(
    digits: Any,
) -> None:
    """The gradient of the client's all-class objective vanishes at the returned model."""
    x, y = digits
    keep = y < 4
    x, y = x[keep][:200].astype(np.float64), y[keep][:200]
    trainer = SklearnTrainer(
        "logistic_regression", num_features=64, num_classes=10, C=1.0, tol=1e-12
    )
    vector = trainer.initial_vector(0)
    result = fit(
        trainer, vector, client("a", x.astype(np.float32), y), TrainConfig(local_epochs=500)
    )
    views = trainer.spec.views(vector + result.update)
    coef, intercept = views["coef"].astype(np.float64), views["intercept"].astype(np.float64)
    residual = _softmax(x @ coef.T + intercept) - np.eye(10)[y]
    coef_gradient = x.T @ residual / len(y) + coef.T / (1.0 * len(y))
    assert np.abs(coef_gradient).max() < 1e-4
    assert np.abs(residual.mean(axis=0)).max() < 1e-4
    assert np.all(intercept[4:] < intercept[:4].min())


def test_balanced_class_weights_cover_only_the_classes_a_client_has(digits: Any) -> None:
    x, y = digits[0][:300], digits[1][:300]
    keep = y < 5
    data = client("a", x[keep], y[keep])
    counts = np.bincount(y[keep], minlength=5)
    as_dict = {label: keep.sum() / (5 * counts[label]) for label in range(5)}
    balanced = SklearnTrainer(
        "logistic_regression", num_features=64, num_classes=10, class_weight="balanced"
    )
    explicit = SklearnTrainer(
        "logistic_regression", num_features=64, num_classes=10, class_weight=as_dict
    )
    vector = random_vector(balanced)
    assert np.array_equal(
        fit(balanced, vector, data, LBFGS_TRAIN).update,
        fit(explicit, vector, data, LBFGS_TRAIN).update,
    )


def test_sgd_regressor_learns_a_linear_target_and_reports_mse() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (x @ np.arange(1.0, 6.0) + 0.5).astype(np.float32)
    trainer = SklearnTrainer("sgd_regressor", num_features=5, num_classes=None, alpha=0.0)
    vector = trainer.initial_vector(0)
    update = fit(trainer, vector, client("r", x, y), TrainConfig(3, 1, 0.01)).update
    before, after = trainer.evaluate(vector, x, y), trainer.evaluate(vector + update, x, y)
    assert set(after) == {"loss"}
    assert before["loss"] == pytest.approx(float(np.mean(y.astype(np.float64) ** 2)))
    assert after["loss"] < 1e-3 * before["loss"]


@pytest.mark.parametrize(
    ("estimator", "options", "message"),
    [
        ("sgd_classifier", {"eta0": 0.1}, "TrainConfig.learning_rate"),
        ("sgd_classifier", {"average": True}, "average"),
        ("sgd_classifier", {"class_weight": "balanced"}, "partial_fit"),
        ("sgd_classifier", {"alhpa": 0.1}, "no parameter alhpa"),
        ("logistic_regression", {"max_iter": 10}, "local_epochs"),
        ("logistic_regression", {"solver": "liblinear"}, "liblinear"),
    ],
)
def test_parameters_the_round_decides_or_sklearn_lacks_are_refused(
    estimator: Any, options: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SklearnTrainer(estimator, num_features=64, num_classes=10, **options)


def test_num_classes_must_fit_the_estimator() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        SklearnTrainer("sgd_classifier", num_features=4, num_classes=None)
    with pytest.raises(ConfigError, match="num_classes=None"):
        SklearnTrainer("sgd_regressor", num_features=4, num_classes=3)


def test_data_that_do_not_fit_the_model_are_refused(digits: Any) -> None:
    x, y = digits
    trainer = SklearnTrainer("sgd_classifier", num_features=64, num_classes=5)
    with pytest.raises(DataError, match=r"labels .* 0 \.\. 4"):
        fit(trainer, trainer.initial_vector(0), client("a", x, y), SGD_TRAIN)
    with pytest.raises(DataError, match="64"):
        trainer.evaluate(trainer.initial_vector(0), x[:, :10], y % 5)


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
