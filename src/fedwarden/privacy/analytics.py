"""Federated analytics with differential privacy: count, sum, mean, histogram and quantile.

A query is answered the way DP-FedAvg answers a round (McMahan et al. 2018):
each client computes a *bounded* contribution on its own training data, the
server sums the contributions and adds noise *once* to the aggregate, and the
release is charged to the run's one :class:`~fedwarden.privacy.ledger.PrivacyLedger`.
The ledger is asked first: a query that would overspend the budget is refused
before any client's data is read.

What is released
----------------
Every release is an integer vector plus exact discrete Laplace noise, drawn
with the sampler of Canonne, Kamath & Steinke (2020), "The Discrete Gaussian
for Differential Privacy", Algorithm 2, from a cryptographically secure
:class:`~fedwarden.privacy.randomness.NoiseSource`. Integers and an exact
sampler leave no floating-point bits to attack (Mironov 2012). The release is
charged as ``dp_event.DiscreteLaplaceDpEvent(a, Δ)``: noise parameter
``a = 1 / scale`` and Δ the L1 bound on one privacy unit's integer
contribution, which dp-accounting's PLD accountant treats exactly. The
discrete Laplace (the geometric mechanism of Ghosh, Roughgarden &
Sundararajan 2009) is ε-DP for ``a Δ = ε``; each query is calibrated so that
the ledger's accountant reports at most the ε asked for at the δ given
(:func:`plan_releases`).
The discrete Gaussian is not offered here: dp-accounting's PLD accountant has
no event for it (only ``ZCDpEvent``, which it cannot compose), and charging it
as the continuous Gaussian would not be exact.

* **count**: each client contributes its number of examples.
* **sum**: each example's value is clipped to ``[lower, upper]`` and put on the
  grid of step ``(upper - lower) / SUM_GRID_STEPS`` by unbiased randomized
  rounding (as in Kairouz, Liu & Steinke 2021, "The Distributed Discrete
  Gaussian Mechanism for Federated Learning with Secure Aggregation"); the
  release is the integer sum times the step. Rounding adds no bias and at most
  one step per example; the noise is in grid units, so its scale in value
  units (``max_contribution * max(|lower|, |upper|) / ε``) does not depend on
  the grid. A finer grid would only make the sensitivity, and with it the PLD
  accounting, larger.
* **mean**: noisy sum / noisy count, two releases with half of ε each,
  clamped to ``[lower, upper]``; or, given a public ``public_count``, the
  noisy sum divided by it (one release, all of ε).
* **histogram**: counts of examples per bin; values outside the edges are
  clamped into the first or last bin, so the bins count every example.
* **quantile**: from a DP histogram of ``bins`` equal bins over ``[lower, upper]``
  (negative noisy counts set to 0), the quantile is read off the cumulative
  counts and interpolated linearly within its bin. The resolution is
  ``(upper - lower) / bins`` plus the noise's effect on the CDF. Several ``q``
  are answered from the one histogram at the cost of one. The exponential
  mechanism (McSherry & Talwar 2007; Smith 2011 for quantiles) is not used
  because dp-accounting has no event for it; the histogram is accounted
  exactly.

Privacy unit and bounded contributions
--------------------------------------
The unit is the ledger's. For ``"client"`` (user-level DP) each client
contributes at most ``max_contribution`` examples (a uniformly random subset
when it holds more), so one client moves a count or histogram by at most
``max_contribution`` in L1 and a sum by at most ``max_contribution`` clipped
values. For ``"example"`` every example is its own unit and contributes once.
Clients compute on their training split only; an example whose value of the
queried feature is NaN (missing) is skipped by every query but ``count``.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt
from dp_accounting import dp_event

from fedwarden.core.errors import FedwardenError
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.privacy.accounting import Neighboring, compute_spend
from fedwarden.privacy.discrete import discrete_laplace_vector
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger, PrivacyUnit
from fedwarden.privacy.randomness import NoiseSource

__all__ = [
    "DEFAULT_MAX_CONTRIBUTION",
    "DEFAULT_QUANTILE_BINS",
    "SUM_GRID_STEPS",
    "Count",
    "Histogram",
    "Mean",
    "Quantile",
    "Query",
    "QueryError",
    "QueryResult",
    "Release",
    "Sum",
    "client_contribution",
    "parse_query",
    "plan_releases",
    "query_command",
    "run_query",
]

DEFAULT_MAX_CONTRIBUTION = 100
"""Examples one client contributes at most under user-level DP, unless the query says otherwise."""
SUM_GRID_STEPS = 256
"""A sum's grid has this many steps between ``lower`` and ``upper``."""
DEFAULT_QUANTILE_BINS = 64
"""Equal bins of the histogram a quantile is read from."""

