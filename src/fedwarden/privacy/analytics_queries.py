"""The analytics queries: count, sum, mean, histogram and quantile, and the strings that name them.

Each query is a frozen dataclass that refuses a value it cannot answer
(a feature that is neither a column nor ``"label"``, bounds the wrong way
round, bins that do not increase); :func:`parse_query` reads the form
``kind[:key=value,...]`` the ``fedwarden query`` command takes, and ``str``
of a query writes it back. What a query releases, and at what privacy cost,
is in :mod:`fedwarden.privacy.analytics`.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from numbers import Integral, Real
from typing import Any, Literal, TypeAlias

import numpy as np

from fedwarden.core.errors import FedwardenError

__all__ = [
    "DEFAULT_MAX_CONTRIBUTION",
    "DEFAULT_QUANTILE_BINS",
    "Count",
    "Feature",
    "Histogram",
    "Mean",
    "Quantile",
    "Query",
    "QueryError",
    "Sum",
    "parse_query",
]

DEFAULT_MAX_CONTRIBUTION = 100
"""Examples one client contributes at most under user-level DP, unless the query says otherwise."""
DEFAULT_QUANTILE_BINS = 64
"""Equal bins of the histogram a quantile is read from."""

Feature: TypeAlias = int | Literal["label"]

_KINDS = ("count", "sum", "mean", "histogram", "quantile")


class QueryError(FedwardenError):
    """An analytics query is malformed or does not fit the data it is asked of."""


def _number(value: float) -> str:
    """``value`` as the shortest text that reads back to it (``16`` rather than ``16.0``)."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def _check_feature(query: Sum | Mean | Histogram | Quantile) -> None:
    """Refuse a feature that is neither a column index nor ``"label"``; store indices as int."""
    feature = query.feature
    if feature == "label":
        return
    if isinstance(feature, bool) or not isinstance(feature, Integral) or feature < 0:
        raise QueryError(
            f"feature={feature!r}: expected a column index (0, 1, ...) or 'label' for the labels"
        )
    object.__setattr__(query, "feature", int(feature))


def _check_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise QueryError(f"{name}={value!r}: expected a finite number")
    return float(value)


def _check_numbers(name: str, values: object, example: str) -> tuple[float, ...]:
    if not isinstance(values, Sequence | np.ndarray) or isinstance(values, str):
        raise QueryError(f"{name}={values!r}: expected a sequence of numbers, e.g. {example}")
    return tuple(_check_finite(name, value) for value in values)


def _check_bounds(lower: float, upper: float) -> None:
    _check_finite("lower", lower)
    _check_finite("upper", upper)
    if not lower < upper:
        raise QueryError(
            f"lower={_number(lower)} and upper={_number(upper)}: lower must be below upper"
        )


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise QueryError(f"{name}={value!r}: expected a whole number >= 1")


def _spec(kind: str, query: Query) -> str:
    """The query string that :func:`parse_query` reads back to ``query``."""
    parts = []
    for item in fields(query):
        value = getattr(query, item.name)
        if value is None:
            continue
        if isinstance(value, tuple):
            text = ":".join(_number(number) for number in value)
        elif isinstance(value, float):
            text = _number(value)
        else:
            text = str(value)
        parts.append(f"{item.name}={text}")
    return f"{kind}:{','.join(parts)}"


@dataclass(frozen=True, kw_only=True)
class Count:
    """How many examples the clients hold (each client counts at most ``max_contribution``)."""

    max_contribution: int = DEFAULT_MAX_CONTRIBUTION

    def __post_init__(self) -> None:
        _check_positive_int("max_contribution", self.max_contribution)

    def __str__(self) -> str:
        return _spec("count", self)


@dataclass(frozen=True, kw_only=True)
class Sum:
    """The sum over all examples of one feature (or the label), each clipped to [lower, upper]."""

    feature: Feature
    lower: float
    upper: float
    max_contribution: int = DEFAULT_MAX_CONTRIBUTION

    def __post_init__(self) -> None:
        _check_feature(self)
        _check_bounds(self.lower, self.upper)
        _check_positive_int("max_contribution", self.max_contribution)

    def __str__(self) -> str:
        return _spec("sum", self)


@dataclass(frozen=True, kw_only=True)
class Mean:
    """The mean of one feature over all examples, each clipped to [lower, upper].

    With ``public_count`` (a number of examples known without looking at the
    data) only the sum is released and divided by it.
    """

    feature: Feature
    lower: float
    upper: float
    public_count: int | None = None
    max_contribution: int = DEFAULT_MAX_CONTRIBUTION

    def __post_init__(self) -> None:
        _check_feature(self)
        _check_bounds(self.lower, self.upper)
        if self.public_count is not None:
            _check_positive_int("public_count", self.public_count)
        _check_positive_int("max_contribution", self.max_contribution)

    def __str__(self) -> str:
        return _spec("mean", self)


