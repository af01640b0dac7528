"""Specifications of the data sources: bundled sets, FedProx Synthetic and npz folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from fedwarden.core.config import DataConfig, PartitionConfig
from fedwarden.core.errors import DataError
from fedwarden.data import FederatedDataset, load_dataset
from fedwarden.data.synthetic import MAX_SYNTHETIC_DEVICE_SIZE


def pooled_training_features(dataset: FederatedDataset) -> np.ndarray[Any, Any]:
    """Every client's training and test features together (all but the central test set)."""
    clients = dataset.clients.values()
    return np.concatenate([c.x_train for c in clients] + [c.x_test for c in clients])


def assert_same_dataset(first: FederatedDataset, second: FederatedDataset) -> None:
    """Identical clients, arrays and central test set."""
    assert first.client_ids == second.client_ids
    for client_id in first.client_ids:
        a, b = first.clients[client_id], second.clients[client_id]
        for name in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(a, name), getattr(b, name))
    assert np.array_equal(first.x_test, second.x_test)
    assert np.array_equal(first.y_test, second.y_test)


# Bundled scikit-learn data sets


def test_digits_clients_and_central_test_set_hold_every_example_once() -> None:
    dataset = load_dataset(DataConfig(source="digits", num_clients=10), seed=0)
    x_all, _ = load_digits(return_X_y=True)
    rows = np.concatenate([pooled_training_features(dataset), dataset.x_test])
    assert len(rows) == len(x_all)
    as_pixels = np.unique(np.rint(rows * 16.0), axis=0)
    assert len(as_pixels) == len(np.unique(x_all, axis=0))


def test_digits_are_scaled_by_the_pixel_range_as_float32_and_int64() -> None:
    dataset = load_dataset(DataConfig(source="digits", num_clients=5), seed=0)
    client = dataset.clients["client_0"]
    assert client.x_train.dtype == np.float32 and client.y_train.dtype == np.int64
    assert dataset.x_test.dtype == np.float32 and dataset.y_test.dtype == np.int64
    features = pooled_training_features(dataset)
    assert features.min() == 0.0 and features.max() == 1.0
    assert (dataset.num_features, dataset.num_classes) == (64, 10)


def test_central_test_set_is_stratified_by_class() -> None:
    dataset = load_dataset(DataConfig(source="digits", central_test_fraction=0.25), seed=1)
    _, y_all = load_digits(return_X_y=True)
    expected = np.rint(0.25 * np.bincount(y_all))
    assert np.array_equal(np.bincount(dataset.y_test, minlength=10), expected)


def test_client_test_splits_follow_client_test_fraction() -> None:
    config = DataConfig(source="digits", num_clients=8, client_test_fraction=0.3)
    dataset = load_dataset(config, seed=0)
    for client in dataset.clients.values():
        total = client.num_train + client.num_test
        assert client.num_test == round(0.3 * total)


@pytest.mark.parametrize(
    ("source", "num_features", "num_classes"), [("breast_cancer", 30, 2), ("wine", 13, 3)]
)
def test_tabular_sets_are_standardized_with_pooled_training_statistics(
    source: Literal["breast_cancer", "wine"], num_features: int, num_classes: int
) -> None:
    config = DataConfig(source=source, num_clients=4, partition=PartitionConfig(scheme="iid"))
    dataset = load_dataset(config, seed=0)
    features = pooled_training_features(dataset)
    assert np.allclose(features.mean(axis=0), 0.0, atol=1e-5)
    assert np.allclose(features.std(axis=0), 1.0, atol=1e-5)
    assert (dataset.num_features, dataset.num_classes) == (num_features, num_classes)


def test_bundled_set_is_deterministic_in_seed() -> None:
    config = DataConfig(source="digits", num_clients=6)
    assert_same_dataset(load_dataset(config, seed=5), load_dataset(config, seed=5))
    other = load_dataset(config, seed=6)
    assert not np.array_equal(load_dataset(config, seed=5).y_test, other.y_test)


def test_partition_scheme_shapes_the_clients() -> None:
    config = DataConfig(source="digits", num_clients=20, partition=PartitionConfig(scheme="shards"))
    dataset = load_dataset(config, seed=0)
    labels_per_client = [len(np.unique(c.y_train)) for c in dataset.clients.values()]
    assert len(dataset.clients) == 20
    assert max(labels_per_client) <= 4


def test_size_quartiles_rise_with_training_size() -> None:
    config = DataConfig(
        source="digits",
        num_clients=20,
        partition=PartitionConfig(scheme="power_law", power_law_exponent=1.0),
    )
    dataset = load_dataset(config, seed=0)
    clients = sorted(dataset.clients.values(), key=lambda client: client.num_train)
    quartiles = [client.attributes["size_quartile"] for client in clients]
    assert quartiles == sorted(quartiles)
    assert (quartiles[0], quartiles[-1]) == ("q1", "q4")


# FedProx Synthetic(alpha, beta)


