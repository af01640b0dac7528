"""Specifications of the partitions that deal a centralized data set out to clients."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedwarden.core.config import PartitionConfig
from fedwarden.core.errors import DataError
from fedwarden.data import dirichlet, iid, partition, power_law, shards
from fedwarden.data.dataset import Array
from fedwarden.data.partitioners import IndexArray

Labels = Array


def balanced_labels(num_classes: int, per_class: int) -> Labels:
    """``per_class`` examples of each class, classes in blocks."""
    return np.repeat(np.arange(num_classes, dtype=np.int64), per_class)


def assert_disjoint_cover(parts: list[IndexArray], num_examples: int) -> None:
    """Every example index appears in exactly one part."""
    assigned = np.concatenate(parts)
    assert len(assigned) == num_examples
    assert np.array_equal(np.sort(assigned), np.arange(num_examples))


Scheme = Callable[[Labels, int, np.random.Generator], list[IndexArray]]

SCHEMES: dict[str, Scheme] = {
    "iid": lambda labels, clients, rng: iid(len(labels), clients, rng),
    "dirichlet": lambda labels, clients, rng: dirichlet(labels, clients, 0.3, rng, 0),
    "shards": lambda labels, clients, rng: shards(labels, clients, 1, rng),
    "power_law": lambda labels, clients, rng: power_law(len(labels), clients, 1.2, rng, 0),
}


def test_iid_assigns_every_example_to_exactly_one_client() -> None:
    parts = iid(1003, 10, np.random.default_rng(0))
    assert_disjoint_cover(parts, 1003)


def test_iid_client_sizes_differ_by_at_most_one() -> None:
    sizes = [len(part) for part in iid(1003, 10, np.random.default_rng(0))]
    assert max(sizes) - min(sizes) <= 1


def test_every_client_indices_are_ascending() -> None:
    labels = balanced_labels(10, 50)
    for scheme in SCHEMES.values():
        for part in scheme(labels, 7, np.random.default_rng(1)):
            assert np.all(np.diff(part) > 0)


def test_dirichlet_assigns_every_example_to_exactly_one_client() -> None:
    labels = balanced_labels(10, 100)
    parts = dirichlet(labels, 20, 0.5, np.random.default_rng(0), min_size=10)
    assert_disjoint_cover(parts, len(labels))


def test_dirichlet_gives_every_client_at_least_min_size() -> None:
    labels = balanced_labels(10, 100)
    parts = dirichlet(labels, 20, 0.5, np.random.default_rng(0), min_size=25)
    assert min(len(part) for part in parts) >= 25


def test_dirichlet_with_small_alpha_concentrates_each_class_on_few_clients() -> None:
    labels = balanced_labels(10, 1000)
    parts = dirichlet(labels, 10, 0.05, np.random.default_rng(0), min_size=1)
    largest_share = [
        max(np.count_nonzero(labels[part] == label) for part in parts) / 1000 for label in range(10)
    ]
    assert np.mean(largest_share) > 0.6


def test_dirichlet_gives_up_with_advice_when_min_size_is_unreachable() -> None:
    labels = balanced_labels(2, 50)
    with pytest.raises(DataError, match=r"min_client_size.*alpha"):
        dirichlet(labels, 10, 0.01, np.random.default_rng(0), min_size=10)


def test_dirichlet_refuses_min_size_beyond_the_number_of_examples() -> None:
    with pytest.raises(DataError, match="need 110, but there are only 100"):
        dirichlet(balanced_labels(2, 50), 11, 1.0, np.random.default_rng(0), min_size=10)


def test_shards_give_each_client_at_most_shards_per_client_labels() -> None:
    labels = balanced_labels(10, 100)
    parts = shards(labels, 50, 2, np.random.default_rng(0))
    assert_disjoint_cover(parts, len(labels))
    assert all(len(part) == 20 for part in parts)
    assert max(len(np.unique(labels[part])) for part in parts) <= 2


def test_shards_refuse_more_shards_than_examples() -> None:
    with pytest.raises(DataError, match="shards_per_client"):
        shards(balanced_labels(2, 10), 8, 3, np.random.default_rng(0))


def test_power_law_gives_every_client_at_least_min_size() -> None:
    parts = power_law(5000, 50, 1.0, np.random.default_rng(0), min_size=20)
    assert_disjoint_cover(parts, 5000)
    assert min(len(part) for part in parts) >= 20


def test_power_law_sizes_are_heavy_tailed_and_labels_iid() -> None:
    labels = balanced_labels(2, 10_000)
    parts = power_law(len(labels), 100, 1.0, np.random.default_rng(0), min_size=10)
    sizes = np.array([len(part) for part in parts])
    assert sizes.max() > 10 * np.median(sizes)
    largest = parts[int(np.argmax(sizes))]
    assert abs(np.count_nonzero(labels[largest] == 1) / len(largest) - 0.5) < 0.05


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_more_clients_than_examples_is_refused(scheme: str) -> None:
    with pytest.raises(DataError, match="lower num_clients"):
        SCHEMES[scheme](balanced_labels(2, 3), 7, np.random.default_rng(0))


@pytest.mark.parametrize("scheme", ["dirichlet", "shards"])
def test_label_schemes_refuse_float_labels(scheme: str) -> None:
    targets = np.linspace(0.0, 1.0, 20)
    with pytest.raises(DataError, match="integer classes"):
        SCHEMES[scheme](targets, 2, np.random.default_rng(0))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_partition_is_deterministic_in_the_generator(scheme: str) -> None:
    labels = balanced_labels(5, 40)
    first = SCHEMES[scheme](labels, 6, np.random.default_rng(3))
    second = SCHEMES[scheme](labels, 6, np.random.default_rng(3))
    other = SCHEMES[scheme](labels, 6, np.random.default_rng(4))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (PartitionConfig(scheme="iid"), lambda labels, rng: iid(len(labels), 5, rng)),
        (
            PartitionConfig(scheme="dirichlet", alpha=0.7, min_client_size=3),
            lambda labels, rng: dirichlet(labels, 5, 0.7, rng, 3),
        ),
        (
            PartitionConfig(scheme="shards", shards_per_client=3),
            lambda labels, rng: shards(labels, 5, 3, rng),
        ),
        (
            PartitionConfig(scheme="power_law", power_law_exponent=2.0, min_client_size=4),
            lambda labels, rng: power_law(len(labels), 5, 2.0, rng, 4),
        ),
    ],
)
def test_partition_dispatches_on_the_configured_scheme(
    config: PartitionConfig, expected: Callable[[Labels, np.random.Generator], list[IndexArray]]
) -> None:
    labels = balanced_labels(4, 30)
    parts = partition(labels, config, 5, np.random.default_rng(9))
    oracle = expected(labels, np.random.default_rng(9))
    assert all(np.array_equal(a, b) for a, b in zip(parts, oracle, strict=True))


@settings(max_examples=60, deadline=None)
@given(
    scheme=st.sampled_from(sorted(SCHEMES)),
    num_classes=st.integers(1, 6),
    per_class=st.integers(1, 40),
    client_share=st.floats(0.01, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_partition_is_a_disjoint_cover(
    scheme: str, num_classes: int, per_class: int, client_share: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).permutation(balanced_labels(num_classes, per_class))
    num_clients = max(1, int(client_share * len(labels)))
    parts = SCHEMES[scheme](labels, num_clients, np.random.default_rng(seed))
    assert len(parts) == num_clients
    assert_disjoint_cover(parts, len(labels))
