"""Specifications of DP-SGD at each client: clipping, noise, Poisson sampling, accounting."""

from __future__ import annotations

import functools
import logging
import pickle

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from torch import nn

from fedwarden.core.errors import ConfigError, DataError, SpecMismatchError
from fedwarden.core.messages import FitResult, TrainConfig
from fedwarden.core.params import Vector
from fedwarden.data.dataset import ClientData
from fedwarden.models.dp_sgd import DpSgdTrainer
from fedwarden.models.torch import Loss, ModuleFactory, mlp
from fedwarden.models.trainer import ClientContext, ClientState
from fedwarden.privacy.dp_sgd import RDP_ORDERS
from fedwarden.privacy.poisson import PoissonSampling
from fedwarden.privacy.randomness import NoiseSource
from harness import digits_silos, fedavg_in_process

SMALL_MLP = functools.partial(mlp, 8, 3, (16,))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dp_trainer(
    factory: ModuleFactory = SMALL_MLP,
    *,
    noise_multiplier: float = 1.0,
    max_grad_norm: float = 1.0,
    loss: Loss = "cross_entropy",
    fix_batchnorm: bool = False,
) -> DpSgdTrainer:
    """A trainer with test-mode noise (each fit keys its own from ``client.rng``)."""
    return DpSgdTrainer(
        factory,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        delta=1e-5,
        noise=NoiseSource.for_testing(0),
        loss=loss,
        fix_batchnorm=fix_batchnorm,
    )


