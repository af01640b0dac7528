"""Specifications of the secure aggregators in the pipeline: SecAgg+, distributed DP and CKKS."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError, PipelineError, RoundAborted
from fedwarden.core.messages import ClientUpdate
from fedwarden.pipeline import Pipeline, ValidateUpdate
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.he_mean import HomomorphicMean
from fedwarden.pipeline.secure import SecureSum
from fedwarden.privacy.clipping import ClipNorm
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.secure.encoding import RingEncoder
from fedwarden.secure.secagg import SecAggParameters


def _updates(count: int, size: int, seed: int = 0) -> list[ClientUpdate]:
    rng = np.random.default_rng(seed)
    return [
        ClientUpdate(
            0,
            f"c{index}",
            rng.normal(0, 0.3, size).astype(np.float32),
            num_examples=int(rng.integers(5, 50)),
        )
        for index in range(count)
    ]


def _plain_weighted_mean(updates: list[ClientUpdate]) -> np.ndarray:
    weights = np.array([u.num_examples for u in updates], dtype=np.float64)
    stacked = np.stack([u.update.astype(np.float64) for u in updates])
    return (weights @ stacked) / weights.sum()


def test_secure_sum_gives_the_survivors_weighted_mean_within_the_quantization_bound() -> None:
    updates = _updates(8, 300)
    secure = SecureSum(
        SecAggParameters(modulus_bits=32, num_neighbours=4, threshold=3),
        clip_norm=100.0,  # no update is clipped: the sum must be FedAvg's
        noise=NoiseSource.for_testing(0),
        max_weight=64,
    )
    secure.start(300, [u.client_id for u in updates])
    survivors = updates[:6]  # two clients drop out after sharing keys
    for update in survivors:
        secure.add(update)
    result = secure.result()

    assert result.num_updates == 6
    assert result.total_weight == sum(u.num_examples for u in survivors)
    encoder = RingEncoder.finest(100.0, 8, 32, "example_count", 64)
    bound = encoder.sum_error_bound(6) / result.total_weight + 1e-6  # + float32 rounding
    error = np.abs(result.mean_update - _plain_weighted_mean(survivors))
    assert error.max() <= bound
    assert secure.last_round is not None and set(secure.last_round.survivors) == {
        u.client_id for u in survivors
    }


def test_a_round_with_fewer_survivors_than_the_threshold_is_aborted_and_reveals_nothing() -> None:
    updates = _updates(6, 20)
    secure = SecureSum(
        SecAggParameters(num_neighbours=4, threshold=4),
        clip_norm=10.0,
        noise=NoiseSource.for_testing(1),
        max_weight=64,
    )
    secure.start(20, [u.client_id for u in updates])
    for update in updates[:3]:
        secure.add(update)
    with pytest.raises(RoundAborted, match="secure aggregation aborted"):
        secure.result()


def test_stages_that_read_individual_updates_cannot_precede_a_secure_aggregator() -> None:
    secure = SecureSum(SecAggParameters(), clip_norm=1.0, noise=NoiseSource.secure())
    with pytest.raises(PipelineError, match=r"validate must see each client's update.*secure_sum"):
        Pipeline([ValidateUpdate(10)], secure)
    server_clip = ClipUpdate(ClipNorm(1.0), placement="server")
    with pytest.raises(PipelineError, match="clip on the client"):
        Pipeline([server_clip], secure)
    Pipeline([ClipUpdate(ClipNorm(1.0), placement="client")], secure)  # client-side clipping fits


def test_distributed_dp_mean_carries_the_survivors_noise_over_the_fixed_denominator() -> None:
    cohort, survivors, threshold, size = 6, 5, 4, 4096
    mechanism = DistributedDiscreteGaussian.calibrated(
        clip_norm=1.0,
        noise_multiplier=2.0,
        dimension=size,
        cohort_size=cohort,
        min_survivors=threshold,
    )
    secure = SecureSum(
        SecAggParameters(num_neighbours=4, threshold=threshold),
        clip_norm=1.0,
        noise=NoiseSource.for_testing(2),
        distributed_dp=mechanism,
    )
    updates = [
        ClientUpdate(0, f"c{index}", np.full(size, 0.01, np.float32), num_examples=1)
        for index in range(cohort)
    ]
    secure.start(size, [u.client_id for u in updates])
    for update in updates[:survivors]:
        secure.add(update)
    result = secure.result()

    assert result.total_weight == cohort  # DP-FedAvg's fixed denominator
    noise = result.mean_update.astype(np.float64) * cohort - survivors * 0.01
    expected_std = mechanism.granularity * math.sqrt(survivors * mechanism.local_variance)
    assert expected_std == pytest.approx(2.0 * math.sqrt(survivors / threshold), rel=1e-6)
    # The sample std of 4096 draws is within 5% of the true std except w.p. ~1e-5.
    assert noise.std() == pytest.approx(expected_std, rel=0.05)


def test_homomorphic_mean_equals_the_plain_weighted_mean_within_ckks_precision() -> None:
    updates = _updates(3, 5000)
    he = HomomorphicMean()
    assert not he.server.public.context.is_private()
    he.start(5000, [u.client_id for u in updates])
    for update in updates:
        he.add(update)
    result = he.result()
    assert result.total_weight == pytest.approx(sum(u.num_examples for u in updates), abs=1e-3)
    np.testing.assert_allclose(result.mean_update, _plain_weighted_mean(updates), atol=1e-4)


def test_a_homomorphic_round_of_one_update_is_aborted_rather_than_decrypting_it() -> None:
    he = HomomorphicMean()
    update = _updates(1, 10)[0]
    he.start(10, [update.client_id])
    he.add(update)
    with pytest.raises(RoundAborted, match="at least 2"):
        he.result()


@pytest.mark.parametrize(
    ("secure", "sampling", "message"),
    [
        ({"kind": "he"}, {"scheme": "uniform"}, "set secure.kind to 'secagg'"),
        ({"kind": "secagg"}, {"scheme": "poisson"}, "sampling.scheme must be 'uniform'"),
    ],
)
def test_user_level_dp_under_secure_aggregation_needs_a_fitting_configuration(
    secure: dict[str, str], sampling: dict[str, str], message: str
) -> None:
    values = {
        "privacy": {"mechanism": "user_level", "epsilon": 4.0},
        "secure": secure,
        "sampling": sampling,
    }
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)
