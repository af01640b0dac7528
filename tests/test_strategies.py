"""Specifications of the server optimizers: FedAvg, FedProx, FedAvgM and the FedOpt family."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedwarden.core.errors import SpecMismatchError
from fedwarden.core.messages import TrainConfig
from fedwarden.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    Strategy,
)

TRAIN = TrainConfig(local_epochs=2, batch_size=16, learning_rate=0.1)
SIZE = 7


def start_and_updates(rounds: int = 3, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A float32 starting vector and one float32 mean update per round."""
    rng = np.random.default_rng(seed)
    start = rng.normal(size=SIZE).astype(np.float32)
    return start, [rng.normal(0.0, 0.5, SIZE).astype(np.float32) for _ in range(rounds)]


def run(strategy: Strategy, start: np.ndarray, updates: list[np.ndarray]) -> np.ndarray:
    """Apply ``updates`` round after round from ``start``."""
    vector = start
    for update in updates:
        vector = strategy.apply(vector, update)
    return vector


def test_fedavg_steps_by_the_server_learning_rate_times_the_mean_update() -> None:
    start, (update, *_) = start_and_updates()
    result = FedAvg(TRAIN, server_learning_rate=0.5).apply(start, update)
    np.testing.assert_allclose(result, start.astype(np.float64) + 0.5 * update, rtol=1e-6)
    assert result.dtype == np.float32


def test_fedavg_with_unit_learning_rate_adds_the_update_exactly() -> None:
    start = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    update = np.array([0.25, 0.5, -0.5], dtype=np.float32)
    np.testing.assert_array_equal(FedAvg(TRAIN).apply(start, update), [1.25, -1.5, 0.0])


def test_fedavg_does_not_change_the_global_vector_in_place() -> None:
    start, (update, *_) = start_and_updates()
    before = start.copy()
    FedAvg(TRAIN).apply(start, update)
    np.testing.assert_array_equal(start, before)


def test_fedavg_tells_clients_the_configured_training() -> None:
    assert FedAvg(TRAIN).train_config(0) == TRAIN
    assert FedAvg(TRAIN).train_config(5).proximal_mu == 0.0


def test_fedprox_puts_proximal_mu_into_every_rounds_train_config() -> None:
    strategy = FedProx(TRAIN, proximal_mu=0.3)
    for round_index in (0, 4):
        config = strategy.train_config(round_index)
        assert config.proximal_mu == 0.3
        assert (config.local_epochs, config.batch_size, config.learning_rate) == (2, 16, 0.1)


def test_fedprox_moves_the_server_like_fedavg() -> None:
    start, updates = start_and_updates()
    fedprox = run(FedProx(TRAIN, proximal_mu=0.3, server_learning_rate=0.7), start, updates)
    fedavg = run(FedAvg(TRAIN, server_learning_rate=0.7), start, updates)
    np.testing.assert_array_equal(fedprox, fedavg)


def test_fedavgm_over_three_rounds_equals_a_hand_rolled_momentum_loop() -> None:
    start, updates = start_and_updates()
    learning_rate, momentum = 0.8, 0.9

    x = start.astype(np.float64)
    velocity = np.zeros(SIZE)
    for delta in updates:
        velocity = momentum * velocity + delta
        x = x + learning_rate * velocity

    result = run(FedAvgM(TRAIN, learning_rate, momentum), start, updates)
    np.testing.assert_allclose(result, x, rtol=1e-5)


def test_fedavgm_with_zero_momentum_is_fedavg() -> None:
    start, updates = start_and_updates()
    np.testing.assert_allclose(
        run(FedAvgM(TRAIN, 0.8, momentum=0.0), start, updates),
        run(FedAvg(TRAIN, 0.8), start, updates),
        rtol=1e-6,
    )


SecondMoment = Callable[[np.ndarray, np.ndarray, float], np.ndarray]
"""``v_t`` from ``v_{t-1}``, ``Δ_t`` and ``beta2`` (Reddi et al. 2021, Algorithm 2)."""

SECOND_MOMENTS: dict[str, tuple[type[FedOpt], SecondMoment]] = {
    "fedadagrad": (FedAdagrad, lambda v, delta, beta2: v + delta**2),
    "fedadam": (FedAdam, lambda v, delta, beta2: beta2 * v + (1 - beta2) * delta**2),
    "fedyogi": (
        FedYogi,
        lambda v, delta, beta2: v - (1 - beta2) * delta**2 * np.sign(v - delta**2),
    ),
}


