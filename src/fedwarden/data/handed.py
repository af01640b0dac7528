"""Clients' data handed to :func:`fedwarden.run` in Python, turned into arrays once.

Each client's data is one of

- a map-style PyTorch ``torch.utils.data.Dataset`` (anything with ``__len__``
  and ``__getitem__``) whose items are ``(x, y)`` pairs: the items are read
  once, in order, and stacked into arrays (the trainers train on arrays, and
  the local runtime's workers receive arrays, never the user's object);
- a pair of arrays ``(x, y)`` (NumPy arrays, tensors or anything
  ``numpy.asarray`` reads), ``x`` with one example per row along its first axis;
- a path of a client file or folder, read as in a per-client folder
  (:mod:`fedwarden.data.client_files`).

Every example is flattened to one float32 row (the layout every trainer
reads); :attr:`HandedExamples.example_shape` keeps its shape so a model can
give the rows their shape back. Integer labels make a classification task with
``max label + 1`` classes, float labels a regression task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.client_files import CLIENT_ARRAYS, encode_labels, read_arrays
from fedwarden.data.dataset import Array

__all__ = ["HandedExamples", "client_examples", "examples_of"]


@dataclass(frozen=True)
class HandedExamples:
    """One client's (or the central test set's) examples as rows, and their shape."""

    name: str
    x: Array
    """One float32 row per example."""
    y: Array
    example_shape: tuple[int, ...]
    x_test: Array | None = None
    y_test: Array | None = None
    """A test split the client brings itself (a client file with ``x_test``)."""


def client_examples(clients: object) -> dict[str, object]:
    """The clients by id: a mapping as given, a sequence numbered ``client_0`` onwards."""
    if isinstance(clients, Mapping):
        named = {str(client_id): data for client_id, data in clients.items()}
    elif isinstance(clients, Sequence) and not isinstance(clients, (str, bytes)):
        width = len(str(len(clients) - 1))
        named = {f"client_{index:0{width}d}": data for index, data in enumerate(clients)}
    else:
        raise DataError(
            f"clients is a {type(clients).__name__}; hand a list or a dict (client id -> data) "
            "of one torch Dataset, (x, y) arrays or client file path per client"
        )
    if not named:
        raise DataError("clients is empty; hand at least one client's data")
    return named


def examples_of(name: str, data: object, config: DataConfig) -> HandedExamples:
    """``data`` (a Dataset of ``(x, y)`` items, an ``(x, y)`` pair or a path) as rows."""
    if isinstance(data, (str, PathLike)):
        return _read_path(name, Path(data), config)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (_array(part) for part in data)
        if len(x) != len(y):
            raise DataError(
                f"{name}: x has {len(x)} examples but y has {len(y)} labels; each example needs "
                "exactly one label"
            )
        return _rows(name, x, y)
    if hasattr(data, "__len__") and hasattr(data, "__getitem__"):
        return _stacked(name, data)
    raise DataError(
        f"{name} is a {type(data).__name__}; hand a torch Dataset whose items are (x, y), a "
        "pair of arrays (x, y), or the path of a client file"
    )


def _stacked(name: str, dataset: Any) -> HandedExamples:
    """Every item of a map-style data set, read once and stacked."""
    size = len(dataset)
    if size == 0:
        raise DataError(f"{name} holds no examples; drop the client or add its data")
    features: list[Array] = []
    labels: list[Array] = []
    for index in range(size):
        item = dataset[index]
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise DataError(
                f"{name}: item {index} is a {type(item).__name__}"
                + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
                + ", not an (x, y) pair; make the Dataset's __getitem__ return "
                "(features, label)"
            )
        x, y = (_array(part) for part in item)
        if features and x.shape != features[0].shape:
            raise DataError(
                f"{name}: item {index} has features of shape {x.shape} but item 0 has "
                f"{features[0].shape}; every example needs the same shape (resize or pad them)"
            )
        if y.size != 1:
            raise DataError(
                f"{name}: item {index} has a label of shape {y.shape}; a label is one class "
                "index or one number"
            )
        features.append(x)
        labels.append(y.reshape(()))
    return _rows(name, np.stack(features), np.stack(labels))


def _read_path(name: str, path: Path, config: DataConfig) -> HandedExamples:
    """A client file or folder, its text labels numbered by ``data.classes`` or sorted."""
    arrays, _ = read_arrays(path, config, CLIENT_ARRAYS)
    encoded = encode_labels({path: arrays}, config.classes)[0][path]
    examples = _rows(name, encoded["x"], encoded["y"])
    if "x_test" not in encoded:
        return examples
    test = _rows(f"{name} (test split)", encoded["x_test"], encoded["y_test"])
    return HandedExamples(name, examples.x, examples.y, examples.example_shape, test.x, test.y)


def _rows(name: str, x: Array, y: Array) -> HandedExamples:
    """Examples flattened to float32 rows; labels int64 for classes, float32 for regression."""
    if x.ndim < 1 or len(x) == 0:
        raise DataError(f"{name} holds no examples; drop the client or add its data")
    if y.ndim != 1:
        raise DataError(f"{name}: y has shape {y.shape}; hand one label per example (a 1-D array)")
    if y.dtype.kind not in "biuf":
        raise DataError(
            f"{name}: labels are {y.dtype}; use integer class indices (classification) or "
            "floats (regression)"
        )
    if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
        raise DataError(f"{name}: features are {x.dtype}; hand numbers")
    example_shape = tuple(int(size) for size in x.shape[1:]) or (1,)
    rows = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    if not np.isfinite(rows).all():
        raise DataError(f"{name}: features hold NaN or infinity; clean or drop those examples")
    labels = y.astype(np.int64 if y.dtype.kind in "biu" else np.float32)
    return HandedExamples(name, rows, labels, example_shape)


def _array(value: object) -> Array:
    """A tensor (detached, on the CPU), array or number as a NumPy array."""
    detach = getattr(value, "detach", None)
    if callable(detach):
        value = detach().cpu().numpy()
    return np.asarray(value)