@dataclass(frozen=True, kw_only=True)
class Histogram:
    """Counts of examples per bin of one feature; ``bins`` are the increasing bin edges."""

    feature: Feature
    bins: tuple[float, ...]
    max_contribution: int = DEFAULT_MAX_CONTRIBUTION

    def __post_init__(self) -> None:
        _check_feature(self)
        edges = _check_numbers("bins", self.bins, "(0, 4, 8, 12, 16)")
        object.__setattr__(self, "bins", edges)
        if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
            raise QueryError(
                f"bins={':'.join(_number(edge) for edge in edges)}: expected at least two "
                f"strictly increasing bin edges, e.g. bins=0:4:8:12:16"
            )
        _check_positive_int("max_contribution", self.max_contribution)

    def __str__(self) -> str:
        return _spec("histogram", self)


@dataclass(frozen=True, kw_only=True)
class Quantile:
    """Quantiles ``q`` of one feature, read from a DP histogram of equal bins on [lower, upper]."""

    feature: Feature
    q: tuple[float, ...]
    lower: float
    upper: float
    bins: int = DEFAULT_QUANTILE_BINS
    max_contribution: int = DEFAULT_MAX_CONTRIBUTION

    def __post_init__(self) -> None:
        _check_feature(self)
        levels = _check_numbers("q", self.q, "(0.5,) or (0.25, 0.5, 0.75)")
        object.__setattr__(self, "q", levels)
        if not levels or any(not 0 <= level <= 1 for level in levels):
            raise QueryError(
                f"q={':'.join(_number(level) for level in levels)}: expected one or more levels "
                f"in [0, 1], e.g. q=0.5 or q=0.25:0.5:0.75"
            )
        _check_bounds(self.lower, self.upper)
        _check_positive_int("bins", self.bins)
        _check_positive_int("max_contribution", self.max_contribution)

    def __str__(self) -> str:
        return _spec("quantile", self)


Query: TypeAlias = Count | Sum | Mean | Histogram | Quantile

_CLASSES: dict[str, type[Any]] = {
    "count": Count,
    "sum": Sum,
    "mean": Mean,
    "histogram": Histogram,
    "quantile": Quantile,
}
_HELP = {
    "feature": "a column index or 'label'",
    "lower": "a number, the lowest value counted",
    "upper": "a number, the highest value counted",
    "max_contribution": "examples per client, a whole number",
    "public_count": "a whole number",
    "bins": "bin edges such as 0:4:8:12:16",
    "q": "levels such as 0.5 or 0.25:0.5:0.75",
}
_EXAMPLES = {
    "count": "count",
    "sum": "sum:feature=3,lower=0,upper=16",
    "mean": "mean:feature=3,lower=0,upper=16",
    "histogram": "histogram:feature=3,bins=0:4:8:12:16",
    "quantile": "quantile:feature=3,q=0.5,lower=0,upper=16",
}


def _read_value(kind: str, key: str, text: str) -> object:
    """The Python value of ``key=text`` in a ``kind`` query, or a QueryError naming the part."""
    try:
        if key == "feature":
            return "label" if text == "label" else int(text)
        if key in ("max_contribution", "public_count") or (key == "bins" and kind == "quantile"):
            return int(text)
        if key in ("bins", "q"):
            return tuple(float(part) for part in text.split(":"))
        return float(text)
    except ValueError:
        allowed = "a whole number of bins" if key == "bins" and kind == "quantile" else _HELP[key]
        raise QueryError(f"{key}={text!r} in the {kind} query: expected {allowed}") from None


def parse_query(text: str) -> Query:
    """Read a query string such as ``"mean:feature=3,lower=0,upper=16"``.

    The form is ``kind[:key=value,...]``; lists (histogram ``bins``, quantile
    ``q``) are separated by ``:``. Errors name the bad part and what is allowed.
    """
    kind, _, rest = text.strip().partition(":")
    kind = kind.strip()
    if kind not in _CLASSES:
        close = difflib.get_close_matches(kind, _KINDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise QueryError(f"unknown query {kind!r} in {text!r}{hint} (allowed: {', '.join(_KINDS)})")
    cls = _CLASSES[kind]
    known = [item.name for item in fields(cls)]
    values: dict[str, object] = {}
    for part in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, value = (piece.strip() for piece in part.partition("="))
        if not equals or not key or not value:
            raise QueryError(f"{part!r} in {text!r} is not key=value, e.g. {_EXAMPLES[kind]}")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise QueryError(
                f"the {kind} query has no key {key!r}{hint} (allowed: {', '.join(known)})"
            )
        if key in values:
            raise QueryError(f"{key!r} is given twice in {text!r}")
        values[key] = _read_value(kind, key, value)
    required = [item.name for item in fields(cls) if item.default is MISSING]
    missing = [key for key in required if key not in values]
    if missing:
        needed = ", ".join(f"{key} ({_HELP[key]})" for key in missing)
        raise QueryError(f"the {kind} query needs {needed}, e.g. {_EXAMPLES[kind]}")
    query: Query = cls(**values)
    return query