ANALYTICS_KIND = "analytics"
"""The ``kind`` of every ledger entry this module charges."""

_SCALE_DENOMINATOR = 1 << 16
_CALIBRATION_STEP = Fraction(1, 100_000)
_MAX_WIDENING = 2

Feature: TypeAlias = int | Literal["label"]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

_KINDS = ("count", "sum", "mean", "histogram", "quantile")


class QueryError(FedwardenError):
    """An analytics query is malformed or does not fit the data it is asked of."""


# --- queries ---------------------------------------------------------------------------------


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


# --- releases and their accounting -----------------------------------------------------------


@dataclass(frozen=True)
class Release:
    """One noisy aggregate the server publishes: the clients' integer sum plus discrete noise.

    ``sensitivity`` bounds, in L1, how far one privacy unit moves the integer
    aggregate; ``scale`` is the exact discrete Laplace scale (probability of
    noise ``x`` proportional to ``exp(-|x| / scale)``, Canonne, Kamath &
    Steinke 2020); ``step`` is the value of one integer unit (the grid step of
    a sum, 1 for counts).
    """

    name: str
    size: int
    sensitivity: int
    scale: Fraction
    step: float = 1.0

    @property
    def noise_parameter(self) -> float:
        """``a = 1 / scale`` as a float rounded up, so the charge never understates the loss."""
        exact = 1 / self.scale
        parameter = float(exact)
        if Fraction(parameter) < exact:
            parameter = math.nextafter(parameter, math.inf)
        return parameter

    @property
    def event(self) -> dp_event.DiscreteLaplaceDpEvent:
        """The DP event this release is charged as."""
        return dp_event.DiscreteLaplaceDpEvent(self.noise_parameter, self.sensitivity)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise, in value units: ``step sqrt(2 e^-a) / (1 - e^-a)``."""
        a = float(1 / self.scale)
        return self.step * math.sqrt(2 * math.exp(-a)) / -math.expm1(-a)


def _sum_grid(lower: float, upper: float) -> tuple[float, int, int]:
    """A sum's grid step and the lowest and highest grid point a clipped value rounds to."""
    step = (upper - lower) / SUM_GRID_STEPS
    return step, math.floor(lower / step), math.ceil(upper / step)


def _scale_at_least(value: Fraction) -> Fraction:
    """``value`` rounded up to a multiple of 2**-16: short integers for the exact sampler."""
    return Fraction(math.ceil(value * _SCALE_DENOMINATOR), _SCALE_DENOMINATOR)


def _release_shapes(
    query: Query, privacy_unit: PrivacyUnit, neighboring: Neighboring
) -> list[tuple[str, int, int, float]]:
    """``(name, size, sensitivity, step)`` of each release answering ``query``.

    Under add/remove neighbours the sensitivity is the largest L1 norm of one
    unit's integer contribution; under replace-one, the width of the range it
    lies in.
    """
    examples = query.max_contribution if privacy_unit == "client" else 1
    replace = neighboring == "replace_one"
    count = ("count", 1, examples, 1.0)
    histogram_sensitivity = 2 * examples if replace else examples
    match query:
        case Count():
            return [count]
        case Sum() | Mean():
            step, low, high = _sum_grid(query.lower, query.upper)
            width = max(high, 0) - min(low, 0) if replace else max(abs(low), abs(high))
            total = ("sum", 1, examples * width, step)
            needs_count = isinstance(query, Mean) and query.public_count is None
            return [total, count] if needs_count else [total]
        case Histogram():
            return [("histogram", len(query.bins) - 1, histogram_sensitivity, 1.0)]
        case Quantile():
            return [("histogram", query.bins, histogram_sensitivity, 1.0)]


