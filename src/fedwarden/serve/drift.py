"""Input drift monitoring: served inputs against a reference histogram per feature.

The reference is, for each monitored feature, the counts of training examples in fixed bins.
It is built without raw data leaving the clients (:func:`reference_from_federation`): each
bin count is a histogram query of :mod:`fedwarden.privacy.analytics`, answered over the
clients with discrete Laplace noise and charged to the run's privacy ledger. The served
inputs kept for comparison are the last ``window`` rows (a sliding window).

Two statistics per feature compare the window with the reference:

* the **population stability index** (PSI), ``sum_b (p_b - q_b) ln(p_b / q_b)`` over the
  bins, with ``p`` the window's and ``q`` the reference's proportions, each floored at
  :data:`PSI_FLOOR` so that an empty bin does not make it infinite (Yurdakul 2018, "Statistical
  properties of population stability index"); the usual reading is below 0.1 stable, above
  0.2 shifted.
* the **two-sample Kolmogorov-Smirnov test** (``scipy.stats.ks_2samp``) of the window's bin
  indices against the reference's (each bin repeated by its count, rounded): both samples
  are seen through the same bins, as the reference holds nothing finer. Its p-value is
  compared with ``ks_p_value`` divided by the number of monitored features (Bonferroni), so
  the chance that any feature raises a false KS alert at one check is at most ``ks_p_value``.

An :class:`~fedwarden.core.alerts.Alert` (rule ``drift_psi`` or ``drift_ks``, with the
feature, the statistic and its threshold) is raised when a rule starts to hold for a feature,
and again only after it has stopped holding; :meth:`DriftMonitor.observe` returns the new
alerts for the caller to deliver (:func:`fedwarden.monitor.alerts.deliver`: the log, the
audit log, the webhook), as training alerts are.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

from fedwarden.core.alerts import Alert
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import FedwardenError
from fedwarden.data.dataset import FederatedDataset
from fedwarden.privacy.analytics import run_query
from fedwarden.privacy.analytics_queries import Histogram
from fedwarden.privacy.ledger import PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
Rule = Literal["drift_psi", "drift_ks"]

PSI_FLOOR = 1e-4
"""Smallest proportion a bin is given in the PSI, so an empty bin adds a finite term."""
DEFAULT_PSI_THRESHOLD = 0.2
DEFAULT_KS_P_VALUE = 0.01
_RULES: tuple[Rule, ...] = ("drift_psi", "drift_ks")


class DriftError(FedwardenError):
    """A drift reference or monitor was given settings or data it cannot use."""


@dataclass(frozen=True)
class FeatureReference:
    """The reference distribution of one input feature: counts of examples in fixed bins.

    ``edges`` are the increasing bin edges; values outside them fall in the first or last bin.
    ``counts`` (one per bin, never negative) may be noisy, and need not be whole numbers.
    """

    feature: int
    edges: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or any(b <= a for a, b in itertools.pairwise(self.edges)):
            raise DriftError(
                f"feature {self.feature}: bin edges {self.edges} must be at least two strictly "
                "increasing numbers"
            )
        if len(self.counts) != len(self.edges) - 1:
            raise DriftError(
                f"feature {self.feature}: {len(self.counts)} counts for {len(self.edges) - 1} "
                "bins; give one count per bin"
            )
        if any(not math.isfinite(count) or count < 0 for count in self.counts):
            raise DriftError(
                f"feature {self.feature}: counts {self.counts} must be finite and >= 0 (set "
                "negative noisy counts to 0)"
            )
        if sum(self.counts) <= 0:
            raise DriftError(
                f"feature {self.feature}: the reference counts no example; build it from data"
            )

    def proportions(self) -> FloatArray:
        """Each bin's share of the reference's examples."""
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum()

    def bin_indices(self, values: FloatArray) -> IntArray:
        """The bin of each value; values outside the edges go to the first or last bin."""
        index = np.searchsorted(np.asarray(self.edges), values, side="right") - 1
        return np.clip(index, 0, len(self.counts) - 1)


@dataclass(frozen=True)
class DriftReference:
    """The reference histograms of the monitored features, and the privacy they cost.

    ``epsilon`` is what building the reference charged to the privacy ledger, None for an
    exact reference computed where the data is.
    """

    features: tuple[FeatureReference, ...]
    epsilon: float | None = None

    def __post_init__(self) -> None:
        indices = [reference.feature for reference in self.features]
        if not indices:
            raise DriftError("a drift reference needs at least one feature")
        if len(set(indices)) != len(indices):
            raise DriftError(f"features {indices} repeat; give each feature one reference")

    def to_json(self) -> str:
        """The reference as JSON (read back by :meth:`from_json`)."""
        return json.dumps(
            {
                "epsilon": self.epsilon,
                "features": [
                    {"feature": item.feature, "edges": item.edges, "counts": item.counts}
                    for item in self.features
                ],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> DriftReference:
        """Read a reference written by :meth:`to_json`."""
        try:
            data = json.loads(text)
            return cls(
                features=tuple(
                    FeatureReference(
                        feature=int(item["feature"]),
                        edges=tuple(float(edge) for edge in item["edges"]),
                        counts=tuple(float(count) for count in item["counts"]),
                    )
                    for item in data["features"]
                ),
                epsilon=data["epsilon"],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise DriftError(
                f"not a drift reference ({error!r}); write one with DriftReference.to_json"
            ) from None


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift statistics over the current window."""

    feature: int
    psi: float
    ks_statistic: float
    ks_p_value: float
    window: int


