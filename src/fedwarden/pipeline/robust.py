"""Byzantine-robust aggregation, per-client anomaly scores, and client reputation.

A robust aggregator replaces the streaming mean when some clients may send
arbitrary (Byzantine) updates. Each one buffers the round's updates as the
rows of ONE preallocated float32 matrix (rows = the cohort size given to
``start``, grown only if more updates arrive) and computes its rule with
vectorised NumPy/BLAS over that matrix: Python loops run over clients,
iterations or column blocks, never over coordinates. Because the rule must see
every update, :attr:`RobustAggregator.needs_individual_updates` is true and a
pipeline that also holds secure aggregation is refused when it is built.

The rules, each a pure function of the matrix with an aggregator around it:

=====================  =============================================  ==========================
rule                   paper                                          tolerates f Byzantine of n
=====================  =============================================  ==========================
coordinate median      Yin et al. 2018, Definition 1                  f < n / 2
trimmed mean (beta)    Yin et al. 2018, Definition 2                  f <= floor(beta n)
Krum, Multi-Krum       Blanchard et al. 2017, Sections 4 and 5        n >= 2f + 3
Bulyan                 El Mhamdi et al. 2018, Section 4               n >= 4f + 3
geometric median       Pillutla et al. 2022 (RFA), Algorithm 2        f < n / 2
centered clipping      Karimireddy et al. 2021, Section 4 (CC)        small f / n (see class)
norm-bounded mean      Sun et al. 2019, Section 3                     any f; bounds influence
FLTrust                Cao et al. 2021, Algorithm 2                   any f; trusts a root set
=====================  =============================================  ==========================

**Weighting.** Robust rules are unweighted: every update counts once and the
number of examples a client claims is ignored (it is not verifiable, and a
weight is exactly what a Byzantine client would inflate). ``Aggregate.total_weight``
is the number of updates the rule's output is built from (1 for Krum, ``m``
for Multi-Krum, ``n - 2 floor(beta n)`` per coordinate for the trimmed mean,
``n`` otherwise); ``Aggregate.num_updates`` is the number that arrived.

When a rule cannot run with the updates that arrived (Krum with
``n <= 2f + 2``, Bulyan with ``n < 4f + 3``, FLTrust with no trusted update),
``result`` raises :class:`RoundAborted` with the numbers and the server leaves
the model unchanged. ``Krum.check`` and ``Bulyan.check`` make the same test
against the configured cohort size at configuration time (``ConfigError``).

**Anomaly scores** (:func:`anomaly_scores`): after every round each client's
update is measured against the round's robust center (the rule's output):
L2 distance, cosine similarity, and norm over the median norm. A client is
flagged by :class:`AnomalyRule` (robust z-score of the distance, optionally
cosine and norm-ratio thresholds). Each aggregator keeps the last round's
scores in ``last_scores``; :class:`Reputation` accumulates flags across rounds
and names the clients to quarantine, following the advice "if one node's
updates are statistical outliers, investigate before including it".

Distances, norms and dot products accumulate in float64 over column blocks of
the float32 matrix; pairwise distances come from the Gram matrix of the
updates centered on their coordinate-wise median (one float32 GEMM per block,
summed in float64), so Krum's O(n^2 d) work is a single BLAS pass.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy.linalg.blas import sdot

from fedwarden.core.errors import ConfigError, PipelineError, RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.pipeline.stage import Aggregate, Aggregator
from fedwarden.privacy.clipping import CLIP_MARGIN

Matrix = npt.NDArray[np.float32]
"""The round's updates, one client per row, float32, C-contiguous."""
Floats = npt.NDArray[np.float64]
Indices = npt.NDArray[np.intp]

BLOCK_ELEMENTS = 1 << 21
"""Elements (8 MiB of float32) per column block in the BLAS passes over the matrix."""

SORT_BLOCK_ELEMENTS = 1 << 18
"""Elements (1 MiB of float32, cache-sized) per column block in the coordinate-wise rules."""

MAD_TO_SIGMA = 0.6745
"""Iglewicz & Hoaglin (1993)'s constant: ``0.6745 * (x - median) / MAD`` is the modified
z-score, comparable to a standard normal z for normal data."""

MEAN_AD_TO_SIGMA = 0.7979
"""Iglewicz & Hoaglin's fallback when MAD is 0: ``(x - median) / (1.253314 * meanAD)``."""


# --- parameter checks ---------------------------------------------------------------------


