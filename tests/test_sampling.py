"""Specifications of the cohort samplers: uniform, Poisson and stratified."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedwarden.core.errors import ConfigError
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.strategies import PoissonSampler, StratifiedSampler, UniformSampler

POPULATION = [f"client-{i:02d}" for i in range(20)]


def inclusion_frequencies(
    sampler: UniformSampler | PoissonSampler, population: list[str], draws: int, seed: int
) -> tuple[np.ndarray, list[int]]:
    """How often each client was drawn, as a fraction of ``draws``, and every cohort's size."""
    rng = NoiseSource.seeded(seed)
    counts: Counter[str] = Counter()
    sizes = []
    for _ in range(draws):
        cohort = sampler.sample(population, rng)
        counts.update(cohort)
        sizes.append(len(cohort))
    return np.array([counts[cid] / draws for cid in population]), sizes


def binomial_tolerance(probability: float, draws: int, sigmas: float = 5.0) -> float:
    """``sigmas`` standard deviations of a Binomial(draws, p) frequency."""
    return sigmas * float(np.sqrt(probability * (1 - probability) / draws))


def test_uniform_cohort_has_cohort_size_distinct_clients_of_the_population() -> None:
    rng = NoiseSource.seeded(0)
    for _ in range(50):
        cohort = UniformSampler(7).sample(POPULATION, rng)
        assert len(cohort) == 7
        assert len(set(cohort)) == 7
        assert set(cohort) <= set(POPULATION)


def test_uniform_cohort_is_in_population_order() -> None:
    population = [f"z{i}" for i in range(30, 0, -1)]
    rng = NoiseSource.seeded(1)
    for _ in range(20):
        cohort = UniformSampler(10).sample(population, rng)
        positions = [population.index(cid) for cid in cohort]
        assert positions == sorted(positions)


@pytest.mark.parametrize("cohort_size", [20, 25])
def test_uniform_takes_everyone_when_the_population_is_not_larger_than_the_cohort(
    cohort_size: int,
) -> None:
    assert UniformSampler(cohort_size).sample(POPULATION, NoiseSource.seeded(0)) == POPULATION


def test_uniform_of_an_empty_population_is_an_empty_cohort() -> None:
    assert UniformSampler(5).sample([], NoiseSource.seeded(0)) == []


def test_uniform_is_deterministic_for_a_seeded_stream() -> None:
    def cohorts(seed: int) -> list[list[str]]:
        rng = NoiseSource.seeded(seed)
        return [UniformSampler(5).sample(POPULATION, rng) for _ in range(10)]

    assert cohorts(42) == cohorts(42)
    assert cohorts(42) != cohorts(43)


def test_uniform_includes_each_client_with_frequency_cohort_over_population() -> None:
    draws = 4000
    frequencies, sizes = inclusion_frequencies(UniformSampler(5), POPULATION, draws, seed=7)
    expected = 5 / len(POPULATION)
    assert set(sizes) == {5}
    np.testing.assert_allclose(frequencies, expected, atol=binomial_tolerance(expected, draws))


def test_poisson_includes_each_client_with_frequency_rate_and_cohort_sizes_vary() -> None:
    population = [f"c{i}" for i in range(50)]
    rate, draws = 0.2, 3000
    frequencies, sizes = inclusion_frequencies(PoissonSampler(rate), population, draws, seed=11)

    np.testing.assert_allclose(frequencies, rate, atol=binomial_tolerance(rate, draws))
    # Cohort sizes are Binomial(50, 0.2): mean 10, variance 8.
    assert len(set(sizes)) > 5
    assert np.mean(sizes) == pytest.approx(10.0, abs=5 * np.sqrt(8 / draws))
    assert np.var(sizes) == pytest.approx(8.0, rel=0.15)


