"""The discrete Laplace mechanism behind every analytics query: releases, client half, estimate.

:func:`plan_releases` calibrates the noisy integer releases that answer a
query before any data is read; :func:`client_contribution` is the client
half (a bounded integer contribution per release); :func:`estimate` turns the
noisy releases into the answer (post-processing only). The module docstring
of :mod:`fedwarden.privacy.analytics` states the mechanism, its papers and
its sensitivities.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from fedwarden.data.dataset import ClientData
from fedwarden.privacy.accounting import Neighboring, compute_spend
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.analytics_queries import (
    Count,
    Feature,
    Histogram,
    Mean,
    Quantile,
    Query,
    QueryError,
    Sum,
)
from fedwarden.privacy.ledger import PrivacyUnit
from fedwarden.privacy.randomness import NoiseSource

__all__ = [
    "SUM_GRID_STEPS",
    "Release",
    "client_contribution",
    "estimate",
    "plan_releases",
    "query_event",
]

SUM_GRID_STEPS = 256
"""A sum's grid has this many steps between ``lower`` and ``upper``."""

_SCALE_DENOMINATOR = 1 << 16
_CALIBRATION_STEP = Fraction(1, 100_000)
_MAX_WIDENING = 2

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


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
        spent = compute_spend([query_event(releases)], delta, neighboring).epsilon
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


def query_event(releases: Sequence[Release]) -> dp_event.DpEvent:
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


def estimate(
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