def _check_f(rule: str, f: int) -> None:
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise ConfigError(
            f"{rule}: f (the number of Byzantine clients tolerated) is {f!r}; "
            "give a non-negative integer"
        )


def _check_positive(rule: str, field: str, value: float) -> None:
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


def _distances_to(matrix: Matrix, point: Vector) -> Floats:
    """L2 distance of each row to ``point``."""
    squared = np.zeros(matrix.shape[0])
    for columns in _column_blocks(*matrix.shape):
        difference = matrix[:, columns] - point[columns]
        squared += np.einsum("ij,ij->i", difference, difference)
    return np.sqrt(squared)


def _norms_and_dots(matrix: Matrix, point: Vector) -> tuple[Floats, Floats]:
    """L2 norm of each row and each row's dot product with ``point``."""
    squared = np.zeros(matrix.shape[0])
    dots = np.zeros(matrix.shape[0])
    for columns in _column_blocks(*matrix.shape):
        block = matrix[:, columns]
        squared += np.einsum("ij,ij->i", block, block)
        dots += block @ point[columns]
    return np.sqrt(squared), dots


def _norm(vector: Vector) -> float:
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
    _check_beta(beta)
    rows = matrix.shape[0]
    cut = trimmed_count(rows, beta)

    def reduce(block: Matrix) -> Floats:
        if cut:
            block.sort(axis=1)
        return block[:, cut : rows - cut].mean(axis=1, dtype=np.float64)

    return _coordinatewise(matrix, reduce)


def _check_beta(beta: float) -> None:
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
    _check_f("krum", f)
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
    _check_f("bulyan", f)
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
        distances = _distances_to(matrix, median)
        weights = 1.0 / np.maximum(distances, smoothing)
        following = _weighted_rows(matrix, weights / weights.sum())
        step = _norm(following - median)
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
        factors = clipping_factors(_distances_to(matrix, point), tau)
        step = _weighted_rows(matrix, factors / rows) - np.float32(factors.sum() / rows) * point
        point += step
    return point


def norm_bounded_mean(matrix: Matrix, bound: float) -> Vector:
    """Mean of the rows after clipping each to L2 norm ``bound`` (Sun et al. 2019, Section 3)."""
    rows = matrix.shape[0]
    norms, _ = _norms_and_dots(matrix, np.zeros(matrix.shape[1], dtype=VECTOR_DTYPE))
    return _weighted_rows(matrix, clipping_factors(norms, bound) / rows)


def fltrust(matrix: Matrix, server_update: Vector) -> tuple[Vector, Floats]:
    """FLTrust's trust-weighted mean and the trust scores (Cao et al. 2021, Algorithm 2).

    ``TS_i = ReLU(cos(g_i, g_0))`` against the server's update ``g_0`` computed
    on its clean root set; each ``g_i`` is rescaled to ``||g_0||`` and the
    result is ``sum_i TS_i (||g_0|| / ||g_i||) g_i / sum_i TS_i``. An update of
    norm 0 gets trust 0. Raises :class:`RoundAborted` when ``g_0`` is 0 or no
    update has positive trust.
    """
    server_norm = _norm(server_update)
    if not server_norm > 0:
        raise RoundAborted(
            "fltrust: the server's root-set update has norm 0, so no client can be trusted; "
            "check the root data set and the server's training step"
        )
    norms, dots = _norms_and_dots(matrix, server_update)
    safe_norms = np.where(norms > 0, norms, 1.0)
    trust = np.where(norms > 0, np.maximum(dots / (safe_norms * server_norm), 0.0), 0.0)
    total = float(trust.sum())
    if not total > 0:
        raise RoundAborted(
            f"fltrust: none of the {matrix.shape[0]} updates points within 90 degrees of the "
            "server's root-set update (every trust score is 0)"
        )
    return _weighted_rows(matrix, trust * server_norm / safe_norms / total), trust


# --- anomaly scores -----------------------------------------------------------------------