def bin_edges(
    bins: int | Sequence[float], lower: float | None, upper: float | None
) -> tuple[float, ...]:
    """The given edges, or ``bins`` equal bins over ``[lower, upper]``."""
    if not isinstance(bins, int):
        return tuple(float(edge) for edge in bins)
    if bins < 1 or lower is None or upper is None or not lower < upper:
        raise DriftError(
            f"bins={bins}, lower={lower}, upper={upper}: equal bins need bins >= 1 and "
            "lower < upper (the features' public value range); or give the bin edges"
        )
    return tuple(float(edge) for edge in np.linspace(lower, upper, bins + 1))


def reference_from_arrays(
    x: npt.NDArray[Any],
    features: Sequence[int],
    bins: int | Sequence[float],
    lower: float | None = None,
    upper: float | None = None,
) -> DriftReference:
    """The exact reference of ``features`` of the rows ``x`` (where the data is held)."""
    edges = bin_edges(bins, lower, upper)
    references = []
    for feature in features:
        empty = FeatureReference(feature, edges, (1.0,) * (len(edges) - 1))
        values = np.asarray(x[:, feature], dtype=np.float64)
        counts = np.bincount(empty.bin_indices(values), minlength=len(edges) - 1)
        references.append(FeatureReference(feature, edges, tuple(float(c) for c in counts)))
    return DriftReference(tuple(references))


def reference_from_federation(
    data: FederatedDataset | RunConfig,
    features: Sequence[int],
    bins: int | Sequence[float],
    epsilon: float,
    ledger: PrivacyLedger,
    *,
    lower: float | None = None,
    upper: float | None = None,
    delta: float | None = None,
    noise: NoiseSource | None = None,
) -> DriftReference:
    """The reference of ``features`` from DP histogram queries over the clients.

    One histogram query per feature (:func:`fedwarden.privacy.analytics.run_query`), each
    with ``epsilon / len(features)`` at ``delta`` (default: the ledger's), charged to
    ``ledger`` under its privacy unit; clients contribute bounded counts and only the noisy
    sums leave them. The bins must be public: ``bins`` edges, or ``bins`` equal bins over the
    features' declared range ``[lower, upper]``. Negative noisy counts become 0.
    """
    if not features:
        raise DriftError("name at least one feature to build a drift reference for")
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise DriftError(f"epsilon={epsilon}: a DP reference needs a finite epsilon > 0")
    if isinstance(data, RunConfig):
        from fedwarden.data.sources import load_dataset

        dataset = load_dataset(data.data, data.seed)
    else:
        dataset = data
    edges = bin_edges(bins, lower, upper)
    each = epsilon / len(features)
    references = []
    for feature in features:
        result = run_query(
            dataset,
            Histogram(feature=feature, bins=edges),
            ledger=ledger,
            epsilon=each,
            delta=ledger.budget.delta if delta is None else delta,
            source=NoiseSource.secure() if noise is None else noise,
        )
        assert isinstance(result.value, list)
        counts = tuple(max(count, 0.0) for count in result.value)
        references.append(FeatureReference(feature, edges, counts))
    return DriftReference(tuple(references), epsilon=epsilon)


