"""Specifications of the exact discrete samplers (Canonne, Kamath & Steinke 2020).

Each sampler's empirical distribution is checked against the exact pmf,
computed here by hand from its definition: a chi-square goodness-of-fit test,
the mean, and the variance against the pmf's own variance. Sources are
test-mode with fixed seeds, so the checks are deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from fedwarden.core.errors import FedwardenError
from fedwarden.privacy.discrete import (
    bernoulli_exp,
    discrete_gaussian,
    discrete_gaussian_vector,
    discrete_laplace,
    discrete_laplace_vector,
)
from fedwarden.privacy.randomness import NoiseSource, PrivacyNoiseError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def discrete_gaussian_pmf(sigma_squared: float, support: IntArray) -> FloatArray:
    """exp(-x**2 / (2 sigma**2)), normalised over ``support`` (wide enough to hold all the mass)."""
    weights = np.exp(-(support.astype(np.float64) ** 2) / (2 * sigma_squared))
    return weights / weights.sum()


def discrete_laplace_pmf(scale: float, support: IntArray) -> FloatArray:
    """(1 - e^(-1/t)) / (1 + e^(-1/t)) * e^(-|x|/t), the closed form of the discrete Laplace."""
    decay = math.exp(-1 / scale)
    return (1 - decay) / (1 + decay) * np.exp(-np.abs(support) / scale)


def goodness_of_fit(draws: IntArray, support: IntArray, pmf: FloatArray) -> float:
    """Chi-square p-value of ``draws`` against ``pmf``, tails pooled until each bin expects >= 5."""
    expected = pmf * draws.size
    central = np.flatnonzero(expected >= 5)
    low, high = support[central[0]], support[central[-1]]
    observed = np.concatenate(
        [
            [np.sum(draws < low)],
            np.bincount(draws[(draws >= low) & (draws <= high)] - low, minlength=high - low + 1),
            [np.sum(draws > high)],
        ]
    )
    binned = np.concatenate(
        [[expected[support < low].sum()], expected[central], [expected[support > high].sum()]]
    )
    return float(stats.chisquare(observed, binned * draws.size / binned.sum()).pvalue)


@dataclass(frozen=True)
class Case:
    """One sampler at one parameter, with the exact pmf it must follow."""

    name: str
    draw: Callable[[NoiseSource, int], IntArray]
    pmf: Callable[[IntArray], FloatArray]
    width: float  # a scale of the distribution, for choosing the support
    draws: int = 20_000

    def sample(self, seed: int) -> IntArray:
        return self.draw(NoiseSource.for_testing(seed), self.draws)


def scalar(sampler: Callable[[Fraction, NoiseSource], int], parameter: Fraction) -> Callable:
    return lambda source, n: np.array([sampler(parameter, source) for _ in range(n)])


def vector(
    sampler: Callable[[Fraction, int, NoiseSource], IntArray], parameter: Fraction
) -> Callable:
    return lambda source, n: sampler(parameter, n, source)


SIGMA_SQUARED = Fraction(25, 4)  # sigma = 2.5
NEAR_ONE = Fraction(2**30, 2**30 - 1)  # sigma**2 just above 1: squares beyond int64 for |y| >= 2
HUGE_DENOMINATOR = Fraction(10**19 + 1, 10**18)  # too large for int64: the scalar fallback
SCALE = Fraction(5, 2)  # t = 5, s = 2: exercises the division by s
HUGE_SCALE = Fraction(2**64, 2**62 + 1)  # t beyond int64: the scalar fallback

CASES = [
    Case(
        "gaussian scalar",
        scalar(discrete_gaussian, SIGMA_SQUARED),
        lambda x: discrete_gaussian_pmf(6.25, x),
        2.5,
    ),
    Case(
        "gaussian vector",
        vector(discrete_gaussian_vector, SIGMA_SQUARED),
        lambda x: discrete_gaussian_pmf(6.25, x),
        2.5,
    ),
    Case(
        "gaussian vector, squares beyond int64",
        vector(discrete_gaussian_vector, NEAR_ONE),
        lambda x: discrete_gaussian_pmf(float(NEAR_ONE), x),
        1.0,
    ),
    Case(
        "gaussian vector, scalar fallback",
        vector(discrete_gaussian_vector, HUGE_DENOMINATOR),
        lambda x: discrete_gaussian_pmf(float(HUGE_DENOMINATOR), x),
        3.2,
        draws=5_000,
    ),
    Case(
        "laplace scalar",
        scalar(discrete_laplace, SCALE),
        lambda x: discrete_laplace_pmf(2.5, x),
        2.5,
    ),
    Case(
        "laplace vector",
        vector(discrete_laplace_vector, SCALE),
        lambda x: discrete_laplace_pmf(2.5, x),
        2.5,
    ),
    Case(
        "laplace vector, scalar fallback",
        vector(discrete_laplace_vector, HUGE_SCALE),
        lambda x: discrete_laplace_pmf(float(HUGE_SCALE), x),
        4.0,
        draws=5_000,
    ),
]


def support_of(case: Case) -> IntArray:
    reach = int(60 * case.width) + 10
    return np.arange(-reach, reach + 1)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_sampler_follows_its_exact_pmf(case: Case) -> None:
    draws = case.sample(seed=2020)
    support = support_of(case)
    pmf = case.pmf(support)
    values = support.astype(np.float64)
    mean, variance = float(values @ pmf), float(values**2 @ pmf)
    fourth_moment = float(values**4 @ pmf)
    assert draws.dtype == np.int64 and draws.shape == (case.draws,)
    assert goodness_of_fit(draws, support, pmf) > 1e-3
    assert abs(draws.mean() - mean) <= 5 * math.sqrt(variance / draws.size)
    variance_error = math.sqrt((fourth_moment - variance**2) / draws.size)
    assert abs(draws.var() - variance) <= 5 * variance_error


@pytest.mark.parametrize(
    ("case", "too_wide"),
    [
        (CASES[1], lambda x: discrete_gaussian_pmf(6.25 * 1.15**2, x)),
        (CASES[5], lambda x: discrete_laplace_pmf(2.5 * 1.15, x)),
    ],
    ids=["gaussian", "laplace"],
)
def test_goodness_of_fit_rejects_a_sampler_whose_scale_is_15_percent_off(
    case: Case, too_wide: Callable[[IntArray], FloatArray]
) -> None:
    draws = case.sample(seed=2020)
    support = support_of(case)
    assert goodness_of_fit(draws, support, too_wide(support)) < 1e-3


def test_laplace_pmf_oracle_sums_to_one_and_has_the_closed_form_variance() -> None:
    support = np.arange(-400, 401)
    pmf = discrete_laplace_pmf(2.5, support)
    decay = math.exp(-1 / 2.5)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(support.astype(float) ** 2 @ pmf) == pytest.approx(2 * decay / (1 - decay) ** 2)


@pytest.mark.parametrize("gamma", [Fraction(1, 10), Fraction(1), Fraction(3)])
def test_bernoulli_exp_is_heads_with_probability_exp_minus_gamma(gamma: Fraction) -> None:
    source = NoiseSource.for_testing(gamma.numerator)
    draws = 20_000
    heads = sum(bernoulli_exp(gamma, source) for _ in range(draws))
    probability = math.exp(-gamma)
    assert abs(heads / draws - probability) <= 5 * math.sqrt(
        probability * (1 - probability) / draws
    )


def test_bernoulli_exp_of_zero_is_always_heads() -> None:
    source = NoiseSource.for_testing(0)
    assert all(bernoulli_exp(Fraction(0), source) for _ in range(200))


def test_vector_samplers_take_all_their_randomness_from_the_source() -> None:
    for sampler, parameter in [
        (discrete_gaussian_vector, Fraction(10**6)),
        (discrete_laplace_vector, Fraction(7, 3)),
    ]:
        first = sampler(parameter, 5_000, NoiseSource.for_testing(9))
        second = sampler(parameter, 5_000, NoiseSource.for_testing(9))
        np.testing.assert_array_equal(first, second)
        other_seed = sampler(parameter, 5_000, NoiseSource.for_testing(10))
        assert not np.array_equal(first, other_seed)


def test_large_sigma_vector_has_the_requested_variance() -> None:
    draws = discrete_gaussian_vector(Fraction(1000**2), 50_000, NoiseSource.for_testing(1000))
    assert abs(draws.var() / 1000**2 - 1) <= 5 * math.sqrt(2 / draws.size)
    assert abs(draws.mean()) <= 5 * 1000 / math.sqrt(draws.size)


def test_empty_vectors() -> None:
    source = NoiseSource.for_testing(0)
    for sample in (
        discrete_gaussian_vector(SIGMA_SQUARED, 0, source),
        discrete_laplace_vector(SCALE, 0, source),
    ):
        assert sample.dtype == np.int64 and sample.shape == (0,)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: discrete_gaussian(2.5, s), "sigma_squared must be an exact rational"),  # type: ignore[arg-type]
        (lambda s: discrete_gaussian(Fraction(0), s), "sigma_squared must be > 0"),
        (lambda s: discrete_laplace(Fraction(-1), s), "scale must be > 0"),
        (lambda s: bernoulli_exp(Fraction(-1, 2), s), "gamma must be >= 0"),
        (
            lambda s: discrete_gaussian_vector(SIGMA_SQUARED, -1, s),
            "size must be a non-negative int",
        ),
        (lambda s: discrete_laplace_vector(0.5, 3, s), "scale must be an exact rational"),  # type: ignore[arg-type]
    ],
)
def test_bad_parameters_are_refused_with_what_to_do(
    call: Callable[[NoiseSource], object], message: str
) -> None:
    with pytest.raises(PrivacyNoiseError, match=message) as caught:
        call(NoiseSource.for_testing(0))
    assert isinstance(caught.value, FedwardenError)