@dataclass(frozen=True)
class AnomalyRule:
    """When a client's update counts as a statistical outlier this round.

    A client is flagged when any enabled test fires:

    * ``distance_z``: its distance to the robust center has a modified
      z-score ``0.6745 (d - median(d)) / MAD(d)`` above the threshold
      (Iglewicz & Hoaglin 1993 recommend 3.5). Only large distances count.
    * ``cosine``: its cosine similarity to the center is below ``min_cosine``.
    * ``norm_ratio``: its norm over the median norm is above ``max_norm_ratio``.

    ``None`` disables a test. Cosine and norm tests are off by default: with
    non-IID clients honest updates can point away from the center.
    """

    distance_z_threshold: float | None = 3.5
    min_cosine: float | None = None
    max_norm_ratio: float | None = None

    def __post_init__(self) -> None:
        """Refuse thresholds that cannot mean anything."""
        if self.distance_z_threshold is not None:
            _check_positive("anomaly rule", "distance_z_threshold", self.distance_z_threshold)
        if self.max_norm_ratio is not None:
            _check_positive("anomaly rule", "max_norm_ratio", self.max_norm_ratio)
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ConfigError(
                f"anomaly rule: min_cosine is {self.min_cosine!r}; a cosine lies in [-1, 1]"
            )


@dataclass(frozen=True)
class ClientScore:
    """One client's update measured against one round's robust center."""

    client_id: str
    distance: float
    """L2 distance to the center."""
    cosine: float
    """Cosine similarity to the center (0 when either has norm 0)."""
    norm_ratio: float
    """Its norm over the median norm of the round's updates."""
    distance_z: float
    """Modified z-score of ``distance`` (median and MAD over the round)."""
    reasons: tuple[str, ...]
    """Tests of the :class:`AnomalyRule` that fired: ``distance_z``, ``cosine``, ``norm_ratio``."""

    @property
    def flagged(self) -> bool:
        """Whether any test fired."""
        return bool(self.reasons)


def robust_z_scores(values: Floats) -> Floats:
    """Modified z-scores ``0.6745 (x - median) / MAD`` (Iglewicz & Hoaglin 1993).

    When MAD is 0 (over half the values equal) the mean absolute deviation
    stands in (``0.7979 (x - median) / meanAD``); when that is 0 too, all are 0.
    """
    centre = float(np.median(values))
    deviations = np.abs(values - centre)
    mad = float(np.median(deviations))
    if mad > 0:
        return MAD_TO_SIGMA * (values - centre) / mad
    mean_deviation = float(deviations.mean())
    if mean_deviation > 0:
        return MEAN_AD_TO_SIGMA * (values - centre) / mean_deviation
    return np.zeros_like(values)


def anomaly_scores(
    matrix: Matrix, client_ids: Sequence[str], center: Vector, rule: AnomalyRule
) -> dict[str, ClientScore]:
    """Each client's distance, cosine and norm ratio to ``center``, flagged by ``rule``.

    ``client_ids[i]`` sent row ``i`` of ``matrix``.
    """
    distances = _distances_to(matrix, center)
    norms, dots = _norms_and_dots(matrix, center)
    center_norm = _norm(center)
    denominators = norms * center_norm
    cosines = np.divide(dots, denominators, out=np.zeros_like(dots), where=denominators > 0)
    median_norm = float(np.median(norms))
    ratios = norms / median_norm if median_norm > 0 else np.where(norms > 0, np.inf, 1.0)
    z_scores = robust_z_scores(distances)
    scores = {}
    for row, client_id in enumerate(client_ids):
        reasons = []
        if rule.distance_z_threshold is not None and z_scores[row] > rule.distance_z_threshold:
            reasons.append("distance_z")
        if rule.min_cosine is not None and cosines[row] < rule.min_cosine:
            reasons.append("cosine")
        if rule.max_norm_ratio is not None and ratios[row] > rule.max_norm_ratio:
            reasons.append("norm_ratio")
        scores[client_id] = ClientScore(
            client_id,
            float(distances[row]),
            float(cosines[row]),
            float(ratios[row]),
            float(z_scores[row]),
            tuple(reasons),
        )
    return scores


# --- aggregators --------------------------------------------------------------------------


