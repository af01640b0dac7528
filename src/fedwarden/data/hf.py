"""Hugging Face ``datasets`` saved with ``save_to_disk`` as one client's examples.

A folder written by ``Dataset.save_to_disk`` is one client's examples; one
written by ``DatasetDict.save_to_disk`` with ``train`` and ``test`` splits
brings the client's own test split too. The label column is ``data.target``
(``ClassLabel`` columns keep their numbering). The features are either one
``Image`` column, decoded and resized as an image folder's files are, or
table columns, converted as a CSV's are (numbers, listed categories).

``datasets`` comes with the ``data`` extra and is imported when a folder is
read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.dataset import Array
from fedwarden.data.images import image_vector
from fedwarden.data.tables import table_arrays

if TYPE_CHECKING:
    from datasets import Dataset

HF_MARKERS = ("dataset_info.json", "dataset_dict.json", "state.json")
"""Files ``save_to_disk`` writes; a folder holding one is read as a Hugging Face data set."""

HF_SPLITS = ("train", "test")
"""Splits a saved ``DatasetDict`` may hold: the client's examples and its own test split."""


def is_hf_folder(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk``."""
    return any((folder / marker).exists() for marker in HF_MARKERS)


def read_hf_dataset(folder: Path, config: DataConfig) -> tuple[dict[str, Array], tuple[str, ...]]:
    """``x``, ``y`` (``x_test``, ``y_test`` from a ``test`` split) and the feature columns."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"reading {folder} needs Hugging Face datasets; install it with "
            "pip install 'fedwarden[data]'"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(folder))
    except (OSError, ValueError) as error:
        raise DataError(
            f"{folder} cannot be loaded with datasets.load_from_disk ({error}); save it again "
            "with Dataset.save_to_disk"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return _split_arrays(loaded, str(folder), config)
    unknown = sorted(set(loaded) - set(HF_SPLITS))
    if unknown or "train" not in loaded:
        raise DataError(
            f"{folder} holds the splits {sorted(loaded)}; a client's DatasetDict holds "
            "'train' and optionally 'test' (its own test split)"
        )
    arrays, features = _split_arrays(loaded["train"], f"{folder} (split 'train')", config)
    if "test" in loaded:
        test, _ = _split_arrays(loaded["test"], f"{folder} (split 'test')", config)
        arrays.update(x_test=test["x"], y_test=test["y"])
    return arrays, features


def _split_arrays(
    split: Dataset, where: str, config: DataConfig
) -> tuple[dict[str, Array], tuple[str, ...]]:
    """One split's ``x`` and ``y``: an ``Image`` column decoded, or table columns converted."""
    import datasets

    columns = list(split.column_names)
    if config.target not in columns:
        raise DataError(
            f"{where} has no target column {config.target!r} (its columns are {columns}); "
            "name the label column in data.target"
        )
    features = list(config.features or [column for column in columns if column != config.target])
    image_columns = [
        column for column in features if isinstance(split.features.get(column), datasets.Image)
    ]
    if not image_columns:
        frame = split.select_columns([*features, config.target]).to_pandas()
        return table_arrays(frame, where, config)
    if len(features) != 1:
        raise DataError(
            f"{where}: the image column {image_columns[0]!r} must be the only feature, but "
            f"data.features is {features}; name just the image column in data.features"
        )
    (image_column,) = image_columns
    vectors = []
    for row in range(len(split)):
        try:
            image = split[row][image_column]
        except (OSError, ValueError) as error:
            raise DataError(
                f"{where}: the image in data row {row + 1} cannot be decoded ({error}); "
                "remove or replace it"
            ) from None
        vectors.append(image_vector(image, config))
    labels = split[config.target]
    label_array = np.asarray(labels)
    if label_array.dtype.kind in "biu":
        label_array = label_array.astype(np.int64)
    elif label_array.dtype.kind != "f":
        label_array = label_array.astype(str)
    return {"x": np.stack(vectors), "y": label_array}, (image_column,)
