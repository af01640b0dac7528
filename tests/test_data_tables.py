"""Specifications of CSV and Parquet clients: target, features, categories, missing values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data import load_dataset
from fedwarden.data.sources import load_client_file


def folder_config(path: Path, **settings: Any) -> DataConfig:
    return DataConfig(source="npz_folder", path=path, client_test_fraction=0.0, **settings)


def write_site(path: Path, rows: dict[str, list[Any]]) -> None:
    """One client's table as CSV or Parquet, by the path's suffix."""
    frame = pd.DataFrame(rows)
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def patients(ages: list[float | None], sex: list[str], label: list[Any]) -> dict[str, list[Any]]:
    return {"age": ages, "sex": sex, "label": label}


def test_csv_and_parquet_clients_share_one_encoding_of_features_and_labels(
    tmp_path: Path,
) -> None:
    write_site(tmp_path / "a.csv", patients([30.0, 40.0], ["F", "M"], [0, 1]))
    write_site(tmp_path / "b.parquet", patients([50.0, 60.0, 70.0], ["M", "M", "F"], [1, 0, 2]))
    config = folder_config(tmp_path, categories={"sex": ["F", "M"]})
    dataset = load_dataset(config, seed=0)
    assert dataset.client_ids == ["a", "b"]
    assert (dataset.num_features, dataset.num_classes) == (3, 3)
    a, b = dataset.clients["a"], dataset.clients["b"]
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.x_train.tolist() == [[30.0, 1.0, 0.0], [40.0, 0.0, 1.0]]
    assert b.x_train[:, 1:].tolist() == [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
    assert b.y_train.tolist() == [1, 0, 2]


def test_features_select_and_order_columns_and_text_labels_follow_classes(
    tmp_path: Path,
) -> None:
    rows = {"id": ["p1", "p2"], "bmi": [21.5, 30.0], "age": [30, 40], "outcome": ["sick", "well"]}
    write_site(tmp_path / "a.csv", rows)
    config = folder_config(
        tmp_path, target="outcome", features=["age", "bmi"], classes=["well", "sick"]
    )
    client = load_dataset(config, seed=0).clients["a"]
    assert client.x_train.tolist() == [[30.0, 21.5], [40.0, 30.0]]
    assert client.y_train.tolist() == [1, 0]


def test_float_target_makes_a_regression_task(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", {"dose": [1.0, 2.0], "label": [0.5, 1.5]})
    dataset = load_dataset(folder_config(tmp_path), seed=0)
    assert dataset.num_classes is None
    assert dataset.clients["a"].y_train.dtype == np.float32


def test_central_test_table_is_the_servers_test_set(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", {"x": [1.0, 2.0], "label": [0, 1]})
    write_site(tmp_path / "_test.parquet", {"x": [3.0], "label": [1]})
    dataset = load_dataset(folder_config(tmp_path), seed=0)
    assert dataset.client_ids == ["a"]
    assert dataset.x_test.tolist() == [[3.0]] and dataset.y_test.tolist() == [1]


def test_missing_value_is_refused_with_its_column_and_row(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", patients([30.0, None, 50.0], ["F", "M", "F"], [0, 1, 0]))
    config = folder_config(tmp_path, categories={"sex": ["F", "M"]})
    with pytest.raises(
        DataError, match=r"a\.csv: column 'age' is missing a value in data row 2; .*missing"
    ):
        load_dataset(config, seed=0)


def test_rows_with_missing_values_are_dropped_when_configured(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", patients([30.0, None, 50.0], ["F", "M", "F"], [0, 1, 0]))
    config = folder_config(tmp_path, categories={"sex": ["F", "M"]}, missing="drop")
    client = load_dataset(config, seed=0).clients["a"]
    assert client.x_train[:, 0].tolist() == [30.0, 50.0]
    assert client.y_train.dtype == np.int64 and client.y_train.tolist() == [0, 0]


def test_text_column_without_categories_is_refused_by_name(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", patients([30.0, 40.0], ["F", "M"], [0, 1]))
    with pytest.raises(
        DataError, match=r"a\.csv: column 'sex' holds text such as \['F', 'M'\]; .*categories"
    ):
        load_dataset(folder_config(tmp_path), seed=0)


def test_category_outside_the_configured_list_is_refused(tmp_path: Path) -> None:
    write_site(tmp_path / "a.parquet", patients([30.0, 40.0], ["F", "X"], [0, 1]))
    config = folder_config(tmp_path, categories={"sex": ["F", "M"]})
    with pytest.raises(
        DataError, match=r"column 'sex' holds 'X' in data row 2, which is not among"
    ):
        load_dataset(config, seed=0)


def test_missing_target_column_is_refused_with_the_columns_found(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", {"age": [1.0], "outcome": [0]})
    with pytest.raises(
        DataError, match=r"a\.csv has no target column 'label' \(its columns are \['age', 'outcome'"
    ):
        load_dataset(folder_config(tmp_path), seed=0)


def test_unreadable_parquet_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.parquet").write_text("age,label\n1,0\n")
    with pytest.raises(DataError, match=r"a\.parquet cannot be read as a Parquet table"):
        load_dataset(folder_config(tmp_path), seed=0)


def test_deployed_client_reads_its_csv_and_holds_out_a_test_split(tmp_path: Path) -> None:
    site = tmp_path / "site.csv"
    write_site(site, {"x": [float(i) for i in range(10)], "label": [i % 2 for i in range(10)]})
    config = DataConfig(client_test_fraction=0.2)
    client = load_client_file(site, "site", config, seed=0, num_classes=2)
    assert (client.num_train, len(client.y_test)) == (8, 2)


def test_deployed_client_with_fewer_text_classes_than_the_run_must_list_them(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site.csv"
    write_site(site, {"x": [1.0, 2.0], "label": ["cat", "dog"]})
    with pytest.raises(DataError, match=r"2 classes \['cat', 'dog'\] but the run's model has 3"):
        load_client_file(site, "site", DataConfig(), seed=0, num_classes=3)
    config = DataConfig(classes=["bird", "cat", "dog"], client_test_fraction=0.0)
    client = load_client_file(site, "site", config, seed=0, num_classes=3)
    assert client.y_train.tolist() == [1, 2]


def test_sites_whose_columns_differ_in_order_are_refused(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", {"age": [30.0], "bmi": [21.0], "label": [0]})
    write_site(tmp_path / "b.csv", {"bmi": [25.0], "age": [40.0], "label": [1]})
    with pytest.raises(
        DataError, match=r"b\.csv has the feature columns \['bmi', 'age'\] but .*a\.csv has"
    ):
        load_dataset(folder_config(tmp_path), seed=0)
    config = folder_config(tmp_path, features=["age", "bmi"])
    assert load_dataset(config, seed=0).clients["b"].x_train.tolist() == [[40.0, 25.0]]


def test_two_entries_for_one_client_are_refused(tmp_path: Path) -> None:
    write_site(tmp_path / "a.csv", {"x": [1.0], "label": [0]})
    write_site(tmp_path / "a.parquet", {"x": [2.0], "label": [1]})
    with pytest.raises(DataError, match=r"holds more than one entry for client 'a'"):
        load_dataset(folder_config(tmp_path), seed=0)