class RobustAggregator(Aggregator, ABC):
    """Buffer the round's updates as matrix rows, reduce them with a robust rule, score clients.

    Subclasses implement :meth:`_reduce`. Updates are unweighted (see the
    module docstring). ``add`` refuses an update of the wrong size, with NaN
    or Inf, with a norm beyond float32 range, or a second one from the same
    client. After ``result``, ``last_scores`` holds each client's
    :class:`ClientScore` against the round's output (the robust center).
    """

    needs_individual_updates = True

    def __init__(self, *, anomaly: AnomalyRule | None = None) -> None:
        self.anomaly = AnomalyRule() if anomaly is None else anomaly
        self.last_scores: dict[str, ClientScore] = {}
        self._matrix: Matrix = np.empty((0, 0), dtype=VECTOR_DTYPE)
        self._client_ids: list[str] = []
        self._seen: set[str] = set()
        self._round_index = -1

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Prepare a ``len(cohort)`` x ``size`` float32 matrix (reused when the shape repeats)."""
        if self._matrix.shape != (len(cohort), size):
            self._matrix = np.empty((len(cohort), size), dtype=VECTOR_DTYPE)
        self._client_ids = []
        self._seen = set()
        self._round_index = -1
        self.last_scores = {}

    def add(self, update: ClientUpdate) -> None:
        """Copy the update into the next row; grow the matrix if the cohort was exceeded."""
        size = self._matrix.shape[1]
        who = f"update from client {update.client_id!r} in round {update.round_index}"
        vector = np.asarray(update.update)
        if vector.shape != (size,):
            raise UpdateRejected(
                "shape", f"{who} has shape {vector.shape}; the model needs ({size},)"
            )
        if update.client_id in self._seen:
            raise UpdateRejected(
                "duplicate",
                f"{who} is the client's second update this round; a robust rule counts each "
                "client once, so only the first is kept",
            )
        row = len(self._client_ids)
        if row == self._matrix.shape[0]:
            self._grow()
        self._matrix[row] = vector
        squared_norm = float(sdot(self._matrix[row], self._matrix[row])) if size else 0.0
        if not math.isfinite(squared_norm):
            if not np.isfinite(self._matrix[row]).all():
                raise UpdateRejected("non_finite", f"{who} contains NaN or Inf values")
            raise UpdateRejected(
                "norm_bound", f"{who} has an L2 norm beyond float32 range (above 1.8e19)"
            )
        self._client_ids.append(update.client_id)
        self._seen.add(update.client_id)
        self._round_index = update.round_index

    def _grow(self) -> None:
        rows, size = self._matrix.shape
        grown = np.empty((max(1, 2 * rows), size), dtype=VECTOR_DTYPE)
        grown[:rows] = self._matrix
        self._matrix = grown

    def result(self) -> Aggregate:
        """Reduce the buffered rows with the rule, then score every client against the output."""
        count = len(self._client_ids)
        if count == 0:
            raise RoundAborted(f"{self.name}: no update arrived this round")
        matrix = self._matrix[:count]
        center, used = self._reduce(matrix)
        self.last_scores = anomaly_scores(matrix, self._client_ids, center, self.anomaly)
        return Aggregate(center, float(used), count)

    @abstractmethod
    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        """The rule's output for the round's rows, and how many updates it is built from."""

    def client_scores(self) -> Mapping[str, ClientScore]:
        """The last round's scores, one per client whose update arrived."""
        return self.last_scores

    def flagged(self) -> list[str]:
        """Clients flagged in the last round, in arrival order."""
        return [cid for cid, score in self.last_scores.items() if score.flagged]

    def settings(self) -> dict[str, Any]:
        """The rule's parameters, for the run summary."""
        return {}

    def report(self) -> dict[str, Any]:
        """The rule, its parameters and the clients flagged in the last round."""
        return {"robust_rule": self.name, **self.settings(), "flagged_last_round": self.flagged()}


class CoordinateMedian(RobustAggregator):
    """Coordinate-wise median (Yin et al. 2018, Definition 1).

    Assumes ``f < n / 2``: at each coordinate a Byzantine minority cannot move
    the median outside the range of honest values.
    """

    name: ClassVar[str] = "median"

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        return coordinate_median(matrix), matrix.shape[0]


