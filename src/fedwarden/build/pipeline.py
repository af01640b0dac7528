"""The update pipeline a config names: client and server stages, and the aggregator."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, assert_never

from fedwarden.attacks import (
    AttackSimulation,
)
from fedwarden.build.attacks import (
    build_model_attack,
    malicious_clients,
)
from fedwarden.core.config import RunConfig
from fedwarden.core.params import ParamSpec
from fedwarden.data.dataset import FederatedDataset
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.compress import Codec, CompressUpdate
from fedwarden.pipeline.dp_mean import GaussianMean
from fedwarden.pipeline.local_dp import LocalGaussianNoise
from fedwarden.pipeline.releases import ReleasePolicy, WithholdClientStatistics
from fedwarden.pipeline.robust import (
    AnomalyRule,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MultiKrum,
    NormBoundedMean,
    Reputation,
    TrimmedMean,
)
from fedwarden.pipeline.secure import SecureSum
from fedwarden.pipeline.stage import Aggregator, Stage
from fedwarden.privacy.clipping import ClipNorm
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import (
    server_noise,
)
from fedwarden.privacy.silo import (
    ClientBudgets,
)
from fedwarden.privacy.user_level import UserLevelPrivacy
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.secure.secagg import SecAggParameters

if TYPE_CHECKING:
    from fedwarden.runtime.grpc.keyholder import RemoteKeyHolder

logger = logging.getLogger(__name__)


def build_pipeline(
    config: RunConfig,
    trainer: Trainer,
    dataset: FederatedDataset,
    privacy: UserLevelPrivacy | ClientBudgets | None = None,
    noise: NoiseSource | None = None,
) -> Pipeline:
    """The update pipeline ``config`` asks for, with the simulated attack around its aggregator.

    In the clear: validation, then the streaming weighted mean, or DP-FedAvg's
    clip and noisy mean. Under secure aggregation the server sees no update, so
    there is no server-side validation: the clients' encoders clip and check.
    """
    stages, aggregator = _stages_and_aggregator(
        config, trainer, dataset, privacy, noise or server_noise(config)
    )
    attack = build_model_attack(config)
    if attack is not None:
        aggregator = AttackSimulation(
            aggregator, attack, malicious_clients(config, dataset), config.seed, stages=stages
        )
    return Pipeline(stages, aggregator)


def _stages_and_aggregator(
    config: RunConfig,
    trainer: Trainer,
    dataset: FederatedDataset,
    privacy: UserLevelPrivacy | ClientBudgets | None,
    noise: NoiseSource,
) -> tuple[list[Stage], Aggregator]:
    clip_norm = privacy.clip_norm if isinstance(privacy, UserLevelPrivacy) else None
    stages = build_stages(config, trainer.spec, clip_norm)
    if config.secure.kind != "none":
        return stages, build_secure_aggregator(config, dataset, privacy, noise)
    if not isinstance(privacy, UserLevelPrivacy):
        return stages, build_aggregator(config)
    noisy_mean = GaussianMean(
        noise_multiplier=privacy.noise_multiplier,
        clip_norm=privacy.clip_norm,
        expected_cohort_size=privacy.sampling.expected_cohort_size,
        noise=noise,
        adaptive=privacy.adaptive,
    )
    return stages, noisy_mean


def build_stages(config: RunConfig, spec: ParamSpec, clip_norm: ClipNorm | None) -> list[Stage]:
    """The pipeline's stages, from the config and the model's layout alone.

    Clients build the same list (a gRPC client from the config it is sent) and
    run the client halves in list order: local DP noises, then compression
    encodes; the server runs the server halves in the same order: compression
    decodes, validation reads the vector, DP-FedAvg clips. ``clip_norm`` is
    user-level DP's (shared with adaptive clipping on the server). Under
    secure aggregation the clients' encoders clip and check, so only local
    stages remain.
    """
    section = config.privacy
    stages: list[Stage] = []
    if section.mechanism == "local":
        assert section.noise_multiplier is not None
        stages.append(
            LocalGaussianNoise(
                section.clip_norm,
                section.noise_multiplier,
                section.delta,
                budget=section.epsilon,
                reproducible=section.reproducible_noise,
            )
        )
    policy = ReleasePolicy.of(config)
    withhold: list[Stage] = [WithholdClientStatistics(policy)] if policy.protected else []
    if config.secure.kind != "none":
        return stages + withhold
    stages += build_compression(config, spec.size)
    stages.append(ValidateUpdate(spec.size, config.pipeline.max_update_norm))
    if section.mechanism == "user_level":
        stages.append(
            ClipUpdate(
                clip_norm or ClipNorm(section.clip_norm),
                placement=section.clip_on,
                per_layer=spec if section.per_layer_clipping else None,
            )
        )
    return stages + withhold


def build_aggregator(config: RunConfig) -> Aggregator:
    """The weighted mean, or the Byzantine-robust rule ``config.pipeline.aggregator`` names."""
    section = config.pipeline
    anomaly = AnomalyRule(distance_z_threshold=section.anomaly_threshold)
    f = section.byzantine
    match section.aggregator:
        case "mean":
            return StreamingWeightedMean(section.weighting)
        case "median":
            return CoordinateMedian(anomaly=anomaly)
        case "trimmed_mean":
            return TrimmedMean(section.trim_fraction, anomaly=anomaly)
        case "krum":
            return Krum(f, anomaly=anomaly)
        case "multi_krum":
            selected = section.multi_krum_selected or max(config.sampling.cohort_size - f, 1)
            return MultiKrum(f, selected, anomaly=anomaly)
        case "bulyan":
            return Bulyan(f, anomaly=anomaly)
        case "geometric_median":
            return GeometricMedian(anomaly=anomaly)
        case "centered_clipping":
            return CenteredClipping(tau=section.clip_radius, anomaly=anomaly)
        case "norm_bounded_mean":
            return NormBoundedMean(section.clip_radius, anomaly=anomaly)
        case _:
            assert_never(section.aggregator)


def build_reputation(config: RunConfig) -> Reputation | None:
    """Quarantine of repeatedly flagged clients, when ``pipeline.quarantine_after`` is set."""
    after = config.pipeline.quarantine_after
    return None if after is None else Reputation(quarantine_after=after)


def build_compression(config: RunConfig, size: int) -> list[Stage]:
    """The compression stage ``config.pipeline.compression`` asks for (none when it is off)."""
    section = config.pipeline.compression
    if not section.enabled:
        return []
    codec = Codec(
        sparsify=section.sparsify,
        fraction=section.fraction,
        quantize=section.quantize,
        bits=section.bits,
        levels=section.levels,
        bucket_size=section.bucket_size,
        rotate=section.rotate,
    )
    return [
        CompressUpdate(
            codec,
            size,
            error_feedback=section.error_feedback,
            reproducible=config.privacy.reproducible_noise,
        )
    ]


def build_secure_aggregator(
    config: RunConfig,
    dataset: FederatedDataset,
    privacy: UserLevelPrivacy | ClientBudgets | None,
    noise: NoiseSource,
) -> Aggregator:
    """SecAgg+ (with the distributed DP mechanism under user-level DP) or CKKS aggregation."""
    weighting = config.pipeline.weighting
    if config.secure.kind == "he":
        from fedwarden.pipeline.he_mean import HomomorphicMean

        return HomomorphicMean(weighting, key_holder=remote_key_holder(config))
    distributed = privacy.distributed if isinstance(privacy, UserLevelPrivacy) else None
    assert distributed is None or isinstance(distributed, DistributedDiscreteGaussian)
    return SecureSum(
        secagg_parameters(config),
        clip_norm=config.secure.clip_norm,
        noise=noise,
        weighting=weighting,
        max_weight=max(dataset.train_sizes.values()),
        distributed_dp=distributed,
    )


def remote_key_holder(config: RunConfig) -> RemoteKeyHolder | None:
    """The key holder process ``config.secure`` names (None: an in-process one, simulation)."""
    address, identity = config.secure.key_holder, config.secure.key_holder_identity
    if address is None or identity is None:
        return None
    # Deferred, as the grpc runtime is: gRPC would slow every simulated run's start.
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.keyholder import RemoteKeyHolder

    return RemoteKeyHolder(address, TlsKit.from_dir(identity))


def secagg_parameters(config: RunConfig) -> SecAggParameters:
    """The ring size, neighbour count, threshold and corrupted clients ``config.secure`` names."""
    secure = config.secure
    return SecAggParameters(
        secure.modulus_bits, secure.num_neighbours, secure.threshold, secure.corrupted_clients
    )
