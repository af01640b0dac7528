"""One client's file or folder, in any format, as the arrays a client holds.

A client is one entry of the per-client folder (or the ``--data`` of a
deployed client), its format told by its suffix or its contents:

- ``<client>.npz``: arrays ``x``, ``y`` and optional ``x_test``, ``y_test``;
- ``<client>.csv`` or ``<client>.parquet``: a table (:mod:`fedwarden.data.tables`);
- ``<client>/`` with one subfolder per class: images (:mod:`fedwarden.data.images`);
- ``<client>/`` written by ``save_to_disk``: a Hugging Face data set
  (:mod:`fedwarden.data.hf`).

Every format yields the same arrays (``x`` examples x features as float32,
``y`` one label per example), checked alike; text labels (class names) are
numbered by ``data.classes``, or in sorted order across every file read.
The central test set is the entry named ``_test`` in any of these formats.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.dataset import Array
from fedwarden.data.hf import is_hf_folder, read_hf_dataset
from fedwarden.data.images import read_image_folder
from fedwarden.data.tables import TABLE_SUFFIXES, read_table

CLIENT_ARRAYS = ("x", "y", "x_test", "y_test")
"""Arrays a client holds (``x`` and ``y`` are required)."""

CENTRAL_TEST_NAME = "_test"
"""Name (without suffix) of the per-client folder's central test set, in any format."""

CLIENT_SUFFIXES = (".npz", *TABLE_SUFFIXES)
"""Suffixes of client files; a client may also be a folder (images or a saved data set)."""


def client_entries(folder: Path) -> list[Path]:
    """The clients of a per-client folder, sorted; names starting with ``_`` or ``.`` are not."""
    entries = sorted(
        path
        for path in folder.iterdir()
        if path.name[0] not in "_." and (path.is_dir() or path.suffix in CLIENT_SUFFIXES)
    )
    names = [client_name(path) for path in entries]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(
            f"{folder} holds more than one entry for client {twice[0]!r}; keep one file or "
            "folder per client"
        )
    return entries


def central_test_entry(folder: Path) -> Path | None:
    """The central test set ``_test`` (``.npz``, a table or a folder), or None."""
    candidates = [folder / f"{CENTRAL_TEST_NAME}{suffix}" for suffix in ("", *CLIENT_SUFFIXES)]
    found = [path for path in candidates if path.exists()]
    if len(found) > 1:
        raise DataError(
            f"{folder} holds {len(found)} central test sets ({[path.name for path in found]}); "
            "keep one"
        )
    return found[0] if found else None


def client_name(path: Path) -> str:
    """The client id of a file (its stem) or folder (its name)."""
    return path.name if path.is_dir() else path.stem


def read_arrays(
    path: Path, config: DataConfig, allowed: Sequence[str]
) -> tuple[dict[str, Array], tuple[str, ...] | None]:
    """The checked arrays of one client file or folder, and its feature columns if named.

    ``allowed`` names the arrays it may hold; the feature columns (tables and
    Hugging Face data sets) let :func:`check_same_columns` compare sites.
    """
    columns: tuple[str, ...] | None = None
    if path.is_dir() and is_hf_folder(path):
        arrays, columns = read_hf_dataset(path, config)
    elif path.is_dir():
        arrays = read_image_folder(path, config)
    elif path.suffix == ".npz":
        arrays = read_npz(path, allowed)
    elif path.suffix in TABLE_SUFFIXES:
        arrays, columns = read_table(path, config)
    else:
        raise DataError(
            f"{path} is not a client file fedwarden reads; use .npz, .csv, .parquet, an image "
            "folder (one subfolder per class) or a Hugging Face save_to_disk folder"
        )
    extra = sorted(set(arrays) - set(allowed))
    if extra:
        raise DataError(
            f"{path} brings its own test split ({extra}), which the central test set cannot "
            "have; save the central test set as one split"
        )
    check_arrays(path, arrays, text_labels=path.suffix != ".npz")
    return arrays, columns


def check_same_columns(columns: Mapping[Path, tuple[str, ...] | None]) -> None:
    """Refuse tables whose feature columns differ from the first table's, in name or order."""
    named = {path: names for path, names in columns.items() if names is not None}
    if not named:
        return
    first_path, first = next(iter(named.items()))
    for path, names in named.items():
        if names != first:
            raise DataError(
                f"{path} has the feature columns {list(names)[:20]} but {first_path} has "
                f"{list(first)[:20]}; every site needs the same features in the same order "
                "(name them in data.features)"
            )