class TrimmedMean(RobustAggregator):
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018, Definition 2).

    Drops ``floor(beta n)`` values at each end of every coordinate; assumes
    ``f <= floor(beta n)`` so that every Byzantine value can be trimmed.
    Equals ``scipy.stats.trim_mean(updates, beta, axis=0)``.
    """

    name: ClassVar[str] = "trimmed_mean"

    def __init__(self, beta: float, *, anomaly: AnomalyRule | None = None) -> None:
        _check_beta(beta)
        super().__init__(anomaly=anomaly)
        self.beta = beta

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        rows = matrix.shape[0]
        return trimmed_mean(matrix, self.beta), rows - 2 * trimmed_count(rows, self.beta)

    def settings(self) -> dict[str, Any]:
        """``beta``."""
        return {"beta": self.beta}


class Krum(RobustAggregator):
    """Krum (Blanchard et al. 2017, Section 4): the update closest to its n - f - 2 neighbours.

    Assumes at most ``f`` Byzantine updates and ``n >= 2f + 3`` (the paper's
    ``2f + 2 < n``); a round with fewer updates is aborted. Scores use
    pairwise squared distances from the Gram matrix.
    """

    name: ClassVar[str] = "krum"

    def __init__(self, f: int, *, anomaly: AnomalyRule | None = None) -> None:
        _check_f(self.name, f)
        super().__init__(anomaly=anomaly)
        self.f = f
        self.last_selected: list[str] = []

    @classmethod
    def check(cls, n: int, f: int) -> None:
        """Refuse, at configuration time, a cohort of ``n`` that cannot tolerate ``f``."""
        _check_f(cls.name, f)
        needed = krum_minimum_updates(f)
        if n < needed:
            raise ConfigError(
                f"{cls.name} with f={f} needs a cohort of at least 2f + 3 = {needed} clients, "
                f"but the cohort is {n}; lower f or sample more clients"
            )

    def _select(self) -> int:
        return 1

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        output, selected = multi_krum(matrix, self.f, self._select())
        self.last_selected = [self._client_ids[row] for row in selected]
        return output, selected.size

    def settings(self) -> dict[str, Any]:
        """``f`` and the clients selected last round."""
        return {"f": self.f, "selected_last_round": list(self.last_selected)}


class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017, Section 5): the mean of the m best-scoring updates.

    Same assumption as Krum (``n >= 2f + 3``); ``m`` is capped at ``n - f``.
    """

    name: ClassVar[str] = "multi_krum"

    def __init__(self, f: int, m: int, *, anomaly: AnomalyRule | None = None) -> None:
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ConfigError(f"multi_krum: m is {m!r}; give the number of updates to average")
        super().__init__(f, anomaly=anomaly)
        self.m = m

    def _select(self) -> int:
        return self.m

    def settings(self) -> dict[str, Any]:
        """``f``, ``m`` and the clients selected last round."""
        return {**super().settings(), "m": self.m}


class Bulyan(RobustAggregator):
    """Bulyan over Krum (El Mhamdi, Guerraoui & Rouault 2018, Section 4).

    Assumes at most ``f`` Byzantine updates and ``n >= 4f + 3``; a round with
    fewer updates is aborted, and :meth:`check` refuses such a configuration.
    """

    name: ClassVar[str] = "bulyan"

    def __init__(self, f: int, *, anomaly: AnomalyRule | None = None) -> None:
        _check_f(self.name, f)
        super().__init__(anomaly=anomaly)
        self.f = f

    @classmethod
    def check(cls, n: int, f: int) -> None:
        """Refuse, at configuration time, a cohort of ``n`` that cannot tolerate ``f``."""
        _check_f(cls.name, f)
        needed = bulyan_minimum_updates(f)
        if n < needed:
            raise ConfigError(
                f"{cls.name} with f={f} needs a cohort of at least 4f + 3 = {needed} clients, "
                f"but the cohort is {n}; lower f to at most {max(0, (n - 3) // 4)} or sample "
                f"at least {needed} clients"
            )

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        output, selected = bulyan(matrix, self.f)
        return output, selected.size - 2 * self.f

    def settings(self) -> dict[str, Any]:
        """``f``."""
        return {"f": self.f}


class GeometricMedian(RobustAggregator):
    """Geometric median by smoothed Weiszfeld (RFA: Pillutla et al. 2022, Algorithm 2).

    Breakdown point 1/2: assumes ``f < n / 2``. ``last_iterations`` and
    ``last_converged`` say how the last round's iteration ended.
    """

    name: ClassVar[str] = "geometric_median"

    def __init__(
        self,
        *,
        max_iterations: int = 100,
        tolerance: float = 1e-5,
        smoothing: float = 1e-6,
        anomaly: AnomalyRule | None = None,
    ) -> None:
        if max_iterations < 1:
            raise ConfigError(f"geometric_median: max_iterations is {max_iterations}; give >= 1")
        _check_positive(self.name, "tolerance", tolerance)
        _check_positive(self.name, "smoothing", smoothing)
        super().__init__(anomaly=anomaly)
        self.max_iterations = max_iterations
        self.tolerance = tolerance
        self.smoothing = smoothing
        self.last_iterations = 0
        self.last_converged = False

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        found = geometric_median(
            matrix,
            max_iterations=self.max_iterations,
            tolerance=self.tolerance,
            smoothing=self.smoothing,
        )
        self.last_iterations = found.iterations
        self.last_converged = found.converged
        return found.median, matrix.shape[0]

    def settings(self) -> dict[str, Any]:
        """Iteration settings and how the last round's iteration ended."""
        return {
            "max_iterations": self.max_iterations,
            "tolerance": self.tolerance,
            "iterations_last_round": self.last_iterations,
            "converged_last_round": self.last_converged,
        }


