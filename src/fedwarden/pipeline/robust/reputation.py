"""Per-client anomaly scores against a round's robust center, and client reputation across rounds.

After every round each client's update is measured against the round's robust
center (the rule's output) and flagged by an :class:`AnomalyRule`;
:class:`Reputation` accumulates the flags across rounds and names the clients
to quarantine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedwarden.core.errors import ConfigError
from fedwarden.core.params import Vector
from fedwarden.pipeline.robust.rules import (
    Floats,
    Matrix,
    check_positive,
    distances_to,
    l2_norm,
    norms_and_dots,
)

MAD_TO_SIGMA = 0.6745
"""Iglewicz & Hoaglin (1993)'s constant: ``0.6745 * (x - median) / MAD`` is the modified
z-score, comparable to a standard normal z for normal data."""

MEAN_AD_TO_SIGMA = 0.7979
"""Iglewicz & Hoaglin's fallback when MAD is 0: ``(x - median) / (1.253314 * meanAD)``."""


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
            check_positive("anomaly rule", "distance_z_threshold", self.distance_z_threshold)
        if self.max_norm_ratio is not None:
            check_positive("anomaly rule", "max_norm_ratio", self.max_norm_ratio)
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
    distances = distances_to(matrix, center)
    norms, dots = norms_and_dots(matrix, center)
    center_norm = l2_norm(center)
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
