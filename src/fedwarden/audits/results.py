"""What a privacy audit found: the measured lower bound on epsilon beside the claim."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

AuditMethod = Literal["one_run", "multi_run"]


@dataclass(frozen=True)
class AuditResult:
    """An audit's epsilon lower bound beside the accountant's claimed epsilon.

    With probability at least ``confidence`` the training's true epsilon (at
    ``delta``) is at least ``lower_bound``. ``num_canaries`` were planted
    (one-run) or one canary over ``num_runs`` trainings (multi-run);
    ``num_guesses`` and ``num_correct`` are the guesses scored (one-run:
    canaries guessed on; multi-run: evaluation runs) and how many were right.
    ``noise_multiplier`` is the ``z`` of DP-SGD or DP-FedAvg (0 without DP,
    where the claim is infinite). ``score`` names the canary score:
    ``loss_drop`` (sample-level canaries, black box) or ``cosine_final_model``
    / ``cosine_all_iterates`` (canary clients, white box).
    ``epsilon_estimate`` is Andrew et al. 2024's Gaussian-fit estimate (canary
    clients only, else None): a point estimate with no confidence attached,
    which may lie above or below the true epsilon, unlike ``lower_bound``.
    """

    method: AuditMethod
    claimed_epsilon: float
    lower_bound: float
    delta: float
    confidence: float
    noise_multiplier: float
    num_canaries: int
    num_runs: int
    num_guesses: int
    num_correct: int
    score: str = "loss_drop"
    epsilon_estimate: float | None = None

    @property
    def exceeds_claim(self) -> bool:
        """Whether the measured bound is above the claim: a bug in DP-SGD or its accounting."""
        return self.lower_bound > self.claimed_epsilon

    def summary(self) -> str:
        """What ``fedwarden audit privacy`` prints: the bound, the claim and how they compare."""
        verdict = (
            "ABOVE the claim: the implementation or its accounting is broken, report it"
            if self.exceeds_claim
            else "below the claim, as it must be"
        )
        estimate = (
            ""
            if self.epsilon_estimate is None
            else f" Estimate (Andrew et al. 2024, Gaussian fit, not a bound): epsilon ~ "
            f"{self.epsilon_estimate:.3f}."
        )
        return (
            f"{self.method} audit ({self.score}): epsilon >= {self.lower_bound:.3f} with "
            f"confidence {self.confidence:g} (delta {self.delta:g}); accountant claims "
            f"{self.claimed_epsilon:.3f} (z = {self.noise_multiplier:.4f}); {verdict}."
            f"{estimate} {self.num_correct} of {self.num_guesses} guesses right, "
            f"{self.num_canaries} canaries, {self.num_runs} training run(s)."
        )

    def to_json(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict, with ``exceeds_claim``."""
        return {**asdict(self), "exceeds_claim": self.exceeds_claim}


def logged(result: AuditResult) -> AuditResult:
    """``result``, logged as an error when its bound exceeds the claim."""
    if result.exceeds_claim:
        logger.error("privacy audit found a DP violation: %s", result.summary())
    else:
        logger.info("%s", result.summary())
    return result