class CenteredClipping(RobustAggregator):
    """Centered clipping (Karimireddy, He & Jaggi 2021, Section 4), centered on the last aggregate.

    The paper clips workers' momentum vectors around the previous aggregate;
    this momentum-free version clips the round's updates around the previous
    round's aggregate, kept here (zero in the first round, after a change of
    model size, and after a restart: it is not checkpointed). Whatever one
    client sends, it moves the result by at most ``2 * iterations * tau / n``
    (see :func:`centered_clipping`). The paper's guarantee
    assumes a Byzantine fraction ``f / n`` below a small constant (its analysis
    takes ``delta <= 0.1``) and ``tau`` matched to the honest updates' spread.
    """

    name: ClassVar[str] = "centered_clipping"

    def __init__(
        self, *, tau: float, iterations: int = 1, anomaly: AnomalyRule | None = None
    ) -> None:
        _check_positive(self.name, "tau", tau)
        if iterations < 1:
            raise ConfigError(f"centered_clipping: iterations is {iterations}; give >= 1")
        super().__init__(anomaly=anomaly)
        self.tau = tau
        self.iterations = iterations
        self.center: Vector = np.zeros(0, dtype=VECTOR_DTYPE)

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Prepare the matrix; reset the center to zero if the model size changed."""
        super().start(size, cohort)
        if self.center.shape != (size,):
            self.center = np.zeros(size, dtype=VECTOR_DTYPE)

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        output = centered_clipping(matrix, self.center, tau=self.tau, iterations=self.iterations)
        self.center = output.copy()
        return output, matrix.shape[0]

    def settings(self) -> dict[str, Any]:
        """``tau`` and ``iterations``."""
        return {"tau": self.tau, "iterations": self.iterations}


class NormBoundedMean(RobustAggregator):
    """Mean after clipping each update to L2 norm ``bound`` (Sun et al. 2019, Section 3).

    Makes no assumption on ``f``: it does not remove Byzantine updates, it
    bounds each one's influence on the mean to ``bound / n``.
    """

    name: ClassVar[str] = "norm_bounded_mean"

    def __init__(self, bound: float, *, anomaly: AnomalyRule | None = None) -> None:
        _check_positive(self.name, "bound", bound)
        super().__init__(anomaly=anomaly)
        self.bound = bound

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        return norm_bounded_mean(matrix, self.bound), matrix.shape[0]

    def settings(self) -> dict[str, Any]:
        """``bound``."""
        return {"bound": self.bound}


class FLTrust(RobustAggregator):
    """FLTrust (Cao, Fang, Liu & Gong 2021, Algorithm 2): trust bootstrapped from a root set.

    Makes no assumption on ``f`` (even a Byzantine majority), but assumes the
    server's small root data set is clean and resembles the clients' data.
    Each round needs the server's update on that root set, computed from the
    same global model: call :meth:`set_server_update` after ``start``, or give
    ``server_update``, a callable ``round_index -> vector`` asked in ``result``.
    ``last_trust`` holds the round's trust score per client.
    """

    name: ClassVar[str] = "fltrust"

    def __init__(
        self,
        server_update: Callable[[int], Vector] | None = None,
        *,
        anomaly: AnomalyRule | None = None,
    ) -> None:
        super().__init__(anomaly=anomaly)
        self.server_update = server_update
        self.last_trust: dict[str, float] = {}
        self._root_update: Vector | None = None

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Prepare the matrix and forget the previous round's server update."""
        super().start(size, cohort)
        self._root_update = None
        self.last_trust = {}

    def set_server_update(self, vector: Vector) -> None:
        """Supply this round's server update (on the root set, from the current global model)."""
        size = self._matrix.shape[1]
        if np.shape(vector) != (size,):
            raise PipelineError(
                f"fltrust: the server update has shape {np.shape(vector)}; the model needs "
                f"({size},); call set_server_update after start() with the root-set update"
            )
        self._root_update = np.asarray(vector, dtype=VECTOR_DTYPE)

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        if self._root_update is None and self.server_update is not None:
            self.set_server_update(self.server_update(self._round_index))
        if self._root_update is None:
            raise PipelineError(
                "fltrust: no server update for this round; call set_server_update(vector) "
                "after start(), or build FLTrust with server_update=callable"
            )
        output, trust = fltrust(matrix, self._root_update)
        self.last_trust = dict(zip(self._client_ids, trust.tolist(), strict=True))
        return output, int(np.count_nonzero(trust))


