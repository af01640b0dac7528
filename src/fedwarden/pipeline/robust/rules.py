"""The robust rules as pure functions of the round's update matrix, and the passes they share.

Each rule takes the round's updates as the rows of one float32 matrix and
returns its output vector (and, for the selecting rules, the rows it chose);
the package docstring has the table of rules, papers and tolerated attackers.
Distances, norms and dot products accumulate in float64 over column blocks of
the matrix; pairwise distances come from one float32 GEMM per block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedwarden.core.errors import ConfigError, RoundAborted
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.privacy.clipping import CLIP_MARGIN

Matrix = npt.NDArray[np.float32]
"""The round's updates, one client per row, float32, C-contiguous."""
Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]

BLOCK_ELEMENTS = 1 << 21
"""Elements (8 MiB of float32) per column block in the BLAS passes over the matrix."""

SORT_BLOCK_ELEMENTS = 1 << 18
"""Elements (1 MiB of float32, cache-sized) per column block in the coordinate-wise rules."""


# --- parameter checks ---------------------------------------------------------------------


def check_f(rule: str, f: int) -> None:
    """Refuse an ``f`` (Byzantine clients tolerated) that is not a non-negative integer."""
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(
            f"{rule}: f (the number of Byzantine clients tolerated) is {f!r}; "
            "give a non-negative integer"
        )


def check_positive(rule: str, field: str, value: float) -> None:
    """Refuse a ``field`` of ``rule`` that is not a positive finite number."""
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{rule}: {field} is {value!r}; give a positive finite number")


def _require_updates(rule: str, arrived: int, needed: int, why: str) -> None:
    """Raise :class:`RoundAborted` when fewer than ``needed`` updates arrived."""
    if arrived < needed:
        raise RoundAborted(
            f"{rule} needs at least {needed} updates ({why}), but {arrived} arrived; "
            "lower f or wait for a larger cohort"
        )


# --- blocked passes over the matrix -------------------------------------------------------


