"""The update pipeline a config names: client and server stages, and the aggregator."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, assert_never

import numpy as np

from fedwarden.attacks import (
    AttackSimulation,
)
from fedwarden.build.attacks import (
    build_model_attack,
    malicious_clients,
)
from fedwarden.core.config import RunConfig
from fedwarden.core.messages import TrainConfig, client_seed
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.data.dataset import ClientData, FederatedDataset
from fedwarden.data.sources import load_root_file
from fedwarden.models.trainer import ClientContext, Trainer
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
    FLTrust,
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
        return stages, build_aggregator(config, trainer, dataset)
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


def build_aggregator(config: RunConfig, trainer: Trainer, dataset: FederatedDataset) -> Aggregator:
    """The weighted mean, or the Byzantine-robust rule ``config.pipeline.aggregator`` names.

    FLTrust's server update trains ``trainer`` on ``pipeline.root_data``, read
    in any client data format with the labels of ``dataset``.
    """
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
        case "fltrust":
            assert section.root_data is not None
            root = load_root_file(section.root_data, config.data, dataset.num_classes)
            return FLTrust(RootDataUpdate(trainer, root, config.seed), anomaly=anomaly)
        case _:
            assert_never(section.aggregator)


class RootDataUpdate:
    """FLTrust's server update: the round's global model trained on the server's root data set.

    Cao, Fang, Liu & Gong 2021, Algorithm 2: ``g_0 = ModelUpdate(w, D_0, b,
    beta, R_l)``, the update of the same global model ``w`` on the clean root
    set ``D_0`` with the clients' local training settings. The root set trains
    as a client's data would (the same trainer and training settings); its
    training generator is derived from the run seed, the round and the root
    set's id as a client's is, so the update is the same on every run and
    resume. The root set is the server's own data: no privacy guarantee covers it.
    """

    def __init__(self, trainer: Trainer, root: ClientData, seed: int) -> None:
        self.trainer = trainer
        self.root = root
        self.seed = seed

    def __call__(self, round_index: int, vector: Vector, train: TrainConfig) -> Vector:
        """Train ``vector`` on the root set as one client's round does; the update."""
        context = ClientContext(
            client_id=self.root.client_id,
            data=self.root,
            round_index=round_index,
            rng=np.random.default_rng(client_seed(self.seed, round_index, self.root.client_id)),
        )
        return self.trainer.fit(vector, context, train).update


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
