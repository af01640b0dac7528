"""What a DP run keeps secret so that amplification by sampling holds, and against whom.

Amplification by sampling (Abadi et al. 2016 for DP-SGD's batches; McMahan
et al. 2018 for DP-FedAvg's cohorts; analysed by Mironov et al. 2019 and
Zhu & Wang 2019) assumes the adversary does not know which examples were in
a batch or which clients in a cohort. An epsilon that counts on it is only
true against someone who cannot recompute or read the sample. This module
decides where a run's samples come from (:func:`cohort_randomness`), whether
its audit log commits to cohorts instead of naming them
(:func:`commits_cohorts`), and writes the privacy report's statement of
against whom the amplification holds (:func:`sampling_secrecy`).

Secret sampling makes a DP run not bit-reproducible, as Opacus's
``secure_mode``: reproducing it would need the samples to follow from
something written down. Test mode (``privacy.reproducible_noise``) trades the
guarantee for reproducibility, and says so in the log and the report.
"""

from __future__ import annotations

from typing import Any

from fedwarden.core.config import RunConfig
from fedwarden.privacy.randomness import NoiseSource

__all__ = [
    "COHORT_STREAM",
    "cohort_randomness",
    "commits_cohorts",
    "sampling_secrecy",
    "server_noise",
]

COHORT_STREAM = "cohort"
"""The keystream name that keeps a seeded cohort stream apart from seeded noise."""


def cohort_randomness(config: RunConfig) -> NoiseSource:
    """Where a run's cohorts come from: secret under DP, the seed in test mode or without DP.

    A test-mode source logs its WARNING when it is created, as the run starts.
    """
    section = config.privacy
    if section.mechanism == "none" and not section.reproducible_noise:
        return NoiseSource.seeded(config.seed, COHORT_STREAM)
    return NoiseSource.secure_or_testing(section.reproducible_noise, config.seed, COHORT_STREAM)


def server_noise(config: RunConfig) -> NoiseSource:
    """The server's own privacy noise (central DP's Gaussian): secure, or the seed in test mode."""
    return NoiseSource.secure_or_testing(config.privacy.reproducible_noise, config.seed)


def commits_cohorts(config: RunConfig) -> bool:
    """Whether the audit log records a commitment to each cohort instead of the cohort.

    User-level DP counts on the secrecy of its cohorts (Poisson or uniform
    sampling of clients); the other mechanisms' guarantees do not depend on
    who trained in a round.
    """
    return config.privacy.mechanism == "user_level"


def sampling_secrecy(config: RunConfig) -> dict[str, Any]:
    """The privacy report's account of what was sampled secretly and who cannot see it."""
    section = config.privacy
    if section.reproducible_noise:
        return {
            "test_mode": True,
            "randomness": f"seeded from config.seed = {config.seed} (privacy.reproducible_noise)",
            "amplification_holds_against": "nobody who can read the config",
        }
    secrecy: dict[str, Any] = {"test_mode": False, "randomness": "operating-system CSPRNG"}
    if section.mechanism == "user_level" and config.asynchronous.enabled:
        secrecy["secret"] = (
            "nothing: FedBuff's releases are charged without amplification by sampling, so the "
            "guarantee does not rely on who filled a buffer"
        )
    elif section.mechanism == "user_level":
        secrecy["secret"] = "each round's cohort (the audit log holds a salted commitment)"
        secrecy["amplification_holds_against"] = (
            "readers of the config, the audit log, the reports and the released models"
        )
        secrecy["amplification_does_not_hold_against"] = (
            "the server operator, who draws and dispatches the cohort and keeps "
            "cohort_openings.json, and readers of the run store's per-client upload records"
        )
    elif section.mechanism == "dp_sgd":
        secrecy["secret"] = "each silo's Poisson batches, drawn at the silo and never sent"
        secrecy["amplification_holds_against"] = "everyone but the silo itself, the server included"
    else:
        secrecy["secret"] = "nothing: local DP's guarantee does not rely on sampling"
    return secrecy
