"""Specifications of the PyTorch trainer: exact vectors, reproducible fits, no leaks, options."""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from fedwarden.core.errors import ConfigError, SpecMismatchError
from fedwarden.core.messages import FitResult, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.batching import epoch_order
from fedwarden.models.torch import TorchTrainer, mlp
from fedwarden.models.trainer import ClientContext, ClientState
from harness import digits_silos, fedavg_in_process

SMALL_MLP = functools.partial(mlp, 8, 3, (16,))
TRAIN = TrainConfig(local_epochs=2, batch_size=8, learning_rate=0.1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def batch_norm_net() -> nn.Module:
    """Parameters, float buffers and an integer buffer; cumulative BatchNorm averages."""
    return nn.Sequential(
        nn.Linear(8, 16), nn.BatchNorm1d(16, momentum=None), nn.ReLU(), nn.Linear(16, 3)
    )


def dropout_net() -> nn.Module:
    """A model whose training draws from PyTorch's global generator."""
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def linear_regressor() -> nn.Module:
    return nn.Linear(8, 1)


def blobs(client_id: str, num_examples: int = 64, seed: int = 0) -> ClientData:
    """Three Gaussian classes in eight dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, num_examples)
    x = (rng.normal(size=(num_examples, 8)) + 2.0 * np.eye(3, 8)[y]).astype(np.float32)
    return ClientData(client_id, x, y, x[:16], y[:16])


def context(data: ClientData, seed: int, state: ClientState | None = None) -> ClientContext:
    return ClientContext(
        data.client_id, data, 0, np.random.default_rng(seed), {} if state is None else state
    )


def fit(
    trainer: TorchTrainer,
    vector: Vector,
    data: ClientData,
    seed: int = 0,
    train: TrainConfig = TRAIN,
    state: ClientState | None = None,
) -> FitResult:
    return trainer.fit(vector, context(data, seed, state), train)


def perturbed(trainer: TorchTrainer, seed: int = 0) -> Vector:
    """A vector with every entry (running statistics included) moved off its initial value."""
    noise = np.random.default_rng(seed).normal(0.0, 0.1, trainer.spec.size)
    return (trainer.initial_vector(seed) + noise).astype(np.float32)


def test_spec_covers_floating_state_dict_entries_in_state_dict_order() -> None:
    trainer = TorchTrainer(batch_norm_net)
    state = batch_norm_net().state_dict()
    assert trainer.spec.names == tuple(k for k, t in state.items() if t.is_floating_point())
    assert "1.running_mean" in trainer.spec.names
    assert "1.num_batches_tracked" not in trainer.spec.names
    assert trainer.spec.size == sum(t.numel() for t in state.values() if t.is_floating_point())


def test_vector_round_trips_exactly_through_the_module_without_reallocating() -> None:
    trainer = TorchTrainer(batch_norm_net)
    vector = perturbed(trainer)
    pointers = [t.data_ptr() for t in trainer.module.state_dict().values()]
    module = trainer.load(vector)
    assert [t.data_ptr() for t in module.state_dict().values()] == pointers
    for name, view in trainer.spec.views(vector).items():
        assert np.array_equal(module.state_dict()[name].numpy(), view)
    assert np.array_equal(trainer.vector_of(module), vector)


def test_initial_vector_is_deterministic_in_seed_and_leaves_the_global_generator_alone() -> None:
    trainer = TorchTrainer(SMALL_MLP)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = trainer.initial_vector(7)
    assert torch.equal(torch.rand(3), expected_draw)
    assert np.array_equal(first, trainer.initial_vector(7))
    assert not np.array_equal(first, trainer.initial_vector(8))


def test_fit_returns_new_minus_old_and_the_example_count() -> None:
    trainer = TorchTrainer(batch_norm_net)
    vector = trainer.initial_vector(0)
    result = fit(trainer, vector, blobs("a"))
    assert result.update.dtype == np.float32 and result.update.shape == (trainer.spec.size,)
    assert np.array_equal(result.update, trainer.vector_of(trainer.module) - vector)
    assert np.any(result.update != 0.0)
    assert result.num_examples == 64
    assert np.isfinite(result.metrics["train_loss"])


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_fit_is_minibatch_sgd_in_epoch_order_with_fedprox_gradient(mu: float) -> None:
    trainer = TorchTrainer(SMALL_MLP)
    data = blobs("a")
    vector = perturbed(trainer)
    train = TrainConfig(local_epochs=2, batch_size=10, learning_rate=0.1, proximal_mu=mu)
    result = fit(trainer, vector, data, seed=5, train=train)

    reference = SMALL_MLP()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in trainer.spec.views(vector).items()}
    )
    start = [p.detach().clone() for p in reference.parameters()]
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    rng = np.random.default_rng(5)
    losses: list[float] = []
    for _ in range(2):
        losses.clear()
        order = epoch_order(len(y), rng)
        for batch in np.array_split(order, range(10, len(y), 10)):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(reference(x[batch]), y[batch])
            loss.backward()
            with torch.no_grad():
                for param, anchor in zip(reference.parameters(), start, strict=True):
                    assert param.grad is not None
                    param.grad.add_(param - anchor, alpha=mu)
            optimizer.step()
            losses.append(loss.item() * len(batch))
    assert np.array_equal(result.update, trainer.vector_of(reference) - vector)
    assert result.metrics["train_loss"] == pytest.approx(sum(losses) / len(y))


def test_identically_seeded_fits_are_bit_identical() -> None:
    trainer = TorchTrainer(dropout_net, optimizer="adam")
    vector = trainer.initial_vector(0)
    first = fit(trainer, vector, blobs("a"), seed=3)
    second = fit(trainer, vector, blobs("a"), seed=3)
    other_seed = fit(trainer, vector, blobs("a"), seed=4)
    assert np.array_equal(first.update, second.update)
    assert not np.array_equal(first.update, other_seed.update)


@pytest.mark.parametrize(
    ("factory", "options"),
    [
        (batch_norm_net, {"optimizer": "sgd", "momentum": 0.9}),
        (batch_norm_net, {"optimizer": "adam", "weight_decay": 0.01}),
        (dropout_net, {"optimizer": "sgd", "momentum": 0.5, "personal_layers": ("3",)}),
    ],
)
def test_nothing_leaks_from_one_client_into_the_next(
    factory: Callable[[], nn.Module], options: dict[str, Any]
) -> None:
    trainer = TorchTrainer(factory, **options)
    vector = trainer.initial_vector(0)
    client_a, client_b = blobs("a", seed=1), blobs("b", 40, seed=2)
    first = fit(trainer, vector, client_a, seed=9)
    fit(trainer, perturbed(trainer), client_b, seed=10, state={"personal/3.bias": np.ones(3)})
    again = fit(trainer, vector, client_a, seed=9)
    fresh = fit(TorchTrainer(factory, **options), vector, client_a, seed=9)
    assert np.array_equal(first.update, again.update)
    assert np.array_equal(first.update, fresh.update)


def test_an_unpickled_trainer_trains_identically() -> None:
    trainer = TorchTrainer(SMALL_MLP, optimizer="adam")
    copy = pickle.loads(pickle.dumps(trainer))
    vector = trainer.initial_vector(0)
    assert copy.spec == trainer.spec
    assert np.array_equal(
        fit(trainer, vector, blobs("a")).update, fit(copy, vector, blobs("a")).update
    )


def test_fedprox_with_a_large_mu_keeps_the_update_close_to_the_global_model() -> None:
    trainer = TorchTrainer(SMALL_MLP)
    vector = trainer.initial_vector(0)
    train = TrainConfig(local_epochs=5, batch_size=8, learning_rate=0.1)
    plain = fit(trainer, vector, blobs("a"), train=train)
    proximal = fit(trainer, vector, blobs("a"), train=TrainConfig(5, 8, 0.1, proximal_mu=5.0))
    assert np.linalg.norm(proximal.update) < 0.5 * np.linalg.norm(plain.update)


def test_personal_layers_stay_on_the_client_across_fits() -> None:
    trainer = TorchTrainer(SMALL_MLP, personal_layers=("2",))
    personal = [t for t in trainer.spec.tensors if t.name.startswith("2.")]
    assert [t.name for t in personal] == ["2.weight", "2.bias"]
    vector = trainer.initial_vector(0)
    state: ClientState = {}
    first = fit(trainer, vector, blobs("a"), state=state)
    for tensor in personal:
        assert np.all(first.update[tensor.offset : tensor.offset + tensor.size] == 0.0)
        trained = trainer.module.state_dict()[tensor.name].numpy()
        assert np.array_equal(state[f"personal/{tensor.name}"], trained)
    kept = {key: value.copy() for key, value in state.items()}

    next_global = (vector + first.update + 0.25).astype(np.float32)
    frozen = TrainConfig(local_epochs=1, batch_size=8, learning_rate=0.0)
    second = fit(trainer, next_global, blobs("a"), seed=1, train=frozen, state=state)
    module_state = trainer.module.state_dict()
    for tensor in personal:
        assert np.array_equal(module_state[tensor.name].numpy(), kept[f"personal/{tensor.name}"])
    assert np.array_equal(
        module_state["0.weight"].numpy(), trainer.spec.views(next_global)["0.weight"]
    )
    assert not np.any(second.update)

    fit(trainer, next_global, blobs("b"), train=frozen)  # a client with no saved layers
    assert np.array_equal(
        trainer.module.state_dict()["2.bias"].numpy(), trainer.spec.views(next_global)["2.bias"]
    )


def test_personal_layers_must_name_tensors_of_the_model() -> None:
    with pytest.raises(ConfigError, match="'1'"):
        TorchTrainer(SMALL_MLP, personal_layers=("1",))  # the ReLU holds no tensors
    with pytest.raises(ConfigError, match=r"'2\.w'"):
        TorchTrainer(SMALL_MLP, personal_layers=("2.w",))  # dotted prefixes, not substrings


def test_kept_momentum_makes_two_fits_equal_one_uninterrupted_fit() -> None:
    full_batch = TrainConfig(local_epochs=1, batch_size=64, learning_rate=0.2)
    trainer = TorchTrainer(SMALL_MLP, momentum=0.9, keep_optimizer_state=True)
    vector = trainer.initial_vector(0)
    state: ClientState = {}
    first = fit(trainer, vector, blobs("a"), train=full_batch, state=state)
    assert {key for key in state if key.startswith("optimizer/")} == {
        f"optimizer/{index}/momentum_buffer" for index in range(4)
    }
    assert state["optimizer/0/momentum_buffer"].shape == (16, 8)
    middle = (vector + first.update).astype(np.float32)
    second = fit(trainer, middle, blobs("a"), seed=1, train=full_batch, state=state)
    forgetful = TorchTrainer(SMALL_MLP, momentum=0.9)
    without = fit(forgetful, middle, blobs("a"), seed=1, train=full_batch)

    two_epochs = TrainConfig(local_epochs=2, batch_size=64, learning_rate=0.2)
    uninterrupted = fit(TorchTrainer(SMALL_MLP, momentum=0.9), vector, blobs("a"), train=two_epochs)
    assert np.allclose(first.update + second.update, uninterrupted.update, atol=1e-5)
    assert not np.allclose(first.update + without.update, uninterrupted.update, atol=1e-3)


def test_kept_adam_state_counts_steps_across_fits() -> None:
    trainer = TorchTrainer(SMALL_MLP, optimizer="adam", keep_optimizer_state=True)
    vector = trainer.initial_vector(0)
    state: ClientState = {}
    fit(trainer, vector, blobs("a"), state=state)
    fit(trainer, vector, blobs("a"), seed=1, state=state)
    steps_per_fit = TRAIN.local_epochs * 64 // TRAIN.batch_size
    assert float(state["optimizer/0/step"]) == 2 * steps_per_fit
    assert state["optimizer/1/exp_avg_sq"].shape == (16,)
    fresh: ClientState = {}
    fit(TorchTrainer(SMALL_MLP, optimizer="adam"), vector, blobs("a"), state=fresh)
    assert fresh == {}


def test_saved_state_of_another_model_is_refused() -> None:
    trainer = TorchTrainer(SMALL_MLP, momentum=0.9, keep_optimizer_state=True)
    state: ClientState = {"optimizer/0/momentum_buffer": np.zeros((3, 3), np.float32)}
    with pytest.raises(SpecMismatchError, match="optimizer/0/momentum_buffer"):
        fit(trainer, trainer.initial_vector(0), blobs("a"), state=state)


def test_evaluate_reports_mean_cross_entropy_and_accuracy() -> None:
    trainer = TorchTrainer(batch_norm_net)
    vector = perturbed(trainer)
    data = blobs("a", 50)
    metrics = trainer.evaluate(vector, data.x_train, data.y_train)
    reference = batch_norm_net()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in trainer.spec.views(vector).items()}, strict=False
    )
    reference.eval()
    with torch.no_grad():
        scores = reference(torch.from_numpy(data.x_train))
    labels = torch.from_numpy(data.y_train)
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(scores, labels).item())
    assert metrics["accuracy"] == pytest.approx((scores.argmax(1) == labels).float().mean().item())


def test_mse_regression_trains_and_reports_only_the_loss() -> None:
    trainer = TorchTrainer(linear_regressor, loss="mse")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = (x @ np.arange(8) + 1.0).astype(np.float32)
    data = ClientData("r", x, y, x, y)
    vector = trainer.initial_vector(0)
    before = trainer.evaluate(vector, x, y)
    update = fit(trainer, vector, data, train=TrainConfig(20, 16, 0.02)).update
    after = trainer.evaluate(vector + update, x, y)
    assert set(after) == {"loss"}
    assert after["loss"] < 0.01 * before["loss"]


def test_bad_options_are_refused_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="'sgd', 'adam'"):
        TorchTrainer(SMALL_MLP, optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="momentum"):
        TorchTrainer(SMALL_MLP, optimizer="adam", momentum=0.9)


def test_fedavg_of_three_clients_learns_digits() -> None:
    clients, x_test, y_test = digits_silos(3)
    trainer = TorchTrainer(functools.partial(mlp, 64, 10, (32,)))
    train = TrainConfig(local_epochs=1, batch_size=16, learning_rate=0.1)
    vector, _ = fedavg_in_process(trainer, clients, train, rounds=5)
    assert trainer.evaluate(vector, x_test, y_test)["accuracy"] > 0.8