def synthetic(num_clients: int, seed: int, **settings: Any) -> FederatedDataset:
    """A Synthetic(alpha, beta) data set with ``num_clients`` devices."""
    return load_dataset(DataConfig(source="synthetic", num_clients=num_clients, **settings), seed)


def test_synthetic_generator_is_deterministic_in_seed() -> None:
    assert_same_dataset(synthetic(30, seed=2), synthetic(30, seed=2))
    first, other = synthetic(30, seed=2), synthetic(30, seed=3)
    assert not np.array_equal(
        first.clients["client_00"].x_train, other.clients["client_00"].x_train
    )


def test_synthetic_sizes_follow_power_law() -> None:
    dataset = synthetic(1000, seed=0)
    sizes = np.array([c.num_train + c.num_test for c in dataset.clients.values()])
    assert sizes.min() >= 50
    assert sizes.max() == MAX_SYNTHETIC_DEVICE_SIZE
    assert sizes.mean() > 2 * np.median(sizes)
    top_tenth = np.sort(sizes)[-100:]
    assert top_tenth.sum() > 0.5 * sizes.sum()


def test_synthetic_has_the_configured_shape() -> None:
    dataset = synthetic(10, seed=0, synthetic_features=20, synthetic_classes=5)
    assert (dataset.num_features, dataset.num_classes) == (20, 5)
    assert dataset.name == "synthetic_1_1"
    for client in dataset.clients.values():
        assert client.x_train.shape[1] == 20 and client.x_train.dtype == np.float32
        assert client.y_train.min() >= 0 and client.y_train.max() < 5


def test_synthetic_labels_are_a_linear_function_of_each_devices_features() -> None:
    dataset = synthetic(20, seed=4, synthetic_alpha=0.5, synthetic_beta=0.5)
    largest = max(dataset.clients.values(), key=lambda client: client.num_train)
    model = LogisticRegression(C=1e4, max_iter=5000).fit(largest.x_train, largest.y_train)
    assert model.score(largest.x_train, largest.y_train) >= 0.98


def test_synthetic_larger_beta_spreads_device_feature_means_further() -> None:
    def spread(beta: float) -> float:
        dataset = synthetic(200, seed=0, synthetic_beta=beta)
        means = [client.x_train.mean() for client in dataset.clients.values()]
        return float(np.std(means))

    assert spread(5.0) > 3 * spread(0.0)


def test_synthetic_central_test_set_is_the_clients_test_splits() -> None:
    dataset = synthetic(15, seed=1, client_test_fraction=0.25)
    clients = list(dataset.clients.values())
    assert np.array_equal(dataset.x_test, np.concatenate([c.x_test for c in clients]))
    assert np.array_equal(dataset.y_test, np.concatenate([c.y_test for c in clients]))


# Folders of per-client npz files


def npz_config(folder: Path, **settings: Any) -> DataConfig:
    """A config reading the npz folder ``folder``."""
    return DataConfig(source="npz_folder", path=folder, **settings)


def save_client(folder: Path, client_id: str, rows: int, features: int = 3, **arrays: Any) -> None:
    """``<client_id>.npz`` with random features, integer labels and any extra arrays."""
    rng = np.random.default_rng(rows)
    contents = {
        "x": rng.normal(size=(rows, features)),
        "y": rng.integers(0, 4, size=rows),
        **arrays,
    }
    np.savez(folder / f"{client_id}.npz", **{k: v for k, v in contents.items() if v is not None})


def test_npz_folder_makes_one_client_per_file_in_sorted_order(tmp_path: Path) -> None:
    for client_id, rows in (("hospital_b", 30), ("hospital_a", 20), ("clinic", 10)):
        save_client(tmp_path, client_id, rows)
    dataset = load_dataset(npz_config(tmp_path, client_test_fraction=0.2), seed=0)
    assert dataset.client_ids == ["clinic", "hospital_a", "hospital_b"]
    assert [c.num_train for c in dataset.clients.values()] == [8, 16, 24]
    assert dataset.name == tmp_path.name


def test_npz_folder_infers_classes_from_integer_labels(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10, y=np.array([0, 1] * 5))
    save_client(tmp_path, "b", 10, y=np.array([6, 2] * 5))
    dataset = load_dataset(npz_config(tmp_path), seed=0)
    assert dataset.num_classes == 7
    assert dataset.clients["a"].y_train.dtype == np.int64


def test_npz_folder_float_labels_make_a_regression_task(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10, y=np.linspace(0.0, 1.0, 10))
    dataset = load_dataset(npz_config(tmp_path), seed=0)
    assert dataset.num_classes is None
    assert dataset.clients["a"].y_train.dtype == np.float32