def population_stability_index(window: FloatArray, reference: FloatArray) -> float:
    """PSI of the proportions ``window`` against ``reference``, each floored at PSI_FLOOR."""
    p = np.maximum(window, PSI_FLOOR)
    q = np.maximum(reference, PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


class DriftMonitor:
    """Keeps a sliding window of served inputs and tests it against a reference.

    Safe to call from several threads. A check runs every ``check_every`` rows observed once
    the window holds ``min_window`` rows; ``psi_threshold`` and ``ks_p_value`` are the rules'
    thresholds (see the module docstring).
    """

    def __init__(
        self,
        reference: DriftReference,
        *,
        psi_threshold: float = DEFAULT_PSI_THRESHOLD,
        ks_p_value: float = DEFAULT_KS_P_VALUE,
        window: int = 500,
        min_window: int = 200,
        check_every: int = 100,
    ) -> None:
        if not 1 <= min_window <= window:
            raise DriftError(f"min_window={min_window} must be in [1, window={window}]")
        if check_every < 1:
            raise DriftError(f"check_every={check_every} must be >= 1")
        if not psi_threshold > 0 or not 0 < ks_p_value < 1:
            raise DriftError(
                f"psi_threshold={psi_threshold} must be > 0 and ks_p_value={ks_p_value} in (0, 1)"
            )
        self.reference = reference
        self.psi_threshold = psi_threshold
        self.ks_p_value = ks_p_value
        self.window = window
        self.min_window = min_window
        self.check_every = check_every
        self._features = [item.feature for item in reference.features]
        self._reference_samples = [
            np.repeat(np.arange(len(item.counts)), np.rint(item.counts).astype(np.intp))
            for item in reference.features
        ]
        self._rows = np.zeros((window, len(self._features)), dtype=np.float64)
        self._filled = 0
        self._next_row = 0
        self._since_check = 0
        self._observed = 0
        self._statistics: tuple[FeatureDrift, ...] = ()
        self._firing: set[tuple[Rule, int]] = set()
        self._lock = threading.Lock()

    @property
    def ks_threshold(self) -> float:
        """The p-value below which a feature's KS test alerts (Bonferroni-corrected)."""
        return self.ks_p_value / len(self._features)

    @property
    def observed(self) -> int:
        """Rows observed since the monitor started."""
        return self._observed

    @property
    def statistics(self) -> tuple[FeatureDrift, ...]:
        """Each feature's statistics at the last check (empty before the first)."""
        return self._statistics

    def observe(self, instances: npt.NDArray[Any]) -> list[Alert]:
        """Add served rows to the window; check when due; return the alerts newly raised."""
        rows = np.asarray(instances, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] <= max(self._features):
            raise DriftError(
                f"instances of shape {rows.shape} lack feature {max(self._features)} of the "
                "drift reference; monitor inputs of the model the reference was built for"
            )
        with self._lock:
            for row in rows[-self.window :, self._features]:
                self._rows[self._next_row] = row
                self._next_row = (self._next_row + 1) % self.window
            self._filled = min(self._filled + len(rows), self.window)
            self._observed += len(rows)
            self._since_check += len(rows)
            if self._filled < self.min_window or self._since_check < self.check_every:
                return []
            return self._check()

    def check(self) -> list[Alert]:
        """Compute the statistics of the window now; return the alerts newly raised."""
        with self._lock:
            if self._filled == 0:
                raise DriftError("the drift window is empty; observe served inputs first")
            return self._check()

    def _check(self) -> list[Alert]:
        """The statistics of the window and the alerts of rules that started to hold."""
        self._since_check = 0
        window = self._rows[: self._filled]
        drifts = []
        alerts = []
        for column, (reference, sample) in enumerate(
            zip(self.reference.features, self._reference_samples, strict=True)
        ):
            indices = reference.bin_indices(window[:, column])
            shares = np.bincount(indices, minlength=len(reference.counts)) / len(indices)
            psi = population_stability_index(shares, reference.proportions())
            ks = stats.ks_2samp(indices, sample, method="asymp")
            drift = FeatureDrift(
                reference.feature, psi, float(ks.statistic), float(ks.pvalue), len(indices)
            )
            drifts.append(drift)
            alerts += self._transitions(drift)
        self._statistics = tuple(drifts)
        return alerts

    def _transitions(self, drift: FeatureDrift) -> list[Alert]:
        """Alerts for the rules that now hold for ``drift``'s feature and did not before."""
        holding: dict[Rule, Alert] = {}
        if drift.psi > self.psi_threshold:
            holding["drift_psi"] = Alert(
                "drift_psi",
                f"feature {drift.feature}: PSI {drift.psi:.3f} over the last {drift.window} "
                f"inputs exceeds {self.psi_threshold:g}; the served inputs no longer look like "
                "the training data",
                feature=drift.feature,
                statistic=drift.psi,
                threshold=self.psi_threshold,
            )
        if drift.ks_p_value < self.ks_threshold:
            holding["drift_ks"] = Alert(
                "drift_ks",
                f"feature {drift.feature}: KS test p={drift.ks_p_value:.3g} "
                f"(D={drift.ks_statistic:.3f}) over the last {drift.window} inputs is below "
                f"{self.ks_threshold:.3g} "
                f"({self.ks_p_value:g} Bonferroni-corrected over {len(self._features)} features)",
                feature=drift.feature,
                statistic=drift.ks_p_value,
                threshold=self.ks_threshold,
            )
        raised = []
        for rule in _RULES:
            key = (rule, drift.feature)
            if rule in holding and key not in self._firing:
                self._firing.add(key)
                raised.append(holding[rule])
            elif rule not in holding:
                self._firing.discard(key)
        return raised
