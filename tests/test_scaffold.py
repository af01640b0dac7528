"""Specifications of SCAFFOLD (Karimireddy et al. 2020): corrected local steps, control variates."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.data import FederatedDataset
from fedwarden.data.dataset import ClientData
from fedwarden.models.numpy import NumpyTrainer, softmax_regression
from fedwarden.models.trainer import ClientContext
from fedwarden.strategies import FedAvg, Scaffold, ScaffoldTrainer
from fedwarden.strategies.scaffold import CONTROL

TRAIN = TrainConfig(local_epochs=1, batch_size=16, learning_rate=0.1)
Floats = npt.NDArray[np.float32]


def _no_test(features: int) -> tuple[Floats, Floats]:
    return np.zeros((0, features), np.float32), np.zeros(0, np.float32)


def _context(client: ClientData, round_index: int, state: dict[str, np.ndarray]) -> ClientContext:
    return ClientContext(
        client.client_id, client, round_index, np.random.default_rng([round_index, 7]), state
    )


def test_with_zero_control_variates_a_scaffold_step_is_a_plain_local_step(
    digits_clients: FederatedDataset,
) -> None:
    client = digits_clients.clients[digits_clients.client_ids[0]]
    inner = softmax_regression(64, 10)
    scaffold = ScaffoldTrainer(inner)
    vector = scaffold.initial_vector(0)
    assert np.all(vector[scaffold.model_size :] == 0.0)

    plain = inner.fit(vector[: scaffold.model_size], _context(client, 0, {}), TRAIN)
    state: dict[str, np.ndarray] = {}
    corrected = scaffold.fit(vector, _context(client, 0, state), TRAIN)

    np.testing.assert_array_equal(corrected.update[: scaffold.model_size], plain.update)
    steps = TRAIN.local_epochs * int(np.ceil(client.num_train / TRAIN.batch_size))
    # Option II with c = c_i = 0: dc_i = -dy / (K lr), and c_i becomes dc_i.
    expected = -plain.update / np.float32(steps * TRAIN.learning_rate)
    np.testing.assert_allclose(corrected.update[scaffold.model_size :], expected, rtol=1e-6)
    np.testing.assert_array_equal(state[CONTROL], corrected.update[scaffold.model_size :])


def test_the_correction_c_minus_c_i_is_added_to_every_local_gradient() -> None:
    # Zero data gradient: every step moves by exactly -lr * (c - c_i).
    spec = ParamSpec.from_arrays({"w": np.zeros(3, np.float32)})
    flat = NumpyTrainer(
        spec,
        initialize=lambda rng: {"w": np.zeros(3, np.float32)},
        gradient=lambda params, x, y, out: out.fill(0.0),
        predict=lambda params, x: np.zeros((len(x), 2), np.float32),
    )
    scaffold = ScaffoldTrainer(flat)
    data = ClientData("c", np.zeros((32, 1), np.float32), np.zeros(32, np.int64), *_no_test(1))
    control = np.array([1.0, -2.0, 0.5], np.float32)
    own = np.array([0.5, 0.5, 0.5], np.float32)
    vector = np.concatenate([np.zeros(3, np.float32), control])
    result = scaffold.fit(vector, _context(data, 0, {CONTROL: own}), TRAIN)
    steps = 2  # 32 examples, batch 16
    np.testing.assert_allclose(result.update[:3], -steps * TRAIN.learning_rate * (control - own))


def _least_squares_trainer() -> NumpyTrainer:
    spec = ParamSpec.from_arrays({"w": np.zeros(2, np.float32)})

    def gradient(
        params: Vector, x: npt.NDArray[np.float32], y: npt.NDArray[np.float32], out: Vector
    ) -> None:
        out[:] = x.T @ (x @ params - y)

    return NumpyTrainer(
        spec,
        initialize=lambda rng: {"w": np.zeros(2, np.float32)},
        gradient=gradient,
        predict=lambda params, x: (x @ params)[:, None],
        task="regression",
    )


def test_scaffold_reaches_the_global_optimum_where_fedavg_drifts() -> None:
    """Two clients with conflicting least-squares problems and 20 local steps each.

    FedAvg's fixed point is biased towards the clients' own optima (client
    drift); SCAFFOLD's is the optimum of the average loss (Karimireddy et al.
    2020, Section 3).
    """
    rng = np.random.default_rng(0)
    clients = []
    for index, (scale, target) in enumerate([(1.0, [1.0, -1.0]), (3.0, [-2.0, 4.0])]):
        x = (rng.normal(size=(40, 2)) * [scale, 1.0]).astype(np.float32)
        y = (x @ np.array(target, np.float32)).astype(np.float32)
        clients.append(ClientData(f"c{index}", x, y, *_no_test(2)))
    x_all = np.concatenate([c.x_train for c in clients]).astype(np.float64)
    # The optimum of the mean of the clients' mean losses (equal-sized clients).
    gram = sum(c.x_train.T @ c.x_train / 40 for c in clients)
    moment = sum(c.x_train.T @ c.y_train / 40 for c in clients)
    optimum = np.linalg.solve(gram, moment)
    assert x_all.shape == (80, 2)

    train = TrainConfig(local_epochs=20, batch_size=40, learning_rate=0.02)
    inner = _least_squares_trainer()

    def federate(scaffold: bool) -> Vector:
        trainer = ScaffoldTrainer(inner) if scaffold else inner
        strategy = (
            Scaffold(train, model_size=2, sampled_fraction=1.0) if scaffold else FedAvg(train)
        )
        vector = trainer.initial_vector(0)
        states: list[dict[str, np.ndarray]] = [{}, {}]
        for round_index in range(300):
            updates = [
                trainer.fit(vector, _context(client, round_index, state), train).update
                for client, state in zip(clients, states, strict=True)
            ]
            vector = strategy.apply(vector, np.mean(updates, axis=0).astype(np.float32))
        return vector[:2]

    drift = np.linalg.norm(federate(scaffold=False) - optimum)
    corrected = np.linalg.norm(federate(scaffold=True) - optimum)
    assert drift > 0.1  # measured 0.35
    assert corrected < 1e-3


def test_scaffold_is_refused_where_it_cannot_correct_local_steps() -> None:
    with pytest.raises(ConfigError, match=r"model\.kind"):
        RunConfig.from_mapping({"strategy": {"name": "scaffold"}, "model": {"kind": "sklearn"}})
    with pytest.raises(ConfigError, match="dp_sgd"):
        RunConfig.from_mapping(
            {
                "strategy": {"name": "scaffold"},
                "model": {"kind": "mlp"},
                "privacy": {"mechanism": "dp_sgd", "epsilon": 3.0},
            }
        )
