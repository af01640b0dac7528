"""Specifications of image-folder clients: one subfolder per class, decoded by Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data import load_dataset
from fedwarden.data.sources import load_client_file


def save_image(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (10, 6)) -> None:
    """A solid image of ``color`` (width x height ``size``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def folder_config(path: Path, **settings: Any) -> DataConfig:
    return DataConfig(source="npz_folder", path=path, client_test_fraction=0.0, **settings)


def test_image_folders_are_resized_scaled_and_labelled_by_sorted_subfolders(
    tmp_path: Path,
) -> None:
    save_image(tmp_path / "site_a" / "dog" / "1.png", (255, 0, 0))
    save_image(tmp_path / "site_a" / "cat" / "1.jpg", (0, 0, 255), size=(20, 20))
    save_image(tmp_path / "site_b" / "bird" / "1.png", (0, 255, 0))
    dataset = load_dataset(folder_config(tmp_path, image_shape=[4, 5]), seed=0)
    assert dataset.client_ids == ["site_a", "site_b"]
    assert (dataset.num_features, dataset.num_classes) == (3 * 4 * 5, 3)
    site_a = dataset.clients["site_a"]
    assert site_a.y_train.tolist() == [1, 2]  # bird, cat, dog across both sites
    red = site_a.x_train[1].reshape(3, 4, 5)
    assert site_a.x_train.dtype == np.float32
    assert np.allclose(red[0], 1.0) and np.allclose(red[1:], 0.0)
    assert dataset.clients["site_b"].y_train.tolist() == [0]


def test_grayscale_mode_gives_one_channel(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "white" / "1.png", (255, 255, 255))
    dataset = load_dataset(folder_config(tmp_path, image_shape=[3, 3], image_mode="L"), seed=0)
    assert dataset.num_features == 9
    assert np.allclose(dataset.clients["a"].x_train, 1.0)


def test_central_test_image_folder_uses_the_same_classes(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "cat" / "1.png", (0, 0, 0))
    save_image(tmp_path / "a" / "dog" / "1.png", (9, 9, 9))
    save_image(tmp_path / "_test" / "dog" / "1.png", (9, 9, 9))
    dataset = load_dataset(folder_config(tmp_path, image_shape=[2, 2]), seed=0)
    assert dataset.client_ids == ["a"] and dataset.y_test.tolist() == [1]


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "cat" / "1.png", (0, 0, 0))
    (tmp_path / "a" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cat/broken\.png is not an image Pillow can decode"):
        load_dataset(folder_config(tmp_path), seed=0)


def test_image_outside_a_class_subfolder_is_refused(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "cat" / "1.png", (0, 0, 0))
    save_image(tmp_path / "a" / "loose.png", (0, 0, 0))
    with pytest.raises(DataError, match=r"a/loose\.png is not in a class subfolder"):
        load_dataset(folder_config(tmp_path), seed=0)


def test_class_outside_the_configured_classes_is_refused(tmp_path: Path) -> None:
    save_image(tmp_path / "a" / "cat" / "1.png", (0, 0, 0))
    save_image(tmp_path / "a" / "fox" / "1.png", (0, 0, 0))
    with pytest.raises(DataError, match=r"has the class 'fox', which is not in data\.classes"):
        load_dataset(folder_config(tmp_path, classes=["cat", "dog"]), seed=0)


def test_deployed_client_reads_its_image_folder(tmp_path: Path) -> None:
    save_image(tmp_path / "site" / "cat" / "1.png", (0, 0, 0))
    save_image(tmp_path / "site" / "dog" / "1.png", (255, 255, 255))
    config = DataConfig(image_shape=[2, 2], image_mode="L", client_test_fraction=0.0)
    client = load_client_file(tmp_path / "site", "site", config, seed=0, num_classes=2)
    assert client.y_train.tolist() == [0, 1]
    assert client.x_train.tolist() == [[0.0] * 4, [1.0] * 4]