# --- reputation ---------------------------------------------------------------------------


@dataclass
class _Standing:
    flags: int = 0
    rounds: int = 0
    suspicion: float = 0.0


class Reputation:
    """Per-client flags accumulated across rounds, and who to quarantine.

    Each scored round, a client's ``flags`` count grows by one if it was
    flagged, and its ``suspicion`` moves as an exponential moving average of
    the flag (``s <- (1 - smoothing) s + smoothing * flagged``, in [0, 1]).
    A client flagged ``quarantine_after`` times in total (not necessarily in a
    row) is quarantined until :meth:`release`; the server should leave
    quarantined clients out of its cohorts (:meth:`eligible`) and report them.
    :meth:`state` / :meth:`load_state` carry it through checkpoints as JSON.
    """

    def __init__(self, quarantine_after: int = 3, smoothing: float = 0.3) -> None:
        if isinstance(quarantine_after, bool) or quarantine_after < 1:
            raise ConfigError(
                f"reputation: quarantine_after is {quarantine_after!r}; give the number of "
                "flagged rounds (>= 1) after which a client is quarantined"
            )
        if not 0.0 < smoothing <= 1.0:
            raise ConfigError(f"reputation: smoothing is {smoothing!r}; it must be in (0, 1]")
        self.quarantine_after = quarantine_after
        self.smoothing = smoothing
        self._standing: dict[str, _Standing] = {}
        self._quarantined: set[str] = set()

    def record(self, scores: Mapping[str, ClientScore]) -> list[str]:
        """Fold one round's scores in; return the clients newly quarantined by it (sorted)."""
        newly = []
        for client_id, score in scores.items():
            standing = self._standing.setdefault(client_id, _Standing())
            standing.rounds += 1
            standing.flags += int(score.flagged)
            standing.suspicion += self.smoothing * (float(score.flagged) - standing.suspicion)
            if standing.flags >= self.quarantine_after and client_id not in self._quarantined:
                self._quarantined.add(client_id)
                newly.append(client_id)
        return sorted(newly)

    def flags(self, client_id: str) -> int:
        """Rounds in which ``client_id`` was flagged."""
        standing = self._standing.get(client_id)
        return 0 if standing is None else standing.flags

    def suspicion(self, client_id: str) -> float:
        """The moving average of ``client_id``'s flags (0 for a client never scored)."""
        standing = self._standing.get(client_id)
        return 0.0 if standing is None else standing.suspicion

    def quarantined(self) -> frozenset[str]:
        """Clients currently quarantined."""
        return frozenset(self._quarantined)

    def eligible(self, population: Sequence[str]) -> list[str]:
        """``population`` without the quarantined clients, order kept."""
        return [cid for cid in population if cid not in self._quarantined]

    def release(self, client_id: str) -> None:
        """End ``client_id``'s quarantine (after investigation) and reset its flag count."""
        self._quarantined.discard(client_id)
        if client_id in self._standing:
            self._standing[client_id].flags = 0

    def state(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON-able values."""
        return {
            "quarantine_after": self.quarantine_after,
            "smoothing": self.smoothing,
            "clients": {
                cid: {"flags": s.flags, "rounds": s.rounds, "suspicion": s.suspicion}
                for cid, s in sorted(self._standing.items())
            },
            "quarantined": sorted(self._quarantined),
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state`'s output; the configured thresholds stay as they are."""
        try:
            standing = {
                str(cid): _Standing(
                    int(entry["flags"]), int(entry["rounds"]), float(entry["suspicion"])
                )
                for cid, entry in state["clients"].items()
            }
            quarantined = {str(cid) for cid in state["quarantined"]}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ConfigError(
                f"reputation: the checkpointed state is malformed ({error!r}); it must be the "
                "output of Reputation.state()"
            ) from error
        self._standing = standing
        self._quarantined = quarantined