def _column_blocks(rows: int, size: int, elements: int = BLOCK_ELEMENTS) -> Iterator[slice]:
    """Column slices of about ``elements`` elements each (all ``rows`` rows of a block)."""
    width = max(1024, elements // max(rows, 1))
    for start in range(0, size, width):
        yield slice(start, min(start + width, size))


def _coordinatewise(
    matrix: Matrix, reduce: Callable[[Matrix], npt.NDArray[Any]], rows: Indices | None = None
) -> Vector:
    """Apply ``reduce`` to each column block, transposed so a coordinate's values are a row.

    ``reduce`` gets a fresh C-contiguous ``(block width, clients)`` copy it may
    overwrite, and returns one value per coordinate. ``rows`` picks clients.
    """
    count = matrix.shape[0] if rows is None else rows.size
    out = np.empty(matrix.shape[1], dtype=VECTOR_DTYPE)
    for columns in _column_blocks(count, matrix.shape[1], SORT_BLOCK_ELEMENTS):
        block = matrix[:, columns] if rows is None else matrix[rows, columns]
        out[columns] = reduce(np.array(block.T, order="C"))  # a copy, even when .T is contiguous
    return out


def distances_to(matrix: Matrix, point: Vector) -> Floats:
    """L2 distance of each row to ``point``."""
    squared = np.zeros(matrix.shape[0])
    for columns in _column_blocks(*matrix.shape):
        difference = matrix[:, columns] - point[columns]
        squared += np.einsum("ij,ij->i", difference, difference)
    return np.sqrt(squared)


def norms_and_dots(matrix: Matrix, point: Vector) -> tuple[Floats, Floats]:
    """L2 norm of each row and each row's dot product with ``point``."""
    squared = np.zeros(matrix.shape[0])
    dots = np.zeros(matrix.shape[0])
    for columns in _column_blocks(*matrix.shape):
        block = matrix[:, columns]
        squared += np.einsum("ij,ij->i", block, block)
        dots += block @ point[columns]
    return np.sqrt(squared), dots


def l2_norm(vector: Vector) -> float:
    """The L2 norm of ``vector``, accumulated in float64."""
    return float(np.linalg.norm(vector.astype(np.float64)))


def _weighted_rows(matrix: Matrix, weights: Floats) -> Vector:
    """``sum_i weights[i] * matrix[i]`` as float32 (one BLAS matrix-vector product)."""
    return np.asarray(weights.astype(np.float32) @ matrix, dtype=VECTOR_DTYPE)


# --- the rules, as pure functions ---------------------------------------------------------


def coordinate_median(matrix: Matrix) -> Vector:
    """Coordinate-wise median of the rows (Yin et al. 2018, Definition 1).

    Sorts each block of coordinates (SIMD sort, faster than selection here) and
    takes the middle value, or the float32 mean of the middle pair for an even
    count: the same arithmetic as ``np.median(matrix, axis=0)``, so equal to it.
    """
    rows = matrix.shape[0]
    upper = rows // 2

    def reduce(block: Matrix) -> Matrix:
        block.sort(axis=1)
        if rows % 2:
            return block[:, upper]
        return (block[:, upper - 1] + block[:, upper]) / np.float32(2.0)

    return _coordinatewise(matrix, reduce)


def trimmed_count(rows: int, beta: float) -> int:
    """Updates cut at each end by the beta-trimmed mean: ``floor(beta * rows)``, as SciPy does."""
    return int(beta * rows)


def trimmed_mean(matrix: Matrix, beta: float) -> Vector:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2).

    At each coordinate the ``k = floor(beta n)`` largest and ``k`` smallest
    values are dropped and the rest averaged (in float64), exactly the
    definition of ``scipy.stats.trim_mean(matrix, beta, axis=0)``.
    """
    check_beta(beta)
    rows = matrix.shape[0]
    cut = trimmed_count(rows, beta)

    def reduce(block: Matrix) -> Floats:
        if cut:
            block.sort(axis=1)
        return block[:, cut : rows - cut].mean(axis=1, dtype=np.float64)

    return _coordinatewise(matrix, reduce)


def check_beta(beta: float) -> None:
    """Refuse a trimmed-mean ``beta`` outside [0, 0.5)."""
    if not 0.0 <= beta < 0.5:
        raise ConfigError(
            f"trimmed mean: beta is {beta!r}; it is the fraction cut at each end and must be "
            "in [0, 0.5)"
        )


def pairwise_squared_distances(matrix: Matrix) -> Floats:
    """``D[i, j] = ||x_i - x_j||^2`` for all rows, from the Gram matrix of the centered rows.

    ``||x_i - x_j||^2 = G_ii + G_jj - 2 G_ij`` with ``G = C C^T`` and ``C``
    the rows minus their coordinate-wise median: distances do not change, and
    the honest rows' entries keep their own scale however large a Byzantine
    row is (centering on the mean would let one huge row swamp them in
    rounding). ``G`` is one float32 GEMM per column block, summed in float64.
    """
    rows, size = matrix.shape
    center = coordinate_median(matrix)
    gram = np.zeros((rows, rows))
    for columns in _column_blocks(rows, size):
        centered = matrix[:, columns] - center[columns]
        gram += centered @ centered.T
    diagonal = np.diag(gram)
    distances = diagonal[:, None] + diagonal[None, :] - 2.0 * gram
    np.maximum(distances, 0.0, out=distances)
    np.fill_diagonal(distances, 0.0)
    return distances


def krum_scores(distances: Floats, f: int) -> Floats:
    """Krum's score of each row: the sum of its ``n - f - 2`` smallest squared distances.

    Blanchard et al. 2017, Section 4: ``s(i) = sum_{i -> j} ||V_i - V_j||^2``
    over the ``n - f - 2`` closest other vectors. The count is floored at 0
    (Bulyan runs Krum on shrinking sets, where every score is then 0).
    """
    rows = distances.shape[0]
    neighbours = max(0, rows - f - 2)
    if neighbours == 0:
        return np.zeros(rows)
    others = distances.copy()
    np.fill_diagonal(others, np.inf)
    nearest = np.partition(others, neighbours - 1, axis=1)[:, :neighbours]
    return np.asarray(nearest.sum(axis=1), dtype=np.float64)


def krum_minimum_updates(f: int) -> int:
    """Updates Krum needs to tolerate ``f`` Byzantine ones: ``2f + 3`` (``2f + 2 < n``)."""
    return 2 * f + 3


def multi_krum(matrix: Matrix, f: int, m: int = 1) -> tuple[Vector, Indices]:
    """Mean of the ``m`` rows with the lowest Krum scores, and their indices (best first).

    Blanchard et al. 2017: Krum (Section 4) is ``m = 1`` and returns that row
    itself; Multi-Krum (Section 5) averages the ``m`` best. ``m`` is capped at
    ``n - f``. Ties go to the lower row index. Raises :class:`RoundAborted`
    when ``n < 2f + 3``.
    """
    check_f("krum", f)
    rows = matrix.shape[0]
    _require_updates(f"krum with f={f}", rows, krum_minimum_updates(f), "2f + 3")
    scores = krum_scores(pairwise_squared_distances(matrix), f)
    selected = np.argsort(scores, kind="stable")[: min(m, rows - f)]
    if selected.size == 1:
        return matrix[selected[0]].copy(), selected
    weights = np.zeros(rows)
    weights[selected] = 1.0 / selected.size
    return _weighted_rows(matrix, weights), selected


def bulyan_minimum_updates(f: int) -> int:
    """Updates Bulyan needs to tolerate ``f`` Byzantine ones: ``4f + 3``."""
    return 4 * f + 3


def bulyan(matrix: Matrix, f: int) -> tuple[Vector, Indices]:
    """Bulyan over Krum (El Mhamdi et al. 2018, Section 4), and the rows it selected.

    1. Selection: ``theta = n - 2f`` times, run Krum on the rows not yet
       selected and move its choice into the selection set.
    2. Aggregation: at each coordinate, average the ``beta = theta - 2f``
       selected values closest to the selected values' median.

    Raises :class:`RoundAborted` when ``n < 4f + 3``.
    """
    check_f("bulyan", f)
    rows = matrix.shape[0]
    _require_updates(f"bulyan with f={f}", rows, bulyan_minimum_updates(f), "4f + 3")
    distances = pairwise_squared_distances(matrix)
    remaining = list(range(rows))
    selected: list[int] = []
    for _ in range(rows - 2 * f):
        scores = krum_scores(distances[np.ix_(remaining, remaining)], f)
        selected.append(remaining.pop(int(np.argmin(scores))))
    chosen = np.asarray(selected, dtype=np.intp)
    count = chosen.size
    closest = count - 2 * f
    upper = count // 2

    def reduce(block: Matrix) -> Floats:
        # Sorted, the ``closest`` values nearest the median are a contiguous window: the one
        # whose farther end is nearest the median. Window sums come from float64 prefix sums.
        block.sort(axis=1)
        if count % 2:
            median = block[:, upper].astype(np.float64)
        else:
            median = (block[:, upper - 1].astype(np.float64) + block[:, upper]) / 2.0
        reach = np.stack(
            [
                np.maximum(median - block[:, start], block[:, start + closest - 1] - median)
                for start in range(count - closest + 1)
            ],
            axis=1,
        )
        start = np.argmin(reach, axis=1)
        prefix = np.zeros((block.shape[0], count + 1))
        np.cumsum(block, axis=1, dtype=np.float64, out=prefix[:, 1:])
        coordinate = np.arange(block.shape[0])
        return (prefix[coordinate, start + closest] - prefix[coordinate, start]) / closest

    return _coordinatewise(matrix, reduce, rows=chosen), chosen


@dataclass(frozen=True)
class WeiszfeldResult:
    """The smoothed geometric median and how the iteration ended."""

    median: Vector
    iterations: int
    converged: bool


def geometric_median(
    matrix: Matrix,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-5,
    smoothing: float = 1e-6,
) -> WeiszfeldResult:
    """Geometric median of the rows by the smoothed Weiszfeld algorithm.

    Pillutla, Kakade & Harchaoui 2022 ("Robust Aggregation for Federated
    Learning", RFA), Algorithm 2 with equal weights:
    ``v <- sum_i b_i x_i / sum_i b_i`` with ``b_i = 1 / max(nu, ||v - x_i||)``.
    Two changes make the iteration itself robust. It starts from the
    coordinate-wise median, not the mean, which outliers can drag anywhere.
    It stops when a step moves ``v`` by at most ``tolerance`` times the median
    distance from ``v`` to the rows, or after ``max_iterations`` steps: RFA's
    test (a small relative change of the objective) is dominated by the
    largest distances, so an attacker sending larger vectors would stop the
    iteration earlier and further from the honest updates.
    """
    median = coordinate_median(matrix)
    for iteration in range(1, max_iterations + 1):
        distances = distances_to(matrix, median)
        weights = 1.0 / np.maximum(distances, smoothing)
        following = _weighted_rows(matrix, weights / weights.sum())
        step = l2_norm(following - median)
        median = following
        if step <= tolerance * float(np.median(distances)):
            return WeiszfeldResult(median, iteration, True)
    return WeiszfeldResult(median, max_iterations, False)


def clipping_factors(norms: Floats, bound: float) -> Floats:
    """``min(1, bound / norm)`` per row, undershooting by :data:`CLIP_MARGIN` when it clips."""
    factors = np.ones_like(norms)
    over = norms > bound
    factors[over] = bound / norms[over] * (1.0 - CLIP_MARGIN)
    return factors


def centered_clipping(matrix: Matrix, center: Vector, *, tau: float, iterations: int = 1) -> Vector:
    """Centered clipping around ``center`` (Karimireddy, He & Jaggi 2021, Section 4, CC).

    ``iterations`` times: ``v <- v + (1/n) sum_i (x_i - v) min(1, tau / ||x_i - v||)``.
    Through one client a step moves ``v`` by at most ``tau / n``, and a step is
    1-Lipschitz in ``v``, so replacing one client's update by anything at all
    changes the result by at most ``2 * iterations * tau / n``.
    """
    rows = matrix.shape[0]
    point = center.astype(VECTOR_DTYPE, copy=True)
    for _ in range(iterations):
        factors = clipping_factors(distances_to(matrix, point), tau)
        step = _weighted_rows(matrix, factors / rows) - np.float32(factors.sum() / rows) * point
        point += step
    return point


def norm_bounded_mean(matrix: Matrix, bound: float) -> Vector:
    """Mean of the rows after clipping each to L2 norm ``bound`` (Sun et al. 2019, Section 3)."""
    rows = matrix.shape[0]
    norms, _ = norms_and_dots(matrix, np.zeros(matrix.shape[1], dtype=VECTOR_DTYPE))
    return _weighted_rows(matrix, clipping_factors(norms, bound) / rows)


def fltrust(matrix: Matrix, server_update: Vector) -> tuple[Vector, Floats]:
    """FLTrust's trust-weighted mean and the trust scores (Cao et al. 2021, Algorithm 2).

    ``TS_i = ReLU(cos(g_i, g_0))`` against the server's update ``g_0`` computed
    on its clean root set; each ``g_i`` is rescaled to ``||g_0||`` and the
    result is ``sum_i TS_i (||g_0|| / ||g_i||) g_i / sum_i TS_i``. An update of
    norm 0 gets trust 0. Raises :class:`RoundAborted` when ``g_0`` is 0 or no
    update has positive trust.
    """
    server_norm = l2_norm(server_update)
    if not server_norm > 0:
        raise RoundAborted(
            "fltrust: the server's root-set update has norm 0, so no client can be trusted; "
            "check the root data set and the server's training step"
        )
    norms, dots = norms_and_dots(matrix, server_update)
    safe_norms = np.where(norms > 0, norms, 1.0)
    trust = np.where(norms > 0, np.maximum(dots / (safe_norms * server_norm), 0.0), 0.0)
    total = float(trust.sum())
    if not total > 0:
        raise RoundAborted(
            f"fltrust: none of the {matrix.shape[0]} updates points within 90 degrees of the "
            "server's root-set update (every trust score is 0)"
        )
    return _weighted_rows(matrix, trust * server_norm / safe_norms / total), trust
