"""Specifications of the label-heterogeneity measure (chi-square test of client vs label)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from fedwarden.core.config import DataConfig, PartitionConfig
from fedwarden.core.errors import DataError
from fedwarden.data import ClientData, FederatedDataset, label_heterogeneity, load_dataset


def dataset_from_counts(
    counts: list[list[int]], num_classes: int | None = None
) -> FederatedDataset:
    """Clients whose training labels have the given per-class counts (one row per client)."""
    clients = {}
    for index, row in enumerate(counts):
        labels = np.repeat(np.arange(len(row), dtype=np.int64), row)
        clients[f"client_{index}"] = ClientData(
            f"client_{index}",
            x_train=np.zeros((len(labels), 2), dtype=np.float32),
            y_train=labels,
            x_test=np.zeros((0, 2), dtype=np.float32),
            y_test=np.zeros(0, dtype=np.int64),
        )
    return FederatedDataset(
        name="counts",
        clients=clients,
        x_test=np.zeros((0, 2), dtype=np.float32),
        y_test=np.zeros(0, dtype=np.int64),
        num_features=2,
        num_classes=num_classes if num_classes is not None else len(counts[0]),
    )


def test_statistic_is_pearsons_chi_square_of_the_client_by_class_table() -> None:
    observed = np.array([[30, 10, 0], [5, 25, 20]])
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    result = label_heterogeneity(dataset_from_counts(observed.tolist()))
    assert result.chi2 == pytest.approx(statistic)
    assert result.degrees_of_freedom == 2
    assert result.p_value == pytest.approx(chi2.sf(statistic, 2))


def test_identical_label_distributions_give_zero_statistic() -> None:
    result = label_heterogeneity(dataset_from_counts([[10, 20, 30], [10, 20, 30], [5, 10, 15]]))
    assert result.chi2 == pytest.approx(0.0)
    assert result.p_value == pytest.approx(1.0)


def test_two_by_two_table_gets_no_continuity_correction() -> None:
    observed = np.array([[20, 5], [5, 20]])
    expected = np.full((2, 2), 12.5)
    result = label_heterogeneity(dataset_from_counts(observed.tolist()))
    assert result.chi2 == pytest.approx(float(((observed - expected) ** 2 / expected).sum()))


def test_classes_no_client_trains_on_are_dropped() -> None:
    with_absent_class = label_heterogeneity(dataset_from_counts([[5, 0, 9], [8, 0, 2]]))
    without = label_heterogeneity(dataset_from_counts([[5, 9], [8, 2]], num_classes=3))
    assert with_absent_class == without
    assert with_absent_class.degrees_of_freedom == 1


def test_regression_data_set_is_refused() -> None:
    dataset = dataset_from_counts([[3, 4]])
    regression = FederatedDataset(
        name="targets",
        clients=dataset.clients,
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        num_features=2,
        num_classes=None,
    )
    with pytest.raises(DataError, match="regression task"):
        label_heterogeneity(regression)


def test_small_alpha_gives_more_label_skew_than_large_alpha() -> None:
    def statistic(alpha: float) -> float:
        config = DataConfig(
            source="digits",
            num_clients=10,
            partition=PartitionConfig(scheme="dirichlet", alpha=alpha, min_client_size=5),
        )
        return label_heterogeneity(load_dataset(config, seed=0)).chi2

    skewed, mild, near_iid = statistic(0.1), statistic(1.0), statistic(100.0)
    assert skewed > mild > near_iid


def test_iid_partition_is_consistent_with_one_shared_label_distribution() -> None:
    config = DataConfig(source="digits", num_clients=10, partition=PartitionConfig(scheme="iid"))
    assert label_heterogeneity(load_dataset(config, seed=0)).p_value > 0.01