def blobs(client_id: str, num_examples: int = 64, seed: int = 0) -> ClientData:
    """Three Gaussian classes in eight dimensions."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, num_examples)
    x = (rng.normal(size=(num_examples, 8)) + 2.0 * np.eye(3, 8)[y]).astype(np.float32)
    return ClientData(client_id, x, y, x[:16], y[:16])


def fit(
    trainer: DpSgdTrainer,
    vector: Vector,
    data: ClientData,
    train: TrainConfig,
    seed: int = 0,
    state: ClientState | None = None,
) -> FitResult:
    client = ClientContext(
        data.client_id, data, 0, np.random.default_rng(seed), {} if state is None else state
    )
    return trainer.fit(vector, client, train)


def batch_norm_net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


def input_blind_net() -> nn.Module:
    """A model whose per-sample gradients are all zero on all-zero inputs (no bias)."""
    return nn.Linear(50, 40, bias=False)


def test_a_step_is_the_mean_of_per_sample_gradients_each_clipped_to_max_grad_norm() -> None:
    clip = 0.5
    trainer = dp_trainer(noise_multiplier=0.0, max_grad_norm=clip)
    data = blobs("a", 24)
    vector = trainer.initial_vector(0)
    full_batch = TrainConfig(local_epochs=1, batch_size=24, learning_rate=0.3)  # q = 1, one step
    result = fit(trainer, vector, data, full_batch)
    update = result.update

    reference = SMALL_MLP()
    reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in trainer.spec.views(vector).items()}
    )
    clipped, norms = [], []
    for row in range(24):
        reference.zero_grad()
        x, y = torch.from_numpy(data.x_train[row : row + 1]), torch.from_numpy(data.y_train[row:])
        nn.functional.cross_entropy(reference(x), y[:1]).backward()
        gradient = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])  # type: ignore[union-attr]
        norm = float(gradient.norm())
        norms.append(norm)
        clipped.append(gradient * min(1.0, clip / (norm + 1e-6)))  # Opacus's clip factor
    expected = -0.3 * torch.stack(clipped).mean(0).numpy()
    assert max(norms) > 2 * clip > min(norms) / 2  # clipping binds for some examples only
    assert np.allclose(update, expected, atol=1e-6)
    assert np.linalg.norm(update) <= 0.3 * clip * (1 + 1e-6)
    assert result.metrics["client_epsilon"] == float("inf")  # no noise, no privacy


@pytest.mark.parametrize(
    ("num_examples", "batch_size", "steps"),
    [(20, 20, 1), (100, 10, 10)],  # one full batch; ten Poisson batches of expected size 10
)
def test_noise_on_the_sum_has_std_z_times_c_divided_by_the_expected_batch(
    num_examples: int, batch_size: int, steps: int
) -> None:
    z, clip, lr = 1.5, 2.0, 0.1
    trainer = dp_trainer(input_blind_net, noise_multiplier=z, max_grad_norm=clip, loss="mse")
    x = np.zeros((num_examples, 50), np.float32)
    y = np.ones((num_examples, 40), np.float32)
    data = ClientData("zeros", x, y, x, y)
    vector = trainer.initial_vector(0)
    result = fit(trainer, vector, data, TrainConfig(1, batch_size, lr))
    assert result.metrics["dp_sgd_steps"] == steps
    # Every gradient is zero, so each step moves the weights by -lr * noise / batch_size.
    noise_sum = -result.update.astype(np.float64) * batch_size / lr
    assert noise_sum.size == 2000
    assert np.std(noise_sum) == pytest.approx(z * clip * np.sqrt(steps), rel=0.06)
    assert abs(np.mean(noise_sum)) < 4 * z * clip * np.sqrt(steps / 2000)


def batches_seen(trainer: DpSgdTrainer, data: ClientData, train: TrainConfig, seed: int) -> list:
    """The inputs of every batch one fit of ``trainer`` trains on, with ``client.rng`` seeded."""
    seen: list[np.ndarray] = []
    hook = trainer.module.register_forward_hook(
        lambda _m, inputs, _o: seen.append(inputs[0].numpy().copy())
    )
    try:
        fit(trainer, trainer.initial_vector(0), data, train, seed=seed)
    finally:
        hook.remove()
    return seen


def test_poisson_batches_in_test_mode_come_from_the_fits_test_stream_at_rate_batch_over_n() -> None:
    trainer = dp_trainer()
    data = blobs("a", 20)
    seen = batches_seen(trainer, data, TrainConfig(2, 2, 0.1), seed=11)

    sampling = PoissonSampling(20, 2)
    assert (sampling.rate, sampling.expected_batch_size, sampling.steps_per_epoch) == (0.1, 2, 10)
    key = int(np.random.default_rng(11).integers(2**63))  # the fit's test-mode key
    stream = NoiseSource.for_testing(key)
    masks = []
    for _ in range(20):  # each step: the batch's coins, then the noise on the model's 195 weights
        masks.append(stream.bernoulli(0.1, 20))
        stream.gaussian(trainer.spec.size, 1.0)
    assert len(seen) == 20
    assert any(not mask.any() for mask in masks)  # empty batches are steps too
    for mask, inputs in zip(masks, seen, strict=True):
        assert np.array_equal(inputs, data.x_train[mask])


def test_the_same_public_seed_draws_different_batches_outside_test_mode() -> None:
    """The attack of issue 15: a reader of the config recomputes every batch from the seed."""
    data = blobs("a", 40)
    train = TrainConfig(1, 4, 0.1)
    secure = DpSgdTrainer(SMALL_MLP, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    first = batches_seen(secure, data, train, seed=3)
    second = batches_seen(secure, data, train, seed=3)
    assert len(first) == len(second) == 10
    differs = [not np.array_equal(a, b) for a, b in zip(first, second, strict=True)]
    assert sum(differs) >= 8  # two equal Poisson(0.1) batches of 40 examples are rare
    rng = np.random.default_rng(3)  # what the seed-holder would recompute (the old batch masks)
    rng.integers(2**63)
    rng.integers(2**63)
    predicted = [data.x_train[rng.random(40) < 0.1] for _ in range(10)]
    matches = [np.array_equal(p, b) for p, b in zip(predicted, first, strict=True)]
    assert sum(matches) <= 2


def test_test_mode_draws_the_same_batches_for_the_same_seed_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = blobs("a", 40)
    train = TrainConfig(1, 4, 0.1)
    with caplog.at_level(logging.WARNING, logger="fedwarden.privacy"):
        first = batches_seen(dp_trainer(), data, train, seed=3)
    assert "REPRODUCIBLE (test mode" in caplog.text
    second = batches_seen(dp_trainer(), data, train, seed=3)
    other = batches_seen(dp_trainer(), data, train, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_epoch_length_rounds_n_over_batch_halves_up_and_q_is_capped_at_one() -> None:
    assert PoissonSampling(300, 32).steps_per_epoch == 9  # n / batch = 9.375
    assert PoissonSampling(310, 20).steps_per_epoch == 16  # 15.5
    assert PoissonSampling(196, 8).steps_per_epoch == 25  # 24.5: round() would give 24
    small = PoissonSampling(10, 32)
    assert (small.rate, small.expected_batch_size, small.steps_per_epoch) == (1.0, 10.0, 1)


def test_epsilon_is_cumulative_per_client_and_equals_dp_accounting_rdp() -> None:
    z = 1.1
    data = blobs("a", 64)
    state: ClientState = {}
    trainer = dp_trainer(noise_multiplier=z)
    vector = trainer.initial_vector(0)
    plan = [(16, 2), (16, 1), (8, 1)]  # (batch size, local epochs): q = 0.25, 0.25, then 0.125
    reported = []
    for round_index, (batch_size, epochs) in enumerate(plan):
        if round_index == 2:
            trainer = dp_trainer(noise_multiplier=z)  # a restarted worker: only the state remains
        train = TrainConfig(epochs, batch_size, 0.1)
        reported.append(fit(trainer, vector, data, train, seed=round_index, state=state).metrics)

    def dp_accounting_epsilon(
        events: list[tuple[float, int]], orders: tuple[int, ...] | None = None
    ) -> float:
        accountant = rdp_privacy_accountant.RdpAccountant(orders=orders)
        for q, steps in events:
            sampled = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
            accountant.compose(dp_event.SelfComposedDpEvent(sampled, steps))
        return float(accountant.get_epsilon(1e-5))

    events = [(0.25, 8), (0.25, 4), (0.125, 8)]
    for count, metrics in enumerate(reported, start=1):
        assert metrics["dp_sgd_steps"] == sum(steps for _, steps in events[:count])
        oracle = dp_accounting_epsilon(events[:count], RDP_ORDERS)
        assert metrics["client_epsilon"] == pytest.approx(oracle, rel=1e-9)
    assert (
        reported[0]["client_epsilon"]
        < reported[1]["client_epsilon"]
        < reported[2]["client_epsilon"]
    )
    # Integer orders only: never below dp-accounting's epsilon at its default orders (which
    # include fractional ones), and at most 5% above it.
    default = dp_accounting_epsilon(events)
    assert default <= reported[2]["client_epsilon"] <= 1.05 * default
    assert state["dp_sgd/noise_multiplier"].tolist() == [z, z]
    assert state["dp_sgd/sample_rate"].tolist() == [0.25, 0.125]
    assert state["dp_sgd/steps"].tolist() == [12, 8]
    assert all(array.dtype.kind in "fi" for array in state.values())  # plain arrays, no pickle


def test_an_incomplete_privacy_history_is_refused() -> None:
    trainer = dp_trainer()
    state: ClientState = {"dp_sgd/steps": np.array([4])}
    with pytest.raises(SpecMismatchError, match="incomplete DP-SGD history"):
        fit(trainer, trainer.initial_vector(0), blobs("a"), TrainConfig(1, 8, 0.1), state=state)


def test_identically_seeded_fits_are_bit_identical_in_test_mode_on_any_trainer() -> None:
    trainer = dp_trainer()
    vector = trainer.initial_vector(0)
    train = TrainConfig(2, 8, 0.1)
    first = fit(trainer, vector, blobs("a"), train, seed=3)
    fit(trainer, vector + 0.1, blobs("b", 30, seed=1), train, seed=4)  # another client between
    again = fit(trainer, vector, blobs("a"), train, seed=3)
    fresh = fit(dp_trainer(), vector, blobs("a"), train, seed=3)
    copied = fit(pickle.loads(pickle.dumps(trainer)), vector, blobs("a"), train, seed=3)
    other_seed = fit(trainer, vector, blobs("a"), train, seed=5)
    for same in (again, fresh, copied):
        assert np.array_equal(first.update, same.update)
    assert not np.array_equal(first.update, other_seed.update)
    assert set(first.metrics) == {"client_epsilon", "dp_sgd_steps"}  # no noiseless training loss


def test_production_noise_is_secure_and_not_reproducible() -> None:
    vector = dp_trainer().initial_vector(0)
    train = TrainConfig(1, 8, 0.1)
    secure = DpSgdTrainer(SMALL_MLP, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5)
    assert not secure.reproducible_noise
    first = fit(secure, vector, blobs("a"), train, seed=3)
    second = fit(secure, vector, blobs("a"), train, seed=3)
    assert not np.array_equal(first.update, second.update)
    noiseless = DpSgdTrainer(SMALL_MLP, noise_multiplier=0.0, max_grad_norm=1.0, delta=1e-5)
    assert not np.array_equal(
        fit(noiseless, vector, blobs("a"), train, seed=3).update,
        fit(noiseless, vector, blobs("a"), train, seed=3).update,
    )  # without noise only the batches differ: they are secret too


def test_batch_norm_is_refused_with_a_pointer_to_group_norm() -> None:
    with pytest.raises(ConfigError, match=r"BatchNorm layers \(1\).*GroupNorm.*fix_batchnorm"):
        dp_trainer(batch_norm_net)


def test_fix_batchnorm_trains_with_group_norm_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="fedwarden.models.dp_sgd"):
        trainer = dp_trainer(batch_norm_net, fix_batchnorm=True)
    assert "replaced 1 with GroupNorm" in caplog.text
    assert isinstance(trainer.module.get_submodule("1"), nn.GroupNorm)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in trainer.module.modules())
    assert "1.running_mean" not in trainer.spec.names and "1.weight" in trainer.spec.names
    vector = trainer.initial_vector(0)
    assert vector.size == trainer.spec.size
    result = fit(trainer, vector, blobs("a"), TrainConfig(1, 8, 0.1))
    assert np.all(np.isfinite(result.update)) and np.any(result.update != 0.0)


def test_fedprox_term_is_added_to_the_privatized_gradient() -> None:
    trainer = dp_trainer()
    vector = trainer.initial_vector(0)
    plain = fit(trainer, vector, blobs("a"), TrainConfig(5, 8, 0.1))
    proximal = fit(trainer, vector, blobs("a"), TrainConfig(5, 8, 0.1, proximal_mu=5.0))
    assert np.linalg.norm(proximal.update) < 0.5 * np.linalg.norm(plain.update)


def test_bad_privacy_options_and_clients_without_data_are_refused() -> None:
    with pytest.raises(ConfigError, match="noise_multiplier=-1"):
        dp_trainer(noise_multiplier=-1.0)
    with pytest.raises(ConfigError, match="max_grad_norm=0"):
        dp_trainer(max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="delta=1"):
        DpSgdTrainer(SMALL_MLP, noise_multiplier=1.0, max_grad_norm=1.0, delta=1.0)
    x, y = np.zeros((0, 8), np.float32), np.zeros(0, np.int64)
    empty = ClientData("empty", x, y, x, y)
    trainer = dp_trainer()
    with pytest.raises(DataError, match="no training examples"):
        fit(trainer, trainer.initial_vector(0), empty, TrainConfig(1, 8, 0.1))


def test_fedavg_of_five_dp_sgd_clients_learns_digits_at_moderate_epsilon() -> None:
    clients, x_test, y_test = digits_silos(5)
    trainer = dp_trainer(functools.partial(mlp, 64, 10, (32,)), noise_multiplier=1.3)
    train = TrainConfig(local_epochs=1, batch_size=32, learning_rate=1.0)
    vector, results = fedavg_in_process(trainer, clients, train, rounds=5)
    assert max(r.metrics["client_epsilon"] for r in results) < 4.0
    assert trainer.evaluate(vector, x_test, y_test)["accuracy"] > 0.6  # chance is 0.1