def plan_releases(
    query: Query,
    *,
    privacy_unit: PrivacyUnit,
    epsilon: float,
    delta: float,
    neighboring: Neighboring = "add_remove",
) -> tuple[Release, ...]:
    """The releases answering ``query``, calibrated so the accountant's ε is at most ``epsilon``.

    Depends on the query, the unit and the budget only, never on the data, so
    it runs before the ledger is asked. Each of ``k`` releases of sensitivity
    Δ starts at the discrete Laplace scale ``Δ k / ε``: the geometric mechanism
    (Ghosh, Roughgarden & Sundararajan 2009) is then ε/k-DP and the query ε-DP
    by composition. The PLD accountant's discretization can report a hair
    more (its losses are rounded up to a grid of about 1e-4 of ε), so while it
    does, the scales are widened by at least twice the excess, and by a
    relative step that doubles each time, until
    :func:`~fedwarden.privacy.accounting.compute_spend` reports at most ε at
    ``delta``. A query that still overspends with twice the pure-DP noise is
    refused: the accountant has a floor there (its grid, or the RDP bound it
    reports under replace-one neighbours), and more noise would not lower it.
    """
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise QueryError(f"epsilon={epsilon!r}: a query needs a finite epsilon > 0")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise QueryError(f"delta={delta!r}: the delta a query's epsilon is stated at is in (0, 1)")
    shapes = _release_shapes(query, privacy_unit, neighboring)
    pure = Fraction(len(shapes)) / Fraction(epsilon)
    widen = pure
    for attempt in itertools.count():
        releases = tuple(
            Release(name, size, sensitivity, _scale_at_least(sensitivity * widen), step)
            for name, size, sensitivity, step in shapes
        )
        spent = compute_spend([_query_event(releases)], delta, neighboring).epsilon
        if spent <= epsilon:
            return releases
        if widen >= _MAX_WIDENING * pure:
            break
        excess = max(Fraction(spent) / Fraction(epsilon) - 1, _CALIBRATION_STEP * 2**attempt)
        widen = min(widen * (1 + 2 * excess), _MAX_WIDENING * pure)
    raise QueryError(
        f"{query} cannot be calibrated to epsilon={epsilon:g} at delta={delta:g}: the accountant "
        f"reports {spent:.4g} however much noise is added (with replace-one neighbours it reports "
        f"an RDP bound, which has a floor at small epsilon); ask for a larger epsilon or delta"
    )


def _query_event(releases: Sequence[Release]) -> dp_event.DpEvent:
    """The one event a query is charged as: its release, or its releases composed."""
    if len(releases) == 1:
        return releases[0].event
    return dp_event.ComposedDpEvent([release.event for release in releases])


# --- the client half ---------------------------------------------------------------------------


def _column(client: ClientData, feature: Feature) -> FloatArray:
    """The client's training values of ``feature`` (the labels for ``"label"``)."""
    values = client.y_train if feature == "label" else client.x_train[:, feature]
    return np.asarray(values, dtype=np.float64)


def _bounded(rows: int, cap: int | None, source: NoiseSource) -> npt.NDArray[np.intp]:
    """Indices of at most ``cap`` of ``rows`` examples, a uniformly random subset when capped."""
    if cap is None or rows <= cap:
        return np.arange(rows)
    return np.argsort(source.uniform(rows))[:cap]


def _randomized_round(values: FloatArray, step: float, source: NoiseSource) -> IntArray:
    """``values / step`` rounded up with probability equal to its fractional part (unbiased)."""
    scaled = values / step
    floor = np.floor(scaled)
    return (floor + (source.uniform(len(values)) < scaled - floor)).astype(np.int64)


def _bin_counts(values: FloatArray, edges: FloatArray) -> IntArray:
    """Examples per bin; values outside the edges are counted in the first or last bin."""
    index = np.searchsorted(edges, values, side="right") - 1
    return np.bincount(np.clip(index, 0, len(edges) - 2), minlength=len(edges) - 1).astype(np.int64)


