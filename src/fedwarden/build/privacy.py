"""The privacy accounting a config names, with its ledger in the run directory."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fedwarden.build.pipeline import (
    secagg_parameters,
)
from fedwarden.core.config import RunConfig
from fedwarden.data.dataset import FederatedDataset
from fedwarden.privacy.accounting import (
    Neighboring,
    calibrate_noise_multiplier,
    calibrate_release,
)
from fedwarden.privacy.accounting.library import dp_event
from fedwarden.privacy.clipping import AdaptiveClipping, ClipNorm
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.silo import (
    LocalPrivacy,
    SiloPrivacy,
)
from fedwarden.privacy.user_level import CohortSampling, UserLevelPrivacy
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)


def build_distributed_dp(
    config: RunConfig, population: int, model_size: int
) -> DistributedDiscreteGaussian:
    """The distributed discrete Gaussian for user-level DP under SecAgg+, calibrated to the budget.

    Fixed-size cohorts of ``n``; the ledger charges the noise of SecAgg+'s
    threshold ``t`` of survivors, so the noise multiplier is searched (through
    dp-accounting's calibration) over that mechanism's own event.
    """
    section = config.privacy
    cohort_size = min(config.sampling.cohort_size, population)
    threshold = secagg_parameters(config).resolved(cohort_size).threshold
    assert threshold is not None and section.epsilon is not None

    def mechanism(noise_multiplier: float) -> DistributedDiscreteGaussian:
        return DistributedDiscreteGaussian.calibrated(
            section.clip_norm,
            noise_multiplier,
            model_size,
            cohort_size,
            threshold,
            config.secure.modulus_bits,
        )

    noise_multiplier = section.noise_multiplier or calibrate_release(
        section.epsilon,
        section.delta,
        lambda z: dp_event.SelfComposedDpEvent(mechanism(z).dp_event("replace_one"), config.rounds),
        "replace_one",
        f"{config.rounds} rounds",
    )
    return mechanism(noise_multiplier)


def build_privacy(
    config: RunConfig,
    dataset: FederatedDataset,
    model_size: int,
    run_dir: RunDirectory | None,
    budget_changed_by: str | None = None,
) -> UserLevelPrivacy | SiloPrivacy | LocalPrivacy | None:
    """The run's privacy accounting, with its ledger in the run directory (None without it).

    ``budget_changed_by`` names who changes the budget the ledger was kept under, if anyone.
    """
    section = config.privacy
    ledger_path = None if run_dir is None else run_dir.ledger_path
    if section.mechanism == "dp_sgd":
        assert section.epsilon is not None and section.noise_multiplier is not None
        return SiloPrivacy(
            PrivacyLedger(
                PrivacyBudget(section.epsilon, section.delta),
                privacy_unit="example",
                neighboring="add_remove",
                path=ledger_path,
                client_budget=section.epsilon,
                budget_changed_by=budget_changed_by,
            ),
            silo_sizes=dict(dataset.train_sizes),
            batch_size=config.train.batch_size,
            local_epochs=config.train.local_epochs,
            noise_multiplier=section.noise_multiplier,
            max_grad_norm=section.max_grad_norm,
        )
    if section.mechanism == "local":
        assert section.epsilon is not None and section.noise_multiplier is not None
        return LocalPrivacy(
            PrivacyLedger(
                PrivacyBudget(section.epsilon, section.delta),
                privacy_unit="client",
                neighboring="replace_one",
                path=ledger_path,
                client_budget=section.epsilon,
                budget_changed_by=budget_changed_by,
            ),
            client_ids=dataset.client_ids,
            noise_multiplier=section.noise_multiplier,
            clip_norm=section.clip_norm,
        )
    if section.mechanism != "user_level":
        return None
    assert section.epsilon is not None
    population = len(dataset.clients)
    buffered = config.asynchronous.enabled
    poisson = config.sampling.scheme == "poisson" and not buffered
    sampling = CohortSampling(
        population,
        rate=config.sampling.rate if poisson else None,
        cohort_size=None if poisson or buffered else config.sampling.cohort_size,
        buffer_size=config.asynchronous.buffer_size if buffered else None,
    )
    neighboring: Neighboring = "add_remove" if poisson else "replace_one"
    adaptive = (
        AdaptiveClipping(
            section.target_quantile, section.clip_learning_rate, section.count_noise_multiplier
        )
        if section.adaptive_clipping
        else None
    )
    count_release = [] if adaptive is None else [sampling.event(adaptive.count_noise_multiplier)]
    distributed = (
        build_distributed_dp(config, population, model_size)
        if config.secure.kind == "secagg"
        else None
    )
    if distributed is not None:
        noise_multiplier = distributed.central_noise_std / section.clip_norm
    else:
        noise_multiplier = section.noise_multiplier or calibrate_noise_multiplier(
            section.epsilon,
            section.delta,
            config.rounds,
            sampling_rate=sampling.rate,
            population=None if poisson or buffered else population,
            cohort_size=sampling.cohort_size,
            neighboring=neighboring,
            per_round_extra=count_release,
        )
    ledger = PrivacyLedger(
        PrivacyBudget(section.epsilon, section.delta),
        privacy_unit="client",
        neighboring=neighboring,
        path=ledger_path,
        budget_changed_by=budget_changed_by,
    )
    return UserLevelPrivacy(
        ledger,
        noise_multiplier=noise_multiplier,
        sampling=sampling,
        clip_norm=ClipNorm(section.clip_norm),
        adaptive=adaptive,
        distributed=distributed,
    )
