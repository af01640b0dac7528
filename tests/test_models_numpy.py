"""Specifications of the NumPy softmax-regression trainer: gradient, fit, evaluation, FedAvg."""

from __future__ import annotations

import copy
import pickle
from dataclasses import replace

import numpy as np
import pytest
from scipy.special import log_softmax
from sklearn.datasets import load_digits

from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.data.dataset import ClientData
from fedwarden.models.numpy import NumpyTrainer, softmax_regression
from fedwarden.models.trainer import ClientContext

FEATURES, CLASSES = 5, 3


def blobs(num_examples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 features around one centre per class, and int64 labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 2.0, (CLASSES, FEATURES))
    y = rng.integers(0, CLASSES, num_examples)
    x = centres[y] + rng.normal(size=(num_examples, FEATURES))
    return x.astype(np.float32), y.astype(np.int64)


def client(x: np.ndarray, y: np.ndarray, seed: int = 0, client_id: str = "c1") -> ClientContext:
    """A client training on all of ``(x, y)``, with an empty test split."""
    data = ClientData(client_id, x, y, x[:0], y[:0])
    return ClientContext(client_id, data, 0, np.random.default_rng(seed))


def float64_params(trainer: NumpyTrainer, seed: int) -> dict[str, np.ndarray]:
    return {
        name: np.array(value, dtype=np.float64)
        for name, value in trainer.param_spec.views(trainer.initial_vector(seed)).items()
    }


def reference_loss_and_grad(
    weight: np.ndarray, bias: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy of softmax(x W + b) and its gradient, in float64 with SciPy."""
    x = x.astype(np.float64)
    log_probabilities = log_softmax(x @ weight + bias, axis=1)
    rows = np.arange(len(y))
    residual = np.exp(log_probabilities)
    residual[rows, y] -= 1.0
    residual /= len(y)
    return float(-log_probabilities[rows, y].mean()), x.T @ residual, residual.sum(axis=0)


def summed_gradient(trainer: NumpyTrainer, vector: np.ndarray, x: np.ndarray, y: np.ndarray):
    """The trainer's gradient of the batch's summed loss, computed in ``vector``'s dtype."""
    assert trainer.prepare is not None
    x_prepared, y_prepared = trainer.prepare(x, y)
    out = np.zeros_like(vector)
    trainer.gradient(vector, x_prepared.astype(vector.dtype), y_prepared.astype(vector.dtype), out)
    return out


def test_gradient_matches_central_finite_differences_of_the_summed_loss() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(12, seed=1)
    vector = trainer.initial_vector(4).astype(np.float64)
    vector[-CLASSES:] = [0.3, -0.2, 0.1]

    def summed_loss(candidate: np.ndarray) -> float:
        return trainer.evaluate(candidate, x.astype(np.float64), y)["loss"] * len(y)

    gradient = summed_gradient(trainer, vector, x, y)
    step = 1e-6
    numeric = np.zeros_like(vector)
    for index in range(len(vector)):
        plus, minus = vector.copy(), vector.copy()
        plus[index] += step
        minus[index] -= step
        numeric[index] = (summed_loss(plus) - summed_loss(minus)) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6, atol=1e-8)


def test_gradient_agrees_with_a_scipy_reference_in_float32() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(40, seed=2)
    vector = trainer.initial_vector(5)
    params = trainer.param_spec.views(vector)

    gradient = trainer.param_spec.views(summed_gradient(trainer, vector, x, y))

    _, expected_weight, expected_bias = reference_loss_and_grad(
        params["weight"].astype(np.float64), params["bias"].astype(np.float64), x, y
    )
    np.testing.assert_allclose(gradient["weight"], expected_weight * len(y), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gradient["bias"], expected_bias * len(y), rtol=1e-4, atol=1e-5)


def reference_sgd(
    trainer: NumpyTrainer,
    vector: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    train: TrainConfig,
    seed: int,
) -> np.ndarray:
    """Trained float64 parameters after minibatch SGD with FedProx's proximal term.

    Each epoch visits the examples in the order ``rng.permutation`` gives, as the
    trainer's shuffling is specified to.
    """
    rng = np.random.default_rng(seed)
    anchor = {
        name: view.astype(np.float64) for name, view in trainer.param_spec.views(vector).items()
    }
    weight, bias = anchor["weight"].copy(), anchor["bias"].copy()
    for _ in range(train.local_epochs):
        order = rng.permutation(len(y))
        for start in range(0, len(y), train.batch_size):
            batch = order[start : start + train.batch_size]
            _, weight_grad, bias_grad = reference_loss_and_grad(weight, bias, x[batch], y[batch])
            weight_grad += train.proximal_mu * (weight - anchor["weight"])
            bias_grad += train.proximal_mu * (bias - anchor["bias"])
            weight -= train.learning_rate * weight_grad
            bias -= train.learning_rate * bias_grad
    return np.concatenate([weight.ravel(), bias])