def client_contribution(
    query: Query, client: ClientData, *, privacy_unit: PrivacyUnit, source: NoiseSource
) -> tuple[IntArray, ...]:
    """One client's bounded integer contribution to each release of ``query``.

    The client half: at most ``max_contribution`` examples under user-level DP
    (examples whose value is missing, NaN, are skipped), values clipped to the
    query's bounds and put on its grid. In the order of
    :func:`plan_releases`; one privacy unit's contribution never exceeds the
    release's sensitivity in L1.
    """
    cap = query.max_contribution if privacy_unit == "client" else None
    if isinstance(query, Count):
        return (np.array([len(_bounded(client.num_train, cap, source))], dtype=np.int64),)
    column = _column(client, query.feature)
    present = np.flatnonzero(~np.isnan(column))
    values = column[present[_bounded(len(present), cap, source)]]
    count = np.array([len(values)], dtype=np.int64)
    match query:
        case Sum() | Mean():
            step, low, high = _sum_grid(query.lower, query.upper)
            clipped = np.clip(values, query.lower, query.upper)
            grid = np.clip(_randomized_round(clipped, step, source), low, high)
            total = np.array([grid.sum()], dtype=np.int64)
            if isinstance(query, Mean) and query.public_count is None:
                return total, count
            return (total,)
        case Histogram():
            return (_bin_counts(values, np.asarray(query.bins)),)
        case Quantile():
            edges = np.linspace(query.lower, query.upper, query.bins + 1)
            return (_bin_counts(values, edges),)


# --- the server half ---------------------------------------------------------------------------


def _quantiles(counts: IntArray, query: Quantile) -> list[float]:
    """Quantiles read off a noisy histogram's CDF, linear within a bin (negative counts as 0)."""
    mass = np.maximum(counts, 0).astype(np.float64)
    cumulative = np.cumsum(mass)
    width = (query.upper - query.lower) / query.bins
    if cumulative[-1] == 0:
        return [query.lower + level * (query.upper - query.lower) for level in query.q]
    answers = []
    for level in query.q:
        target = level * cumulative[-1]
        index = min(int(np.searchsorted(cumulative, target, side="left")), query.bins - 1)
        before = cumulative[index - 1] if index else 0.0
        inside = (target - before) / mass[index] if mass[index] else 0.0
        answers.append(query.lower + (index + min(max(inside, 0.0), 1.0)) * width)
    return answers


def _estimate(
    query: Query, noisy: Sequence[IntArray], releases: Sequence[Release]
) -> float | list[float]:
    """The answer to ``query`` from its noisy integer releases (post-processing only)."""
    match query:
        case Count():
            return float(noisy[0][0])
        case Sum():
            return float(noisy[0][0]) * releases[0].step
        case Mean():
            total = float(noisy[0][0]) * releases[0].step
            count = query.public_count if query.public_count is not None else noisy[1][0]
            return float(np.clip(total / max(float(count), 1.0), query.lower, query.upper))
        case Histogram():
            return [float(count) for count in noisy[0]]
        case Quantile():
            answers = _quantiles(noisy[0], query)
            return answers[0] if len(answers) == 1 else answers


@dataclass(frozen=True)
class QueryResult:
    """A DP answer and what it cost.

    ``epsilon`` and ``delta`` are what this query spent (the accountant's ε at
    δ for its event); ``noise_scale`` is the standard deviation of the noise on
    the first release (the sum, for a mean; each bin, for histograms), in the
    feature's units; ``releases`` lists every release with its sensitivity and
    scale; ``ledger_epsilon_total`` is the ledger's ε after this query.
    """

    query: Query
    value: float | list[float]
    epsilon: float
    delta: float
    mechanism: str
    privacy_unit: PrivacyUnit
    noise_scale: float
    ledger_epsilon_total: float
    max_contribution: int | None
    releases: tuple[Release, ...] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready values (the query as its string)."""
        return {
            "query": str(self.query),
            "value": self.value,
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": self.mechanism,
            "privacy_unit": self.privacy_unit,
            "noise_scale": self.noise_scale,
            "ledger_epsilon_total": self.ledger_epsilon_total,
            "max_contribution": self.max_contribution,
            "releases": [
                {
                    "name": release.name,
                    "sensitivity": release.sensitivity,
                    "noise_parameter": release.noise_parameter,
                    "noise_std": release.noise_std,
                }
                for release in self.releases
            ],
        }


def _mechanism(query: Query) -> str:
    """A sentence naming the mechanism and paper behind ``query``'s answer."""
    laplace = "discrete Laplace, exact sampler (Canonne, Kamath & Steinke 2020)"
    match query:
        case Mean() if query.public_count is None:
            return f"{laplace} on the sum and the count, epsilon split evenly"
        case Quantile():
            width = (query.upper - query.lower) / query.bins
            return f"{laplace} on a {query.bins}-bin histogram CDF, resolution {width:g}"
        case _:
            return laplace