def test_poisson_cohort_is_distinct_and_in_population_order() -> None:
    population = [f"z{i}" for i in range(40, 0, -1)]
    rng = NoiseSource.seeded(3)
    for _ in range(20):
        cohort = PoissonSampler(0.5).sample(population, rng)
        positions = [population.index(cid) for cid in cohort]
        assert positions == sorted(set(positions))


def test_poisson_is_deterministic_for_a_seeded_stream() -> None:
    def cohorts(seed: int) -> list[list[str]]:
        rng = NoiseSource.seeded(seed)
        return [PoissonSampler(0.3).sample(POPULATION, rng) for _ in range(10)]

    assert cohorts(5) == cohorts(5)


def strata_of(sizes: dict[str, int]) -> tuple[list[str], dict[str, str]]:
    """A population whose strata have the given sizes, interleaved, and each client's stratum."""
    labels = [name for name, size in sizes.items() for _ in range(size)]
    order = np.random.default_rng(0).permutation(len(labels))
    population = [f"client-{i:03d}" for i in range(len(labels))]
    return population, {population[i]: labels[j] for i, j in enumerate(order)}


def seats(cohort: list[str], strata: dict[str, str]) -> dict[str, int]:
    return dict(Counter(strata[cid] for cid in cohort))


def test_stratified_allocates_seats_in_proportion_to_the_population() -> None:
    population, strata = strata_of({"urban": 70, "rural": 30})
    sampler = StratifiedSampler(10, "region", strata)
    rng = NoiseSource.seeded(0)
    for _ in range(20):
        cohort = sampler.sample(population, rng)
        assert seats(cohort, strata) == {"urban": 7, "rural": 3}
        assert len(set(cohort)) == 10


def test_stratified_gives_leftover_seats_by_largest_remainder() -> None:
    # Quotas 4.3, 4.5, 1.2: floors 4, 4, 1 leave one seat, which goes to the largest remainder.
    population, strata = strata_of({"a": 43, "b": 45, "c": 12})
    cohort = StratifiedSampler(10, "region", strata).sample(population, NoiseSource.seeded(0))
    assert seats(cohort, strata) == {"a": 4, "b": 5, "c": 1}


def test_stratified_cohort_is_in_population_order() -> None:
    population, strata = strata_of({"urban": 70, "rural": 30})
    cohort = StratifiedSampler(10, "region", strata).sample(population, NoiseSource.seeded(2))
    positions = [population.index(cid) for cid in cohort]
    assert positions == sorted(positions)


def test_stratified_draws_uniformly_within_a_stratum() -> None:
    population, strata = strata_of({"urban": 16, "rural": 4})
    sampler = StratifiedSampler(5, "region", strata)
    draws = 3000
    rng = NoiseSource.seeded(9)
    counts = Counter(cid for _ in range(draws) for cid in sampler.sample(population, rng))
    # 5 seats split 4 / 1: an urban client sits with probability 4/16, a rural one 1/4.
    for cid in population:
        assert counts[cid] / draws == pytest.approx(0.25, abs=binomial_tolerance(0.25, draws))


def test_stratified_refuses_clients_without_the_attribute_and_names_it() -> None:
    population, strata = strata_of({"urban": 7, "rural": 3})
    del strata[population[4]]
    sampler = StratifiedSampler(5, "region", strata)
    with pytest.raises(ConfigError, match="'region'") as caught:
        sampler.sample(population, NoiseSource.seeded(0))
    assert population[4] in str(caught.value)


@pytest.mark.parametrize("sampler", [UniformSampler(5), PoissonSampler(0.3)])
def test_a_secure_source_draws_cohorts_no_seed_predicts(
    sampler: UniformSampler | PoissonSampler,
) -> None:
    """What a DP run passes: the same call twice gives different cohorts, unlike any seed."""
    first = [sampler.sample(POPULATION, NoiseSource.secure()) for _ in range(10)]
    second = [sampler.sample(POPULATION, NoiseSource.secure()) for _ in range(10)]
    assert first != second
