"""Specifications of Hugging Face clients: folders written by ``save_to_disk``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from PIL import Image

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data import load_dataset
from fedwarden.data.sources import load_client_file


def folder_config(path: Path, **settings: Any) -> DataConfig:
    return DataConfig(source="npz_folder", path=path, client_test_fraction=0.0, **settings)


def test_saved_datasets_are_clients_with_numeric_features_and_classlabels(
    tmp_path: Path,
) -> None:
    features = datasets.Features(
        {
            "age": datasets.Value("float32"),
            "dose": datasets.Value("int64"),
            "label": datasets.ClassLabel(names=["well", "sick"]),
        }
    )
    rows = {"age": [30.0, 40.0, 50.0], "dose": [1, 2, 3], "label": [0, 1, 1]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(tmp_path / "site_a")
    datasets.Dataset.from_dict(
        {"age": [60.0], "dose": [4], "label": [0]}, features=features
    ).save_to_disk(tmp_path / "_test")
    dataset = load_dataset(folder_config(tmp_path), seed=0)
    assert dataset.client_ids == ["site_a"]
    client = dataset.clients["site_a"]
    assert client.x_train.tolist() == [[30.0, 1.0], [40.0, 2.0], [50.0, 3.0]]
    assert client.y_train.tolist() == [0, 1, 1] and dataset.num_classes == 2
    assert dataset.x_test.tolist() == [[60.0, 4.0]]


def test_dataset_dict_test_split_is_the_clients_own_test_split(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"x": [1.0, 2.0], "label": [0, 1]}),
            "test": datasets.Dataset.from_dict({"x": [3.0], "label": [1]}),
        }
    )
    splits.save_to_disk(tmp_path / "site")
    client = load_client_file(tmp_path / "site", "site", DataConfig(), seed=0, num_classes=2)
    assert client.x_train.tolist() == [[1.0], [2.0]]
    assert client.x_test.tolist() == [[3.0]] and client.y_test.tolist() == [1]


def test_image_column_is_decoded_and_resized(tmp_path: Path) -> None:
    images = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    saved = datasets.Dataset.from_dict(
        {"image": images, "label": ["cat", "dog"]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    saved.save_to_disk(tmp_path / "site")
    config = folder_config(tmp_path, image_shape=[2, 3], image_mode="L")
    client = load_dataset(config, seed=0).clients["site"]
    assert client.x_train.shape == (2, 6)
    assert np.allclose(client.x_train[0], 0.0) and np.allclose(client.x_train[1], 1.0)
    assert client.y_train.tolist() == [0, 1]


def test_missing_target_column_is_refused_with_the_columns_found(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"x": [1.0], "outcome": [0]}).save_to_disk(tmp_path / "site")
    with pytest.raises(
        DataError, match=r"site has no target column 'label' \(its columns are \['x', 'outcome'\]"
    ):
        load_dataset(folder_config(tmp_path), seed=0)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    splits = datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"x": [1.0], "label": [0]})}
    )
    splits.save_to_disk(tmp_path / "site")
    with pytest.raises(DataError, match=r"site holds the splits \['validation'\]"):
        load_dataset(folder_config(tmp_path), seed=0)


def test_corrupt_saved_dataset_is_named(tmp_path: Path) -> None:
    datasets.Dataset.from_dict({"x": [1.0], "label": [0]}).save_to_disk(tmp_path / "site")
    for arrow_file in (tmp_path / "site").glob("*.arrow"):
        arrow_file.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"site cannot be loaded with datasets\.load_from_disk"):
        load_dataset(folder_config(tmp_path), seed=0)
