"""Shadow deployment: a share of requests also goes to a candidate version, and how it compares.

The candidate answers after the response is sent and never affects it; the
recorder counts how often the two disagree on the class, the mean absolute
difference of their probabilities, and each model's recent latency (p50, p95).
Which request is shadowed is drawn from a seeded generator: no privacy
guarantee relies on it.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from typing import Any

import numpy as np
import numpy.typing as npt

from fedwarden.serve.model import ServeError

LATENCY_SAMPLES = 2048
"""Latencies kept per model for the p50 and p95 (the most recent ones)."""


class LatencyWindow:
    """The most recent latencies of one model, for its p50 and p95."""

    def __init__(self, size: int = LATENCY_SAMPLES) -> None:
        self._seconds: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Keep one latency, forgetting the oldest beyond the window."""
        with self._lock:
            self._seconds.append(seconds)

    def quantiles(self) -> dict[str, float | int | None]:
        """The number of latencies kept, and their p50 and p95 in seconds (None if none)."""
        with self._lock:
            seconds = np.asarray(self._seconds, dtype=np.float64)
        if not len(seconds):
            return {"count": 0, "p50": None, "p95": None}
        p50, p95 = np.percentile(seconds, [50, 95])
        return {"count": len(seconds), "p50": float(p50), "p95": float(p95)}


class ShadowRecorder:
    """Chooses which requests go to the shadow candidate and records how it compares.

    A request is shadowed with probability ``share``, drawn from a generator seeded with
    ``seed`` (None: fresh entropy). Disagreement is counted per instance (the predicted
    classes differ); the probability delta is the mean over classes of ``|p - p_shadow|``,
    averaged over instances.
    """

    def __init__(self, candidate: str | None, share: float, seed: int | None = None) -> None:
        if not (math.isfinite(share) and 0.0 <= share <= 1.0):
            raise ServeError(f"shadow_share={share} must be a fraction in [0, 1]")
        if candidate is None and share > 0:
            raise ServeError(f"shadow_share={share} needs a shadow candidate version to send to")
        self.candidate = candidate
        self.share = share
        self.primary_latency = LatencyWindow()
        self.shadow_latency = LatencyWindow()
        self._random = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._requests = 0
        self._shadowed = 0
        self._instances = 0
        self._disagreements = 0
        self._delta_sum = 0.0
        self._errors = 0

    def choose(self) -> bool:
        """Count a request, and say whether it also goes to the candidate."""
        with self._lock:
            self._requests += 1
            chosen = self.candidate is not None and bool(self._random.random() < self.share)
            self._shadowed += chosen
            return chosen

    def compare(self, primary: npt.NDArray[np.float64], shadow: npt.NDArray[np.float64]) -> None:
        """Record the primary's and the candidate's probabilities for the same instances."""
        disagreements = int((primary.argmax(axis=1) != shadow.argmax(axis=1)).sum())
        deltas = np.abs(primary - shadow).mean(axis=1)
        with self._lock:
            self._instances += len(primary)
            self._disagreements += disagreements
            self._delta_sum += float(deltas.sum())

    def failed(self) -> None:
        """Count a shadowed request the candidate could not answer."""
        with self._lock:
            self._errors += 1

    def report(self) -> dict[str, Any]:
        """Counts, disagreement rate, mean absolute probability delta and latencies, as JSON."""
        with self._lock:
            instances = self._instances
            report: dict[str, Any] = {
                "candidate": self.candidate,
                "share": self.share,
                "requests": self._requests,
                "shadowed_requests": self._shadowed,
                "compared_instances": instances,
                "disagreements": self._disagreements,
                "disagreement_rate": self._disagreements / instances if instances else None,
                "mean_abs_probability_delta": self._delta_sum / instances if instances else None,
                "errors": self._errors,
            }
        report["latency_seconds"] = {
            "primary": self.primary_latency.quantiles(),
            "shadow": self.shadow_latency.quantiles(),
        }
        return report
