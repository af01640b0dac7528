"""The robust rules as pipeline aggregators: buffer a round's updates, reduce them, score clients.

Each aggregator keeps the round's updates as the rows of one preallocated
float32 matrix, hands it to its rule in :mod:`fedwarden.pipeline.robust.rules`
and scores every client against the output
(:func:`~fedwarden.pipeline.robust.reputation.anomaly_scores`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from fedwarden.core.errors import ConfigError, PipelineError, RoundAborted, UpdateRejected
from fedwarden.core.messages import ClientUpdate, TrainConfig
from fedwarden.core.params import VECTOR_DTYPE, Vector
from fedwarden.core.records import round_number
from fedwarden.pipeline.blas import blas
from fedwarden.pipeline.robust.reputation import AnomalyRule, ClientScore, anomaly_scores
from fedwarden.pipeline.robust.rules import (
    Matrix,
    bulyan,
    bulyan_minimum_updates,
    centered_clipping,
    check_beta,
    check_f,
    check_positive,
    coordinate_median,
    fltrust,
    geometric_median,
    krum_minimum_updates,
    multi_krum,
    norm_bounded_mean,
    trimmed_count,
    trimmed_mean,
)
from fedwarden.pipeline.stage import Aggregate, Aggregator


class RobustAggregator(Aggregator, ABC):
    """Buffer the round's updates as matrix rows, reduce them with a robust rule, score clients.

    Subclasses implement :meth:`_reduce`. Updates are unweighted (see the
    package docstring). ``add`` refuses an update of the wrong size, with NaN
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
        who = f"update from client {update.client_id!r} in round {round_number(update.round_index)}"
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
        squared_norm = float(blas.sdot(self._matrix[row], self._matrix[row])) if size else 0.0
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
        check_beta(beta)
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
        check_f(self.name, f)
        super().__init__(anomaly=anomaly)
        self.f = f
        self.last_selected: list[str] = []

    @classmethod
    def check(cls, n: int, f: int) -> None:
        """Refuse, at configuration time, a cohort of ``n`` that cannot tolerate ``f``."""
        check_f(cls.name, f)
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
        check_f(self.name, f)
        super().__init__(anomaly=anomaly)
        self.f = f

    @classmethod
    def check(cls, n: int, f: int) -> None:
        """Refuse, at configuration time, a cohort of ``n`` that cannot tolerate ``f``."""
        check_f(cls.name, f)
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
        check_positive(self.name, "tolerance", tolerance)
        check_positive(self.name, "smoothing", smoothing)
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
        check_positive(self.name, "tau", tau)
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
        check_positive(self.name, "bound", bound)
        super().__init__(anomaly=anomaly)
        self.bound = bound

    def _reduce(self, matrix: Matrix) -> tuple[Vector, int]:
        return norm_bounded_mean(matrix, self.bound), matrix.shape[0]

    def settings(self) -> dict[str, Any]:
        """``bound``."""
        return {"bound": self.bound}


class ServerUpdate(Protocol):
    """FLTrust's server update in round ``round_index``: global ``vector`` trained as ``train``."""

    def __call__(self, round_index: int, vector: Vector, train: TrainConfig) -> Vector:
        """The update ``new - vector`` of the server's own training on its root set."""
        ...


class FLTrust(RobustAggregator):
    """FLTrust (Cao, Fang, Liu & Gong 2021, Algorithm 2): trust bootstrapped from a root set.

    Makes no assumption on ``f`` (even a Byzantine majority), but assumes the
    server's small root data set is clean and resembles the clients' data.
    Each round needs the server's update on that root set, computed from the
    same global model with the same local training: give ``server_update``
    (a :class:`ServerUpdate`; a run's is
    :class:`fedwarden.build.pipeline.RootDataUpdate`), asked in
    ``result`` with what :meth:`round_model` was told, or call
    :meth:`set_server_update` after ``start``. ``last_trust`` holds the round's
    trust score per client.
    """

    name: ClassVar[str] = "fltrust"

    def __init__(
        self,
        server_update: ServerUpdate | None = None,
        *,
        anomaly: AnomalyRule | None = None,
    ) -> None:
        super().__init__(anomaly=anomaly)
        self.server_update = server_update
        self.last_trust: dict[str, float] = {}
        self._root_update: Vector | None = None
        self._round_model: tuple[Vector, TrainConfig] | None = None

    def start(self, size: int, cohort: Sequence[str]) -> None:
        """Prepare the matrix and forget the previous round's model and server update."""
        super().start(size, cohort)
        self._root_update = None
        self._round_model = None
        self.last_trust = {}

    def round_model(self, vector: Vector, train: TrainConfig) -> None:
        """Keep the round's global vector and training settings for the server update."""
        self._round_model = (vector, train)

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
            if self._round_model is None:
                raise PipelineError(
                    "fltrust: the server update trains the round's global model, which nobody "
                    "gave; call round_model(vector, train) after start()"
                )
            vector, train = self._round_model
            self.set_server_update(self.server_update(self._round_index, vector, train))
        if self._root_update is None:
            raise PipelineError(
                "fltrust: no server update for this round; call set_server_update(vector) "
                "after start(), or build FLTrust with a server_update"
            )
        output, trust = fltrust(matrix, self._root_update)
        self.last_trust = dict(zip(self._client_ids, trust.tolist(), strict=True))
        return output, int(np.count_nonzero(trust))

    def report(self) -> dict[str, Any]:
        """The rule's report plus the last round's trust score per client."""
        return {**super().report(), "trust_last_round": dict(self.last_trust)}
