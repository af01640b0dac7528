"""Distributed discrete Gaussian (Kairouz, Liu & Steinke 2021): rotation, rounding, noise, DP."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.accounting import Neighboring, compute_spend
from fedwarden.privacy.clipping import clip_to_norm
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.secure.distributed_dp import (
    MAX_LOCAL_VARIANCE,
    DistributedDiscreteGaussian,
    conditional_round,
    hadamard_transform,
    local_noise_variance,
    rotate,
    rounded_norm_bound,
    unrotate,
)
from fedwarden.secure.encoding import RingEncodingError, stochastic_round

SEED = bytes(range(32))
OTHER_SEED = bytes(range(1, 33))
RELATIONS = {
    "add_remove": rdp_privacy_accountant.NeighborRel.ADD_OR_REMOVE_ONE,
    "replace_one": rdp_privacy_accountant.NeighborRel.REPLACE_ONE,
}


def ring_sum(encodings: list[np.ndarray], modulus_bits: int) -> np.ndarray:
    """The exact sum mod 2^b that secure aggregation hands back."""
    total = np.zeros_like(encodings[0])
    for encoding in encodings:
        total += encoding
    return total & np.uint64((1 << modulus_bits) - 1)


@pytest.mark.parametrize("size", [1, 2, 4, 8, 16, 64])
def test_fast_transform_is_the_sylvester_hadamard_matrix(size: int) -> None:
    values = np.random.default_rng(size).normal(size=size)

    np.testing.assert_allclose(
        hadamard_transform(values), scipy.linalg.hadamard(size) @ values, rtol=0, atol=1e-12
    )


@settings(max_examples=25, deadline=None)
@given(log_size=st.integers(0, 12), seed=st.binary(min_size=32, max_size=32))
def test_rotation_is_orthogonal_and_inverted_exactly(log_size: int, seed: bytes) -> None:
    values = np.random.default_rng(log_size).normal(size=1 << log_size)

    rotated = rotate(values, seed)

    norm = float(np.linalg.norm(values))
    assert float(np.linalg.norm(rotated)) == pytest.approx(norm, rel=1e-12)
    np.testing.assert_allclose(unrotate(rotated, seed), values, rtol=0, atol=1e-12 * norm)


def test_rotation_is_fixed_by_the_public_seed() -> None:
    values = np.random.default_rng(0).normal(size=256)

    np.testing.assert_array_equal(rotate(values, SEED), rotate(values, SEED))
    assert not np.allclose(rotate(values, SEED), rotate(values, OTHER_SEED))


def test_rotation_flattens_a_spike() -> None:
    spike = np.zeros(1024)
    spike[3] = 1.0

    rotated = rotate(spike, SEED)

    np.testing.assert_allclose(np.abs(rotated), 1 / math.sqrt(1024), rtol=1e-12)


def test_norm_bound_is_the_papers_formula() -> None:
    c, d, beta = 100.0, 64, math.exp(-0.5)
    likely = c**2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)

    assert rounded_norm_bound(c, d, beta) == pytest.approx(math.sqrt(likely), rel=1e-15)
    assert rounded_norm_bound(0.0, d, 1e-300) == pytest.approx(math.sqrt(d), rel=1e-15)
    assert rounded_norm_bound(c, d, 0.0) == c + math.sqrt(d)


def test_conditional_rounding_never_exceeds_its_bound() -> None:
    # 64 coordinates at 0.5: plain stochastic rounding gives Binomial(64, 1/2) ones, so a
    # squared norm above 30 in about 64% of draws; conditional rounding must redraw those.
    values = np.full(64, 0.5)
    source = NoiseSource.for_testing(11)
    plain = [int(np.sum(stochastic_round(values, source) ** 2)) for _ in range(200)]
    conditioned = [
        int(np.sum(conditional_round(values, math.sqrt(30), source, 1000) ** 2)) for _ in range(200)
    ]

    assert max(plain) > 30
    assert max(conditioned) <= 30
    assert len(set(conditioned)) > 3  # draws below the bound keep their spread


def test_conditional_rounding_gives_up_on_an_unreachable_bound() -> None:
    with pytest.raises(RingEncodingError, match="no rounding of L2 norm <= 1"):
        conditional_round(np.full(64, 0.5), 1.0, NoiseSource.for_testing(1), 20)


@pytest.mark.parametrize("survivors", [3, 6])
def test_aggregated_noise_has_the_calibrated_variance(survivors: int) -> None:
    # Zero updates round to zero, so the decoded sum is the noise alone, and the rotation is
    # orthogonal: ||decoded||^2 = gamma^2 ||sum of shares||^2 exactly. The D summed coordinates
    # are independent with variance m sigma^2 (sigma = 32768: Gaussian to any test's eye), so
    # D * mean(decoded^2) / target is chi-square with D degrees of freedom; the band below
    # holds with probability 1 - 2e-6.
    mechanism = DistributedDiscreteGaussian.calibrated(
        clip_norm=2.0, noise_multiplier=0.8, dimension=4096, cohort_size=6, min_survivors=3
    )
    source = NoiseSource.for_testing(survivors)
    zero = np.zeros(4096, dtype=np.float32)
    encodings = [mechanism.encode(zero, SEED, source) for _ in range(survivors)]

    decoded = mechanism.decode(ring_sum(encodings, 32), SEED)

    target = (0.8 * 2.0) ** 2 * survivors / 3  # z^2 C^2 at t = 3 survivors, more with more
    statistic = 4096 * float(np.mean(decoded**2)) / target
    assert scipy.stats.chi2.ppf(1e-6, 4096) <= statistic <= scipy.stats.chi2.ppf(1 - 1e-6, 4096)
    assert abs(float(np.mean(decoded))) <= 5 * math.sqrt(target / 4096)


def test_decoded_sum_is_the_clipped_sum_up_to_rounding_and_noise() -> None:
    # Rounding moves each client's rotated vector by less than sqrt(D) in L2; the noise sum of m
    # shares has squared norm m sigma^2 D on average and below 2 m sigma^2 D except with
    # probability exp(-D/8) < 1e-13 (chi-square tail, D = 256).
    mechanism = DistributedDiscreteGaussian(
        clip_norm=1.0,
        granularity=1e-6,
        local_variance=4,
        dimension=200,
        cohort_size=5,
        min_survivors=2,
    )
    generator = np.random.default_rng(5)
    updates = [(generator.normal(size=200) * scale).astype(np.float32) for scale in (0.01, 1, 3)]
    source = NoiseSource.for_testing(5)
    encodings = [mechanism.encode(update, SEED, source) for update in updates]

    decoded = mechanism.decode(ring_sum(encodings, 32), SEED)

    exact = sum(clip_to_norm(update, 1.0)[0].astype(np.float64) for update in updates)
    padded = mechanism.padded_dimension
    bound = mechanism.granularity * (3 * math.sqrt(padded) + math.sqrt(2 * 3 * 4 * padded))
    assert float(np.linalg.norm(decoded - exact)) <= bound
    assert float(np.linalg.norm(mechanism.decode(ring_sum(encodings, 32), OTHER_SEED) - exact)) > 1


def test_calibration_hits_the_target_noise() -> None:
    mechanism = DistributedDiscreteGaussian.calibrated(
        clip_norm=0.5, noise_multiplier=1.3, dimension=10_000, cohort_size=100, min_survivors=70
    )

    assert mechanism.local_variance == MAX_LOCAL_VARIANCE  # 32 bits leave room for the finest
    assert mechanism.central_noise_std == pytest.approx(1.3 * 0.5, rel=1e-12)
    assert 70 * mechanism.local_variance * mechanism.granularity**2 == pytest.approx(
        (1.3 * 0.5) ** 2, rel=1e-12
    )


def test_calibration_picks_the_finest_grid_that_cannot_wrap() -> None:
    mechanism = DistributedDiscreteGaussian.calibrated(
        clip_norm=1.0,
        noise_multiplier=1.0,
        dimension=4096,
        cohort_size=50,
        min_survivors=20,
        modulus_bits=20,
    )
    finer = mechanism.local_variance + 1

    assert mechanism.local_variance < MAX_LOCAL_VARIANCE
    assert mechanism.largest_sum < 2**19
    with pytest.raises(ConfigError, match="could wrap"):
        dataclasses.replace(
            mechanism, local_variance=finer, granularity=1.0 / math.sqrt(20 * finer)
        )


@settings(max_examples=25, deadline=None)
@given(
    noise_multiplier=st.floats(0.1, 10),
    clip_norm=st.floats(1e-3, 1e3),
    survivors=st.integers(1, 1000),
    cells=st.floats(10, 1e4),
)
def test_local_noise_variance_is_the_smallest_that_reaches_the_target(
    noise_multiplier: float, clip_norm: float, survivors: int, cells: float
) -> None:
    granularity = noise_multiplier * clip_norm / cells  # the target std is `cells` grid steps
    target = (noise_multiplier * clip_norm) ** 2

    variance = local_noise_variance(noise_multiplier, clip_norm, granularity, survivors)

    assert survivors * variance * granularity**2 >= target * (1 - 1e-12)
    assert variance == 1 or survivors * (variance - 1) * granularity**2 < target * (1 + 1e-12)


def test_a_configuration_that_could_wrap_is_refused_with_its_numbers() -> None:
    with pytest.raises(ConfigError) as refused:
        DistributedDiscreteGaussian(
            clip_norm=1.0,
            granularity=1e-3,
            local_variance=1,
            dimension=16,
            cohort_size=40,
            min_survivors=10,
            modulus_bits=16,
        )

    message = str(refused.value)
    for part in ("n=40", "C=1.0", "gamma=0.001", "Delta_2=", "2^(b-1)=32768", "(b=16)"):
        assert part in message
    with pytest.raises(ConfigError, match="could wrap"):
        DistributedDiscreteGaussian.calibrated(1.0, 1.0, 4096, 1000, 500, modulus_bits=12)


def test_rho_is_the_gaussian_value_at_the_threshold_when_tau_vanishes() -> None:
    # sigma^2 = 2^20: tau = 10 sum exp(-2 pi^2 sigma^2 k / (k + 1)) underflows to 0, and KLS
    # Proposition 14 reduces to rho = Delta_2^2 / (2 t sigma^2) (doubled sensitivity: 4x).
    mechanism = DistributedDiscreteGaussian(
        clip_norm=1.0,
        granularity=1e-4,
        local_variance=1 << 20,
        dimension=1000,
        cohort_size=10,
        min_survivors=4,
    )
    expected = mechanism.norm_bound**2 / (2 * 4 * (1 << 20))

    assert mechanism.tau == 0.0
    assert mechanism.zcdp_rho("add_remove") == pytest.approx(expected, rel=1e-12)
    assert mechanism.zcdp_rho("replace_one") == pytest.approx(4 * expected, rel=1e-12)
    everyone = dataclasses.replace(mechanism, min_survivors=10)
    assert mechanism.zcdp_rho() == pytest.approx(everyone.zcdp_rho() * 10 / 4, rel=1e-12)


def test_rho_carries_the_tau_term_for_small_noise() -> None:
    mechanism = DistributedDiscreteGaussian(
        clip_norm=1.0,
        granularity=0.5,
        local_variance=1,
        dimension=4,
        cohort_size=3,
        min_survivors=3,
    )
    tau = 10 * (math.exp(-(math.pi**2)) + math.exp(-4 * math.pi**2 / 3))
    delta_2 = mechanism.norm_bound
    l2 = delta_2 / math.sqrt(3)
    l1 = min(delta_2**2, 2 * delta_2) / math.sqrt(3)

    assert mechanism.tau == pytest.approx(tau, rel=1e-12)
    expected = min((l2 + 2 * tau) ** 2, l2**2 + 2 * l1 * tau + 4 * tau**2) / 2
    assert mechanism.zcdp_rho() == pytest.approx(expected, rel=1e-12)
    assert mechanism.zcdp_rho() > l2**2 / 2


@pytest.mark.parametrize("neighboring", ["add_remove", "replace_one"])
def test_ledger_epsilon_is_the_rdp_accountants_value_for_the_declared_mechanism(
    neighboring: Neighboring,
) -> None:
    mechanism = DistributedDiscreteGaussian.calibrated(
        clip_norm=1.0, noise_multiplier=1.1, dimension=2**16, cohort_size=100, min_survivors=60
    )
    event = mechanism.dp_event(neighboring)
    oracle = rdp_privacy_accountant.RdpAccountant(neighboring_relation=RELATIONS[neighboring])
    oracle.compose(dp_event.ZCDpEvent(mechanism.zcdp_rho(neighboring)), 20)
    ledger = PrivacyLedger(
        PrivacyBudget(100.0, 1e-5),
        privacy_unit="client",
        neighboring=neighboring,
    )

    for round_index in range(20):
        spend = ledger.charge(round_index, "secure_round", event)

    assert isinstance(event, dp_event.ZCDpEvent)
    assert spend.accountant == "rdp"
    assert spend.epsilon_pld is None
    assert spend.epsilon == pytest.approx(oracle.get_epsilon(1e-5), rel=1e-12)
    gaussian = dp_event.GaussianDpEvent(mechanism.equivalent_noise_multiplier(neighboring))
    as_gaussian = compute_spend([dp_event.SelfComposedDpEvent(gaussian, 20)], 1e-5, neighboring)
    assert as_gaussian.epsilon_rdp == pytest.approx(spend.epsilon, rel=1e-9)
    # Rounding inflates the sensitivity a little above C / gamma, so the guarantee is slightly
    # weaker than that of the continuous Gaussian with the same noise multiplier.
    assert 1.1 * (1 - 1e-3) < mechanism.equivalent_noise_multiplier("add_remove") < 1.1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"local_variance": 0}, "local_variance must be an int in 1..MAX_LOCAL_VARIANCE"),
        ({"local_variance": MAX_LOCAL_VARIANCE + 1}, "local_variance must be an int"),
        ({"min_survivors": 11}, "min_survivors .t=11. cannot exceed cohort_size"),
        ({"beta": 1.0}, "beta must be in"),
        ({"granularity": -1.0}, "granularity must be a positive"),
        ({"dimension": 0}, "dimension must be an int >= 1"),
    ],
)
def test_bad_mechanism_settings_are_refused(change: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {
        "clip_norm": 1.0,
        "granularity": 1e-3,
        "local_variance": 100,
        "dimension": 16,
        "cohort_size": 10,
        "min_survivors": 5,
    }
    arguments.update(change)

    with pytest.raises(ConfigError, match=match):
        DistributedDiscreteGaussian(**arguments)


def test_bad_updates_and_ring_sums_are_refused() -> None:
    mechanism = DistributedDiscreteGaussian(1.0, 1e-3, 100, 16, 10, 5)
    source = NoiseSource.for_testing(9)

    with pytest.raises(RingEncodingError, match="float vector of length 16"):
        mechanism.encode(np.zeros(15, np.float32), SEED, source)
    with pytest.raises(RingEncodingError, match="NaN or infinite"):
        mechanism.encode(np.full(16, np.inf, np.float32), SEED, source)
    with pytest.raises(RingEncodingError, match="padded length D=16"):
        mechanism.decode(np.zeros(8, np.uint64), SEED)
