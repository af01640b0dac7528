"""What a run reports: one record per round and a final summary.

Round numbering: ``round_index`` counts from 0 (the key of checkpoints, the
clients' seeds, the run store's rows and the signed audit log); people read
``round`` = :func:`round_number`, counting from 1, in the terminal, logs and
errors, ``metrics.json``, the dashboard and the audit report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def round_number(round_index: int) -> int:
    """The round as people read it: 1 for the first (``round_index`` 0)."""
    return round_index + 1


@dataclass(frozen=True)
class RoundRecord:
    """What happened in one round.

    ``participants`` are accepted updates; ``dropped`` clients missed the
    deadline or lost their worker; ``failed`` clients raised while training;
    ``rejected`` updates failed a server check (``rejection_reasons`` counts
    them by reason). ``applied`` is False when fewer than ``min_cohort``
    updates were accepted and the model was left unchanged. ``bytes_up`` is
    what the received updates took on the wire (compressed payloads and their
    headers, or raw vectors); ``bytes_down`` the global vector sent to the cohort.
    """

    round_index: int
    sampled: int
    participants: int
    dropped: int
    failed: int
    rejected: int
    rejection_reasons: dict[str, int]
    applied: bool
    loss: float | None
    accuracy: float | None
    train_loss: float | None
    round_seconds: float
    bytes_up: int
    bytes_down: int
    note: str = ""
    epsilon: float | None = None
    """Privacy spent so far, after this round (None without differential privacy)."""
    epsilon_projected: float | None = None
    """Privacy spent once the planned rounds are done, if every round is like this one."""
    compression_ratio: float | None = None
    """Raw float32 bytes of the received updates over ``bytes_up`` (1.0: uncompressed)."""
    backdoor_success: float | None = None
    """Share of triggered central test examples classified as the attacker's target."""
    flagged: list[str] = field(default_factory=list)
    """Clients whose update the robust aggregator's anomaly rule flagged this round."""
    quarantined: list[str] = field(default_factory=list)
    """Clients quarantined after this round (flagged too often; no longer sampled)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``round_index`` from 0: checkpoints and the run store)."""
        return asdict(self)

    def to_row(self) -> dict[str, Any]:
        """The row people read (``metrics.json``): ``round`` counts from 1, then the figures."""
        figures = self.to_json()
        return {"round": round_number(figures.pop("round_index")), **figures}


@dataclass(frozen=True)
class RunResult:
    """The final figures of a run (what ``fedwarden run --json`` prints)."""

    rounds: int
    accuracy: float | None
    loss: float | None
    client_accuracy: float | None
    personalized_accuracy: float | None
    client_rounds_per_s: float
    wall_s: float
    peak_rss_mb: float
    run_dir: str | None
    stopped_early: str | None = None
    """Why training stopped before the planned rounds (e.g. the privacy budget)."""
    history: list[RoundRecord] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The summary fields (without the per-round history) as a JSON-ready dict."""
        summary = {key: value for key, value in asdict(self).items() if key != "history"}
        extras = summary.pop("extras")
        summary.update(extras.pop("privacy", {}))
        summary.update(extras)
        return summary