def test_npz_folder_uses_a_clients_own_test_split(tmp_path: Path) -> None:
    x_test, y_test = np.ones((4, 3)), np.array([0, 1, 2, 3])
    save_client(tmp_path, "a", 10, x_test=x_test, y_test=y_test)
    save_client(tmp_path, "b", 10)
    dataset = load_dataset(npz_config(tmp_path, client_test_fraction=0.5), seed=0)
    a, b = dataset.clients["a"], dataset.clients["b"]
    assert (a.num_train, a.num_test) == (10, 4)
    assert np.array_equal(a.y_test, y_test)
    assert (b.num_train, b.num_test) == (5, 5)
    assert np.array_equal(dataset.y_test, np.concatenate([a.y_test, b.y_test]))


def test_npz_folder_central_test_set_comes_from_test_file(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10)
    np.savez(tmp_path / "_test.npz", x=np.zeros((7, 3)), y=np.arange(7))
    dataset = load_dataset(npz_config(tmp_path), seed=0)
    assert dataset.client_ids == ["a"]
    assert np.array_equal(dataset.y_test, np.arange(7))
    assert dataset.num_classes == 7


def test_distinct_sizes_fill_quartiles_evenly(tmp_path: Path) -> None:
    for index in range(8):
        save_client(tmp_path, f"client_{index}", rows=10 * (8 - index))
    dataset = load_dataset(npz_config(tmp_path, client_test_fraction=0.0), seed=0)
    quartiles = [client.attributes["size_quartile"] for client in dataset.clients.values()]
    assert quartiles == ["q4", "q4", "q3", "q3", "q2", "q2", "q1", "q1"]


def test_clients_of_equal_size_share_a_quartile(tmp_path: Path) -> None:
    for client_id, rows in (("a", 10), ("b", 20), ("c", 20), ("d", 20)):
        save_client(tmp_path, client_id, rows)
    dataset = load_dataset(npz_config(tmp_path, client_test_fraction=0.0), seed=0)
    quartiles = [client.attributes["size_quartile"] for client in dataset.clients.values()]
    assert quartiles == ["q1", "q2", "q2", "q2"]


def test_npz_folder_attributes_json_merges_with_size_quartile(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10)
    save_client(tmp_path, "b", 40)
    (tmp_path / "attributes.json").write_text(json.dumps({"a": {"region": "rural"}}))
    dataset = load_dataset(npz_config(tmp_path), seed=0)
    assert dataset.clients["a"].attributes == {"size_quartile": "q1", "region": "rural"}
    assert dataset.clients["b"].attributes == {"size_quartile": "q3"}


def test_npz_folder_attributes_for_unknown_clients_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10)
    (tmp_path / "attributes.json").write_text(json.dumps({"z": {"region": "rural"}}))
    with pytest.raises(DataError, match=r"attributes\.json names clients \['z'\]"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_non_string_attributes_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10)
    (tmp_path / "attributes.json").write_text(json.dumps({"a": {"beds": 12}}))
    with pytest.raises(DataError, match="objects of strings"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_is_deterministic_in_seed(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 50)
    assert_same_dataset(
        load_dataset(npz_config(tmp_path), seed=1), load_dataset(npz_config(tmp_path), seed=1)
    )


def test_npz_folder_missing_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(npz_config(tmp_path / "absent"), seed=0)


def test_npz_folder_without_client_files_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "_test.npz", x=np.zeros((2, 3)), y=np.zeros(2, dtype=int))
    with pytest.raises(DataError, match=r"holds no clients"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_missing_y_names_the_file(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10)
    np.savez(tmp_path / "b.npz", x=np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"b\.npz has no array y"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_mismatched_lengths_name_the_file(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10, y=np.zeros(9, dtype=int))
    with pytest.raises(DataError, match=r"a\.npz: x has 10 rows but y has 9 labels"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_inconsistent_feature_counts_name_both_files(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 10, features=3)
    save_client(tmp_path, "b", 10, features=4)
    with pytest.raises(
        DataError, match=r"b\.npz: x has shape \(10, 4\) but .*a\.npz: x has shape \(10, 3\)"
    ):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_non_numeric_arrays_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 3, y=np.array(["cat", "dog", "cat"]))
    with pytest.raises(DataError, match=r"a\.npz: array y has dtype <U3, which is not numeric"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_never_unpickles_object_arrays(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 2, y=np.array([{"label": 1}, {"label": 0}], dtype=object))
    with pytest.raises(DataError, match=r"a\.npz cannot be read .* without pickle"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_non_finite_features_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 3, x=np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(DataError, match="NaN or infinite"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_unknown_arrays_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 3, y_tset=np.zeros(3))
    with pytest.raises(DataError, match=r"holds arrays \['y_tset'\] that are not read"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_mixed_label_types_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 4)
    save_client(tmp_path, "b", 4, y=np.linspace(0.0, 1.0, 4))
    with pytest.raises(DataError, match=r"integer labels but .*b\.npz has float labels"):
        load_dataset(npz_config(tmp_path), seed=0)


def test_npz_folder_unpaired_test_arrays_are_refused(tmp_path: Path) -> None:
    save_client(tmp_path, "a", 4, x_test=np.zeros((2, 3)))
    with pytest.raises(DataError, match="only one of x_test and y_test"):
        load_dataset(npz_config(tmp_path), seed=0)