def encode_labels(
    files: Mapping[Path, Mapping[str, Array]],
    classes: Sequence[str] | None,
    num_classes: int | None = None,
) -> tuple[dict[Path, dict[str, Array]], int | None]:
    """Text labels numbered by ``classes`` (default: sorted across files); the class count.

    Numeric labels are left as they are (the count is then None, to be
    inferred). ``num_classes`` is the count a deployed client's run expects:
    without ``classes``, its own sorted names must number exactly that many,
    so that every site numbers the classes alike.
    """
    label_arrays = {
        (path, name): array
        for path, arrays in files.items()
        for name, array in arrays.items()
        if name.startswith("y")
    }
    text = [path for (path, _), y in label_arrays.items() if y.dtype.kind == "U"]
    numeric = [path for (path, _), y in label_arrays.items() if y.dtype.kind != "U"]
    if not text:
        return {path: dict(arrays) for path, arrays in files.items()}, None
    if numeric:
        raise DataError(
            f"{text[0]} has text labels but {numeric[0]} has numeric labels; label every "
            "client's examples the same way"
        )
    found = sorted({str(label) for y in label_arrays.values() for label in y})
    names = list(classes) if classes is not None else found
    if classes is None and num_classes is not None and len(found) != num_classes:
        raise DataError(
            f"{text[0]} has {len(found)} classes {found[:10]} but the run's model has "
            f"{num_classes}; list every class in data.classes so that all sites number them alike"
        )
    number = {name: index for index, name in enumerate(names)}
    encoded: dict[Path, dict[str, Array]] = {}
    for path, arrays in files.items():
        encoded[path] = dict(arrays)
        for name, y in arrays.items():
            if not name.startswith("y"):
                continue
            unknown = sorted(set(y.tolist()) - set(number))
            if unknown:
                raise DataError(
                    f"{path} has the class {unknown[0]!r}, which is not in data.classes "
                    f"{names[:10]}; add it there"
                )
            encoded[path][name] = np.asarray([number[label] for label in y], dtype=np.int64)
    return encoded, len(names)


def read_npz(path: Path, allowed: Sequence[str]) -> dict[str, Array]:
    """The arrays of one ``.npz`` file, read without pickle and checked for shape and type."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(
                    f"{path} holds a single array, not an .npz archive; save it with "
                    "numpy.savez(path, x=features, y=labels)"
                )
            unknown = sorted(set(archive.files) - set(allowed))
            if unknown:
                raise DataError(
                    f"{path} holds arrays {unknown} that are not read; name them "
                    f"{', '.join(allowed)} (or remove them)"
                )
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise DataError(
            f"{path} cannot be read as an .npz archive without pickle ({error}); save plain "
            "numeric arrays with numpy.savez"
        ) from None
    return arrays


def check_arrays(path: Path, arrays: Mapping[str, Array], text_labels: bool = False) -> None:
    """Refuse missing, unpaired, non-numeric, non-finite or misshapen arrays in one file.

    ``text_labels`` lets ``y`` and ``y_test`` hold class names (tables, images).
    """
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise DataError(
            f"{path} has no array {' or '.join(missing)} (it holds {sorted(arrays)}); save "
            "features as x and labels as y with numpy.savez(path, x=..., y=...)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(
            f"{path} holds only one of x_test and y_test; save both, or neither to split the "
            "client's examples by client_test_fraction"
        )
    for name, array in arrays.items():
        if text_labels and name.startswith("y") and array.dtype.kind == "U":
            continue
        if array.dtype.kind not in "biuf":
            raise DataError(
                f"{path}: array {name} has dtype {array.dtype}, which is not numeric; save "
                "features and labels as numbers"
            )
        if not np.isfinite(array).all():
            raise DataError(
                f"{path}: array {name} holds NaN or infinite values; clean or drop those "
                "examples before saving"
            )
    for features, labels in (("x", "y"), ("x_test", "y_test")):
        if features not in arrays:
            continue
        x, y = arrays[features], arrays[labels]
        if x.ndim < 2 or y.ndim != 1:
            raise DataError(
                f"{path}: {features} has shape {x.shape} and {labels} has shape {y.shape}; "
                f"{features} needs one row per example (examples x features) and {labels} one "
                "label per example"
            )
        if len(x) != len(y):
            raise DataError(
                f"{path}: {features} has {len(x)} rows but {labels} has {len(y)} labels; each "
                "example needs exactly one label"
            )
    if len(arrays["y"]) == 0:
        raise DataError(f"{path} holds no examples; drop the file or add the client's data")


def check_same_features(files: Mapping[Path, Mapping[str, Array]]) -> None:
    """Refuse files whose examples do not all have the first file's feature shape."""
    first_path, first_arrays = next(iter(files.items()))
    expected = first_arrays["x"].shape[1:]
    for path, arrays in files.items():
        for name in ("x", "x_test"):
            if name in arrays and arrays[name].shape[1:] != expected:
                raise DataError(
                    f"{path}: {name} has shape {arrays[name].shape} but {first_path}: x has "
                    f"shape {first_arrays['x'].shape}; every client must use the same features "
                    "(the same size after the first axis)"
                )


def infer_num_classes(files: Mapping[Path, Mapping[str, Array]]) -> int | None:
    """``max label + 1`` when every file's labels are integers, ``None`` when all are floats."""
    label_arrays = {
        path: arrays[name]
        for path, arrays in files.items()
        for name in ("y", "y_test")
        if name in arrays
    }
    integer = [path for path, y in label_arrays.items() if y.dtype.kind in "biu"]
    floating = [path for path, y in label_arrays.items() if y.dtype.kind == "f"]
    if integer and floating:
        raise DataError(
            f"{integer[0]} has integer labels but {floating[0]} has float labels; save every "
            "file's labels as integers (classification) or all as floats (regression)"
        )
    if floating:
        return None
    for path, y in label_arrays.items():
        if len(y) and y.min() < 0:
            raise DataError(
                f"{path} has the negative label {y.min()}; classes must be numbered from 0"
            )
    return max(int(y.max()) for y in label_arrays.values() if len(y)) + 1
