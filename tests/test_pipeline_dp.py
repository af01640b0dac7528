"""DP-FedAvg's pipeline: clipping bounds every contribution, noise std is z*C, fixed denominator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedwarden.core.errors import PipelineError, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import ParamSpec
from fedwarden.data.dataset import ClientData
from fedwarden.models.trainer import ClientContext
from fedwarden.pipeline import Pipeline, Stage
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.dp_mean import GaussianMean
from fedwarden.privacy.clipping import AdaptiveClipping, ClipNorm, clip_per_layer, clip_to_norm
from fedwarden.privacy.randomness import NoiseSource

finite_vectors = arrays(
    np.float32,
    st.integers(1, 300),
    elements=st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False),
)


def _update(
    vector: np.ndarray, client_id: str = "c", unclipped: float | None = None
) -> ClientUpdate:
    metrics = {} if unclipped is None else {"unclipped": unclipped}
    return ClientUpdate(0, client_id, vector.astype(np.float32), 10, metrics)


def _context(clip_norm: float) -> ClientContext:
    data = ClientData("c", np.zeros((1, 1)), np.zeros(1), np.zeros((0, 1)), np.zeros(0))
    return ClientContext("c", data, 0, np.random.default_rng(0), {}, {"clip_norm": clip_norm})


@settings(max_examples=200, deadline=None)
@given(finite_vectors, st.floats(1e-3, 1e3))
def test_clipping_bounds_every_contribution_and_keeps_small_updates(
    vector: np.ndarray, clip_norm: float
) -> None:
    clipped, norm = clip_to_norm(vector, clip_norm)
    assert np.linalg.norm(clipped.astype(np.float64)) <= clip_norm
    assert norm == pytest.approx(np.linalg.norm(vector.astype(np.float64)))
    if norm <= clip_norm:
        np.testing.assert_array_equal(clipped, vector)
    else:
        direction = vector.astype(np.float64) / norm
        np.testing.assert_allclose(clipped / np.linalg.norm(clipped), direction, atol=1e-5)


def test_per_layer_clipping_bounds_each_layer_and_the_whole() -> None:
    spec = ParamSpec.from_arrays({"a": np.zeros((3, 4)), "b": np.zeros(5), "c": np.zeros(2)})
    vector = np.random.default_rng(0).normal(0, 10, spec.size).astype(np.float32)
    clipped, _ = clip_per_layer(vector, 3.0, spec)
    for tensor in spec.views(clipped).values():
        assert np.linalg.norm(tensor) <= 3.0 / np.sqrt(3)
    assert np.linalg.norm(clipped) <= 3.0


def test_client_clipping_uses_the_rounds_clip_norm_and_reports_the_unclipped_bit() -> None:
    stage = ClipUpdate(ClipNorm(100.0), placement="client")
    large = stage.client_half(_update(np.full(4, 3.0)), _context(clip_norm=2.0))
    small = stage.client_half(_update(np.full(4, 0.5)), _context(clip_norm=2.0))
    assert np.linalg.norm(large.update) <= 2.0
    assert large.metrics["unclipped"] == 0.0
    assert small.metrics["unclipped"] == 1.0


def test_the_server_rejects_an_update_a_client_did_not_clip() -> None:
    stage = ClipUpdate(ClipNorm(1.0), placement="client")
    with pytest.raises(UpdateRejected) as rejection:
        stage.server_half(_update(np.full(4, 3.0)))
    assert rejection.value.reason == "clip_bound"


def test_server_clipping_needs_individual_updates_and_is_refused_with_a_hiding_stage() -> None:
    class Hiding(Stage):
        name = "secure_sum"
        hides_individual_updates = True

    noise = NoiseSource.for_testing(0)
    clip_norm = ClipNorm(1.0)
    mean = GaussianMean(
        noise_multiplier=1.0, clip_norm=clip_norm, expected_cohort_size=5, noise=noise
    )
    Pipeline([ClipUpdate(clip_norm, placement="client"), Hiding()], mean)
    with pytest.raises(PipelineError, match="clip"):
        Pipeline([ClipUpdate(clip_norm, placement="server"), Hiding()], mean)


def test_noise_std_is_z_times_c_and_the_denominator_is_the_expected_cohort() -> None:
    size, z, clip_norm, expected = 200_000, 1.3, 0.7, 8.0
    mean = GaussianMean(
        noise_multiplier=z,
        clip_norm=ClipNorm(clip_norm),
        expected_cohort_size=expected,
        noise=NoiseSource.for_testing(1),
    )
    mean.start(size, [f"c{index}" for index in range(5)])
    arrived = 5
    for index in range(arrived):
        mean.add(_update(np.full(size, 0.1), f"c{index}"))
    result = mean.result()
    noise_of_sum = result.mean_update.astype(np.float64) * expected - arrived * 0.1
    assert abs(noise_of_sum.mean()) < 5 * z * clip_norm / np.sqrt(size)
    assert noise_of_sum.std() == pytest.approx(z * clip_norm, rel=0.01)
    assert result.total_weight == expected
    assert result.num_updates == arrived


def test_adaptive_clipping_moves_the_clip_norm_towards_the_target_quantile() -> None:
    clip_norm = ClipNorm(1.0)
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_multiplier=1e-9)
    mean = GaussianMean(
        noise_multiplier=0.1,
        clip_norm=clip_norm,
        expected_cohort_size=10,
        noise=NoiseSource.for_testing(2),
        adaptive=adaptive,
    )
    mean.start(3, [f"c{index}" for index in range(10)])
    for index in range(10):
        mean.add(_update(np.zeros(3), f"c{index}", unclipped=1.0))
    mean.result()
    assert clip_norm.value == pytest.approx(np.exp(-0.2 * (1.0 - 0.5)), rel=1e-6)
    assert mean.round_parameters() == {"clip_norm": clip_norm.value}


def test_adaptive_clippings_count_gets_integer_discrete_gaussian_noise() -> None:
    """The docs promise the exact discrete sampler for the count, not float Gaussian noise."""
    z, expected, rounds = 3.0, 10, 400
    noises = []
    for round_index in range(rounds):
        clip_norm = ClipNorm(1.0)
        mean = GaussianMean(
            noise_multiplier=0.1,
            clip_norm=clip_norm,
            expected_cohort_size=expected,
            noise=NoiseSource.for_testing(round_index),
            adaptive=AdaptiveClipping(0.5, 1.0, count_noise_multiplier=z),
        )
        mean.start(3, [f"c{index}" for index in range(expected)])
        for index in range(4):
            mean.add(_update(np.zeros(3), f"c{index}", unclipped=1.0))
        mean.result()
        # C <- C exp(-(noisy_count / expected - 0.5)): recover noisy_count, then its noise.
        noisy_count = (0.5 - np.log(clip_norm.value)) * expected
        noises.append(noisy_count - 4)
    assert all(abs(noise - round(noise)) < 1e-9 for noise in noises)  # integers
    assert np.var(noises) == pytest.approx(z**2, rel=0.2)
    assert abs(np.mean(noises)) < 5 * z / np.sqrt(rounds)


def test_local_dp_noise_is_z_times_2c_and_each_clients_epsilon_composes() -> None:
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    from fedwarden.core.messages import CLIENT_EPSILON, CLIENT_EPSILON_ROUND
    from fedwarden.pipeline.local_dp import LocalGaussianNoise

    z, clip_norm, delta, size = 2.0, 0.5, 1e-5, 100_000
    stage = LocalGaussianNoise(clip_norm, z, delta, reproducible=True)
    context = _context(clip_norm)
    first = stage.client_half(_update(np.zeros(size)), context)
    second = stage.client_half(_update(np.zeros(size)), context)

    assert first.update.std() == pytest.approx(z * 2 * clip_norm, rel=0.01)
    assert not np.array_equal(first.update, second.update)

    def pld_epsilon(releases: int) -> float:
        accountant = pld_privacy_accountant.PLDAccountant()
        accountant.compose(dp_event.GaussianDpEvent(z), releases)
        return accountant.get_epsilon(delta)

    assert first.metrics[CLIENT_EPSILON_ROUND] == pytest.approx(pld_epsilon(1), rel=1e-3)
    assert first.metrics[CLIENT_EPSILON] == pytest.approx(pld_epsilon(1), rel=1e-3)
    assert second.metrics[CLIENT_EPSILON] == pytest.approx(pld_epsilon(2), rel=1e-3)
    assert int(context.state["local_dp/releases"][0]) == 2


def test_a_local_dp_client_refuses_a_release_past_its_own_budget_even_if_asked() -> None:
    """The attack: a server whose ledger was reset keeps sampling the client."""
    from fedwarden.pipeline.local_dp import RELEASES_KEY, LocalBudgetExhausted, LocalGaussianNoise

    z, clip_norm, delta = 3.0, 0.5, 1e-5
    unlimited = LocalGaussianNoise(clip_norm, z, delta)
    budget = (unlimited.epsilon(2) + unlimited.epsilon(3)) / 2  # two releases fit, not three
    stage = LocalGaussianNoise(clip_norm, z, delta, budget=budget, reproducible=True)
    context = _context(clip_norm)
    for _ in range(2):
        stage.client_half(_update(np.zeros(10)), context)
    with pytest.raises(LocalBudgetExhausted, match=r"refuses local-DP release 3.*past its budget"):
        stage.client_half(_update(np.zeros(10)), context)
    assert int(context.state[RELEASES_KEY][0]) == 2  # nothing was released or counted