@pytest.mark.parametrize("proximal_mu", [0.0, 0.5], ids=["sgd", "fedprox"])
def test_fit_returns_trained_minus_initial_parameters_and_the_example_count(
    proximal_mu: float,
) -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(50, seed=3)
    vector = trainer.initial_vector(7)
    before = vector.copy()
    train = TrainConfig(local_epochs=3, batch_size=16, learning_rate=0.2, proximal_mu=proximal_mu)

    result = trainer.fit(vector, client(x, y, seed=11), train)

    trained = reference_sgd(trainer, vector, x, y, train, seed=11)
    assert result.update.dtype == np.float32
    assert result.num_examples == len(y) == 50
    np.testing.assert_allclose(result.update, trained - vector, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(vector, before)


def test_fit_reports_the_trained_models_loss_on_its_training_data() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(30, seed=3)
    vector = trainer.initial_vector(0)
    result = trainer.fit(vector, client(x, y), TrainConfig(batch_size=8, learning_rate=0.1))
    params = trainer.param_spec.views(vector + result.update)
    expected = reference_loss_and_grad(
        params["weight"].astype(np.float64), params["bias"].astype(np.float64), x, y
    )[0]
    assert result.metrics["train_loss"] == pytest.approx(expected, rel=1e-5)


def test_identical_rng_seeds_give_bit_identical_updates() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(64, seed=5)
    vector = trainer.initial_vector(1)
    train = TrainConfig(local_epochs=2, batch_size=8, learning_rate=0.1)

    first = trainer.fit(vector, client(x, y, seed=123), train).update
    second = trainer.fit(vector, client(x, y, seed=123), train).update
    other_seed = trainer.fit(vector, client(x, y, seed=124), train).update

    assert first.tobytes() == second.tobytes()
    assert not np.array_equal(first, other_seed)


def test_a_proximal_term_keeps_the_update_smaller_than_plain_sgd() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(80, seed=6)
    vector = trainer.initial_vector(2)
    plain, prox = (
        trainer.fit(
            vector,
            client(x, y, seed=9),
            TrainConfig(local_epochs=5, batch_size=16, learning_rate=0.2, proximal_mu=mu),
        ).update
        for mu in (0.0, 1.0)
    )
    assert np.linalg.norm(prox) < 0.9 * np.linalg.norm(plain)


def test_evaluate_gives_scipy_cross_entropy_and_argmax_accuracy() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(60, seed=8)
    vector = trainer.initial_vector(3)

    metrics = trainer.evaluate(vector, x, y)

    params = trainer.param_spec.views(vector)
    scores = x.astype(np.float64) @ params["weight"] + params["bias"]
    expected_loss = -log_softmax(scores, axis=1)[np.arange(len(y)), y].mean()
    expected_accuracy = np.mean(scores.argmax(axis=1) == y)
    assert set(metrics) == {"loss", "accuracy"}
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["accuracy"] == expected_accuracy
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_evaluate_is_stable_for_very_large_scores() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(20, seed=8)
    vector = trainer.initial_vector(3) * np.float32(1e4)

    metrics = trainer.evaluate(vector, x, y)

    params = trainer.param_spec.views(vector)
    scores = x.astype(np.float64) @ params["weight"] + params["bias"]
    expected_loss = -log_softmax(scores, axis=1)[np.arange(len(y)), y].mean()
    assert np.isfinite(metrics["loss"])
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_gradient_and_loss_are_finite_and_exact_for_confidently_wrong_scores() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    x, y = blobs(20, seed=8)
    # Scores differ by hundreds: some true-class probabilities underflow float32.
    vector = trainer.initial_vector(3) * np.float32(1e3)
    params = trainer.param_spec.views(vector)

    gradient = trainer.param_spec.views(summed_gradient(trainer, vector, x, y))
    loss = trainer.evaluate(vector, x, y)["loss"]

    expected_loss, expected_weight, expected_bias = reference_loss_and_grad(
        params["weight"].astype(np.float64), params["bias"].astype(np.float64), x, y
    )
    assert np.isfinite(loss)
    assert loss == pytest.approx(expected_loss, rel=1e-4)
    np.testing.assert_allclose(gradient["weight"], expected_weight * len(y), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(gradient["bias"], expected_bias * len(y), rtol=1e-4, atol=1e-3)


def test_manual_fedavg_on_digits_with_five_iid_clients_beats_85_percent() -> None:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    test, train_rows = order[:360], order[360:]
    clients = [
        client(x[rows], y[rows], client_id=f"c{i}")
        for i, rows in enumerate(np.array_split(train_rows, 5))
    ]
    trainer = softmax_regression(64, 10)
    train = TrainConfig(local_epochs=1, batch_size=32, learning_rate=0.5)
    vector = trainer.initial_vector(0)
    initial_accuracy = trainer.evaluate(vector, x[test], y[test])["accuracy"]

    for round_index in range(8):
        results = []
        for context in clients:
            context.round_index = round_index
            results.append(trainer.fit(vector, context, train))
        vector = vector + np.average(
            [r.update for r in results], axis=0, weights=[r.num_examples for r in results]
        ).astype(np.float32)

    accuracy = trainer.evaluate(vector, x[test], y[test])["accuracy"]
    assert initial_accuracy < 0.3
    assert accuracy > 0.85


def clients_of_sizes(sizes: list[int], seed: int) -> list[ClientContext]:
    """Clients holding ``sizes`` examples each (0 is a client without data), seeded apart."""
    contexts = []
    for index, size in enumerate(sizes):
        x, y = blobs(size, seed=seed + index)
        contexts.append(client(x, y, seed=100 + index, client_id=f"c{index}"))
    return contexts


COHORT_TRAINING = {
    "sgd": TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.2),
    "two epochs": TrainConfig(local_epochs=2, batch_size=8, learning_rate=0.2),
    "fedprox": TrainConfig(local_epochs=2, batch_size=8, learning_rate=0.2, proximal_mu=0.5),
}


@pytest.mark.parametrize("train", COHORT_TRAINING.values(), ids=COHORT_TRAINING.keys())
def test_a_cohort_trains_each_client_bit_for_bit_as_it_trains_alone(train: TrainConfig) -> None:
    # Sizes cover no data, less than a batch, one full batch, a short last batch, many batches.
    sizes = [17, 0, 3, 8, 40, 9]
    trainer = softmax_regression(FEATURES, CLASSES)
    vector = trainer.initial_vector(2)

    together = trainer.fit_cohort(vector, clients_of_sizes(sizes, seed=20), train)
    alone = [trainer.fit(vector, one, train) for one in clients_of_sizes(sizes, seed=20)]
    reordered = trainer.fit_cohort(vector, clients_of_sizes(sizes, seed=20)[::-2], train)

    assert [result.num_examples for result in together] == sizes
    for cohort, single in zip(together, alone, strict=True):
        assert cohort.update.tobytes() == single.update.tobytes()
        assert cohort.metrics == single.metrics
    for cohort, subset in zip(together[::-2], reordered, strict=True):
        assert cohort.update.tobytes() == subset.update.tobytes()
    assert not together[1].update.any()
    assert together[1].metrics == {"train_loss": 0.0}


@pytest.mark.parametrize("train", COHORT_TRAINING.values(), ids=COHORT_TRAINING.keys())
def test_a_cohort_takes_the_steps_of_reference_sgd_for_every_client(train: TrainConfig) -> None:
    sizes = [17, 3, 40, 9]
    trainer = softmax_regression(FEATURES, CLASSES)
    vector = trainer.initial_vector(6)
    contexts = clients_of_sizes(sizes, seed=30)

    results = trainer.fit_cohort(vector, contexts, train)

    for index, (context, result) in enumerate(zip(contexts, results, strict=True)):
        x, y = context.data.x_train, context.data.y_train
        trained = reference_sgd(trainer, vector, x, y, train, seed=100 + index)
        np.testing.assert_allclose(result.update, trained - vector, rtol=1e-4, atol=1e-5)


def test_a_cohort_adds_each_clients_own_gradient_correction() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    vector = trainer.initial_vector(3)
    train = TrainConfig(batch_size=8, learning_rate=0.1)
    contexts = clients_of_sizes([12, 20, 5], seed=40)
    contexts[0].gradient_correction = np.full(trainer.spec.size, 0.01, dtype=np.float32)
    contexts[2].gradient_correction = np.full(trainer.spec.size, -0.02, dtype=np.float32)

    together = trainer.fit_cohort(vector, contexts, train)

    alone_contexts = clients_of_sizes([12, 20, 5], seed=40)
    alone_contexts[0].gradient_correction = contexts[0].gradient_correction
    alone_contexts[2].gradient_correction = contexts[2].gradient_correction
    plain = replace(trainer, stacks_clients=False)
    for cohort, context in zip(together, alone_contexts, strict=True):
        reference = plain.fit(vector, context, train)
        np.testing.assert_allclose(cohort.update, reference.update, rtol=1e-5, atol=1e-6)


def test_fit_cohort_is_refused_for_a_gradient_that_takes_one_clients_batch() -> None:
    plain = replace(softmax_regression(FEATURES, CLASSES), stacks_clients=False)
    with pytest.raises(ConfigError, match="stacks_clients=True"):
        plain.fit_cohort(plain.initial_vector(0), clients_of_sizes([4], seed=1), TrainConfig())


def test_the_reused_epoch_buffers_never_travel_with_the_trainer() -> None:
    trainer = softmax_regression(FEATURES, CLASSES)
    before = len(pickle.dumps(trainer))
    trainer.fit_cohort(
        trainer.initial_vector(0), clients_of_sizes([400, 300], seed=2), TrainConfig()
    )
    assert len(pickle.dumps(trainer)) == before
    assert len(pickle.dumps(copy.deepcopy(trainer))) == before
