"""CSV and Parquet tables as one client's examples: named target, numeric and one-hot features.

A table becomes the arrays a client file holds (``x`` examples x features,
``y`` one label per example) by the ``[data]`` settings:

- ``target`` names the label column: integers are class indices, floats make
  a regression task, text labels are numbered by ``classes`` (or sorted);
- ``features`` names the feature columns in order (default: every column but
  the target, in the file's order);
- a text column is a feature only when ``categories`` lists its categories,
  which are one-hot encoded in the listed order, so every site encodes alike;
- a missing value is refused with its column and row named, or its row is
  dropped when ``missing = "drop"``.

pandas and pyarrow come with the ``data`` extra and are imported when a table
is read, so clients with ``.npz`` files never load them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedwarden.core.config import DataConfig
from fedwarden.core.errors import DataError
from fedwarden.data.dataset import Array

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")
"""File suffixes read as tables."""

logger = logging.getLogger(__name__)


def read_table(path: Path, config: DataConfig) -> tuple[dict[str, Array], tuple[str, ...]]:
    """``x`` and ``y`` from the CSV or Parquet file at ``path``, and its feature columns."""
    frame = _read_frame(path)
    return table_arrays(frame, str(path), config)


def table_arrays(
    frame: pd.DataFrame, where: str, config: DataConfig
) -> tuple[dict[str, Array], tuple[str, ...]]:
    """``x`` (float32, categories one-hot) and ``y`` of a table, and its feature columns.

    The feature columns, in order, let the caller check that every site's
    table lines its features up the same way.
    """
    columns = [str(column) for column in frame.columns]
    frame.columns = columns
    if config.target not in columns:
        raise DataError(
            f"{where} has no target column {config.target!r} (its columns are {columns[:20]}); "
            "name the label column in data.target"
        )
    features = list(config.features or [column for column in columns if column != config.target])
    absent = [column for column in features if column not in columns]
    if absent:
        raise DataError(
            f"{where} has no feature column {absent[0]!r} named in data.features (its columns "
            f"are {columns[:20]}); fix data.features or the file's header"
        )
    if config.target in features:
        raise DataError(
            f"data.features names the target column {config.target!r}; a label is not a feature"
        )
    unused = sorted(set(config.categories) - set(features))
    if unused:
        raise DataError(
            f"data.categories names {unused[0]!r}, which is not a feature column of {where}; "
            f"categorical columns must be among {features[:20]}"
        )
    frame = _without_missing(frame[[*features, config.target]], where, config)
    x = np.concatenate(
        [_feature_block(frame[column], column, where, config) for column in features]
        or [np.zeros((len(frame), 0), dtype=np.float32)],
        axis=1,
    )
    return {"x": x, "y": _labels(frame[config.target], config.target, where)}, tuple(features)


def _read_frame(path: Path) -> pd.DataFrame:
    """The table at ``path``, with nullable integer columns (a gap keeps ints as ints)."""
    try:
        import pandas as pd
    except ImportError:
        raise DataError(
            f"reading {path} needs pandas and pyarrow; install them with "
            "pip install 'fedwarden[data]'"
        ) from None
    kind = "CSV" if path.suffix == ".csv" else "Parquet"
    try:
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype_backend="numpy_nullable")
        return pd.read_parquet(path, dtype_backend="numpy_nullable")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise DataError(
            f"{path} cannot be read as a {kind} table ({error}); save it with a header row "
            f"and one example per row (pandas.DataFrame.to_{kind.lower()})"
        ) from None


def _without_missing(frame: pd.DataFrame, where: str, config: DataConfig) -> pd.DataFrame:
    """The table when no value is missing; otherwise refused or dropped as configured."""
    missing = frame.isna()
    if not missing.to_numpy().any():
        return frame
    if config.missing == "drop":
        kept = frame[~missing.any(axis=1)]
        logger.info("%s: dropped %d rows with missing values", where, len(frame) - len(kept))
        return kept
    column = str(missing.any(axis=0).idxmax())
    rows = np.flatnonzero(missing[column].to_numpy())
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    raise DataError(
        f"{where}: column {column!r} is missing a value in data row {rows[0] + 1}{more}; fill "
        'it in, or set data.missing = "drop" to drop rows with missing values'
    )


def _feature_block(column: pd.Series, name: str, where: str, config: DataConfig) -> Array:
    """One column as features: a number, or the one-hot code of its listed categories."""
    import pandas as pd

    categories = config.categories.get(name)
    if categories is not None:
        return _one_hot(column.astype(str).to_numpy(), categories, name, where)
    if not pd.api.types.is_numeric_dtype(column):
        examples = sorted({str(value) for value in column.head(3)})
        raise DataError(
            f"{where}: column {name!r} holds text such as {examples}; list its categories in "
            f"data.categories ({name} = [...]) to one-hot encode it, or leave it out of "
            "data.features"
        )
    values = column.to_numpy(dtype=np.float64)
    infinite = np.flatnonzero(~np.isfinite(values))
    if len(infinite):
        raise DataError(
            f"{where}: column {name!r} holds {values[infinite[0]]} in data row "
            f"{infinite[0] + 1}; features must be finite numbers"
        )
    return values.astype(np.float32)[:, None]


def _one_hot(values: Array, categories: Sequence[str], name: str, where: str) -> Array:
    """One column per listed category; a value outside the list is refused."""
    known = np.isin(values, np.asarray(categories, dtype=str))
    if not known.all():
        row = int(np.flatnonzero(~known)[0])
        raise DataError(
            f"{where}: column {name!r} holds {values[row]!r} in data row {row + 1}, which is "
            f"not among its data.categories {list(categories)}; add it there"
        )
    return (values[:, None] == np.asarray(categories, dtype=str)[None, :]).astype(np.float32)


def _labels(column: pd.Series, name: str, where: str) -> Array:
    """Integer class indices, float regression targets, or text labels numbered later."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError(f"{where}: target column {name!r} holds a non-finite value")
        return values.astype(np.float32)
    return column.astype(str).to_numpy(dtype=str)