def reddi_algorithm_2(
    start: np.ndarray,
    updates: list[np.ndarray],
    second_moment: SecondMoment,
    eta: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> np.ndarray:
    """Server steps of Reddi et al. 2021, Algorithm 2, in float64.

    ``m_0 = 0``, ``v_0 = tau^2``, no bias correction, ``x <- x + eta m / (sqrt(v) + tau)``.
    """
    x = start.astype(np.float64)
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for update in updates:
        delta = update.astype(np.float64)
        m = beta1 * m + (1 - beta1) * delta
        v = second_moment(v, delta, beta2)
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", sorted(SECOND_MOMENTS))
@pytest.mark.parametrize(
    ("eta", "beta1", "beta2", "tau"),
    [(0.01, 0.9, 0.99, 1e-3), (0.1, 0.5, 0.9, 0.3)],
    ids=["paper_defaults", "large_tau"],
)
def test_fedopt_over_three_rounds_equals_reddi_et_al_algorithm_2(
    name: str, eta: float, beta1: float, beta2: float, tau: float
) -> None:
    strategy_class, second_moment = SECOND_MOMENTS[name]
    start, updates = start_and_updates()

    expected = reddi_algorithm_2(start, updates, second_moment, eta, beta1, beta2, tau)
    strategy = strategy_class(TRAIN, server_learning_rate=eta, beta1=beta1, beta2=beta2, tau=tau)
    result = run(strategy, start, updates)

    assert result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-5)


def test_fedyogi_second_moment_moves_towards_the_squared_update_from_either_side() -> None:
    # v_0 = tau^2 = 1; Δ² = [4, 0.25]: v rises for the first entry and falls for the second.
    strategy = FedYogi(TRAIN, server_learning_rate=1.0, beta1=0.0, beta2=0.5, tau=1.0)
    strategy.apply(np.zeros(2, np.float32), np.array([2.0, 0.5], np.float32))
    np.testing.assert_allclose(
        strategy.state_dict()["second_moment"], [1 + 0.5 * 4, 1 - 0.5 * 0.25]
    )


STATEFUL: dict[str, Callable[[], Strategy]] = {
    "fedavgm": lambda: FedAvgM(TRAIN, 0.8, 0.9),
    "fedadam": lambda: FedAdam(TRAIN, 0.05, 0.9, 0.99, 1e-2),
    "fedyogi": lambda: FedYogi(TRAIN, 0.05, 0.9, 0.99, 1e-2),
    "fedadagrad": lambda: FedAdagrad(TRAIN, 0.05, 0.9, 0.99, 1e-2),
}


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_fresh_strategy_loaded_from_state_dict_continues_identically(name: str) -> None:
    start, updates = start_and_updates(rounds=5)
    uninterrupted = STATEFUL[name]()
    vector = run(uninterrupted, start, updates[:2])
    saved = {key: value.copy() for key, value in uninterrupted.state_dict().items()}

    resumed = STATEFUL[name]()
    resumed.load_state_dict(saved)

    np.testing.assert_array_equal(
        run(resumed, vector, updates[2:]), run(uninterrupted, vector, updates[2:])
    )


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_a_fresh_strategy_without_the_state_does_not_continue_identically(name: str) -> None:
    start, updates = start_and_updates(rounds=5)
    uninterrupted = STATEFUL[name]()
    vector = run(uninterrupted, start, updates[:2])
    restarted = STATEFUL[name]()
    assert not np.allclose(
        run(restarted, vector, updates[2:]), run(uninterrupted, vector, updates[2:])
    )


def test_state_dict_names_the_buffers_of_each_optimizer() -> None:
    start, updates = start_and_updates()
    momentum = STATEFUL["fedavgm"]()
    run(momentum, start, updates)
    assert set(momentum.state_dict()) == {"velocity"}
    adam = STATEFUL["fedadam"]()
    run(adam, start, updates)
    assert set(adam.state_dict()) == {"first_moment", "second_moment"}
    assert FedAvg(TRAIN).state_dict() == {}


def test_loaded_buffers_are_float32_copies() -> None:
    strategy = FedAvgM(TRAIN)
    velocity = np.ones(SIZE, dtype=np.float64)
    strategy.load_state_dict({"velocity": velocity})
    loaded = strategy.state_dict()["velocity"]
    assert loaded.dtype == np.float32
    assert not np.shares_memory(loaded, velocity)


@pytest.mark.parametrize(
    ("name", "buffer"),
    [("fedavgm", "velocity"), ("fedadam", "first_moment"), ("fedyogi", "second_moment")],
)
def test_a_loaded_buffer_of_the_wrong_shape_is_refused_at_the_next_round(
    name: str, buffer: str
) -> None:
    start, updates = start_and_updates()
    trained = STATEFUL[name]()
    run(trained, start, updates)
    state = trained.state_dict()
    state[buffer] = np.zeros(SIZE + 1, np.float32)
    strategy = STATEFUL[name]()
    strategy.load_state_dict(state)
    with pytest.raises(SpecMismatchError, match=rf"{buffer}.*\({SIZE + 1},\).*\({SIZE},\)"):
        strategy.apply(start, updates[0])
