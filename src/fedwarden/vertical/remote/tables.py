"""A party's table on disk: entity ids, feature columns and (at the label party) labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import DataError
from fedwarden.secure.psi import Identifier


@dataclass(frozen=True)
class PartyTable:
    """One party's table: entity ids, feature columns, and labels at the label party."""

    identifiers: tuple[Identifier, ...]
    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64] | None = None


def load_party_table(path: Path) -> PartyTable:
    """Read ``ids``, ``features`` and (optional) ``labels`` from an ``.npz`` (never pickled)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            contents = {key: arrays[key] for key in arrays.files}
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot read party table {path}: {error}; write it with numpy.savez(path, "
            "ids=..., features=..., labels=...) using str or int ids"
        ) from None
    missing = {"ids", "features"} - set(contents)
    if missing:
        raise DataError(f"party table {path} lacks {sorted(missing)}; it needs ids and features")
    ids, features = contents["ids"], contents["features"]
    if ids.ndim != 1 or ids.dtype.kind not in "USiu":
        raise DataError(f"{path}: ids must be a 1-D array of str, bytes or int, got {ids.dtype}")
    if features.ndim != 2 or features.shape[0] != len(ids):
        raise DataError(
            f"{path}: features must be (rows, columns) with one row per id; got shape "
            f"{features.shape} for {len(ids)} ids"
        )
    if features.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: features must be numbers (an int or float array), got dtype "
            f"{features.dtype}; encode categorical columns as numbers first"
        )
    if not np.isfinite(features).all():
        bad_rows = np.flatnonzero(~np.isfinite(features).all(axis=1))
        raise DataError(
            f"{path}: features hold NaN or infinite values in {len(bad_rows)} rows (first: row "
            f"{bad_rows[0]}); impute or drop them before serving the table"
        )
    labels = contents.get("labels")
    if labels is not None:
        if labels.shape != ids.shape or labels.dtype.kind not in "iu":
            raise DataError(
                f"{path}: labels must be one whole-number class per id (shape {ids.shape}), got "
                f"shape {labels.shape} of {labels.dtype}"
            )
        if len(labels) and labels.min() < 0:
            raise DataError(
                f"{path}: labels must be classes 0, 1, 2, ..., got {labels.min()}; number the "
                "classes from 0"
            )
    identifiers = tuple(item.item() for item in ids)
    return PartyTable(
        identifiers,
        features.astype(np.float64),
        None if labels is None else labels.astype(np.int64),
    )