def _check_query_fits(query: Query, dataset: FederatedDataset) -> None:
    feature = getattr(query, "feature", "label")
    if isinstance(feature, int) and feature >= dataset.num_features:
        raise QueryError(
            f"feature={feature}: data set {dataset.name!r} has features 0 to "
            f"{dataset.num_features - 1}; use one of them or 'label'"
        )


def run_query(
    dataset: FederatedDataset,
    query: Query,
    *,
    ledger: PrivacyLedger,
    epsilon: float,
    delta: float,
    source: NoiseSource,
) -> QueryResult:
    """Answer ``query`` over every client with ε-DP, charged to ``ledger``.

    The ledger is asked first; a query that would overspend is refused with
    :class:`~fedwarden.privacy.ledger.BudgetExceeded` before any client's data
    is read. Then each client's bounded contribution is summed, noise is added
    once (see the module docstring), and the event is charged.
    """
    _check_query_fits(query, dataset)
    unit = ledger.privacy_unit
    releases = plan_releases(
        query, privacy_unit=unit, epsilon=epsilon, delta=delta, neighboring=ledger.neighboring
    )
    event = _query_event(releases)
    ledger.check([event], f"analytics query {query}")
    totals = [np.zeros(release.size, dtype=np.int64) for release in releases]
    for client in dataset.clients.values():
        parts = client_contribution(query, client, privacy_unit=unit, source=source)
        for total, part in zip(totals, parts, strict=True):
            total += part
    noisy = [
        total + discrete_laplace_vector(release.scale, release.size, source)
        for total, release in zip(totals, releases, strict=True)
    ]
    # the index of the last round charged (-1 before any): a query never advances the rounds
    total_spend = ledger.charge(ledger.next_round_index - 1, ANALYTICS_KIND, event, str(query))
    return QueryResult(
        query=query,
        value=_estimate(query, noisy, releases),
        epsilon=compute_spend([event], delta, ledger.neighboring).epsilon,
        delta=delta,
        mechanism=_mechanism(query),
        privacy_unit=unit,
        noise_scale=releases[0].noise_std,
        ledger_epsilon_total=total_spend.epsilon,
        max_contribution=query.max_contribution if unit == "client" else None,
        releases=releases,
    )


def query_command(
    config_path: Path,
    query: str,
    *,
    epsilon: float,
    delta: float,
    ledger_path: Path,
    privacy_unit: PrivacyUnit = "client",
    neighboring: Neighboring = "add_remove",
    budget_changed_by: str | None = None,
) -> QueryResult:
    """What ``fedwarden query CONFIG QUERY`` does: load the config's data and answer one query.

    The ledger at ``ledger_path`` is opened, or created when new, with the
    config's ``privacy.epsilon`` / ``privacy.delta`` as its budget, so queries
    keep drawing on one budget across invocations (a run's own
    ``privacy_ledger.json`` works too, with the run's unit and neighbouring
    relation). The noise is secure unless the config sets
    ``privacy.reproducible_noise`` (test mode: seeded with the config's seed
    plus the number of ledger entries, so each query gets its own noise). A config whose
    budget differs from the ledger's is refused unless ``budget_changed_by`` names who
    changes it.
    """
    from fedwarden.core.config import load_config
    from fedwarden.data.sources import load_dataset

    parsed = parse_query(query)
    config = load_config(config_path)
    if config.privacy.epsilon is None:
        raise QueryError(
            f"{config_path}: queries draw on the privacy budget, and the config sets none: "
            f"set privacy.epsilon (and privacy.delta) in its [privacy] section"
        )
    ledger = PrivacyLedger(
        PrivacyBudget(config.privacy.epsilon, config.privacy.delta),
        privacy_unit=privacy_unit,
        neighboring=neighboring,
        path=ledger_path,
        budget_changed_by=budget_changed_by,
    )
    source = NoiseSource.secure_or_testing(
        config.privacy.reproducible_noise, config.seed + len(ledger.entries)
    )
    dataset = load_dataset(config.data, config.seed)
    return run_query(dataset, parsed, ledger=ledger, epsilon=epsilon, delta=delta, source=source)
