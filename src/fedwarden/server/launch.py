"""From a RunConfig to a finished run: build every part, run, resume."""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, assert_never

from dp_accounting import dp_event

from fedwarden.attacks import (
    ALittleIsEnough,
    AttackSimulation,
    GaussianNoise,
    InnerProductManipulation,
    ModelAttack,
    ModelReplacement,
    Scaling,
    SignFlip,
    Trigger,
    add_backdoor,
    backdoor_test_set,
    choose_malicious,
    flip_labels,
)
from fedwarden.core.config import RunConfig
from fedwarden.core.errors import ConfigError
from fedwarden.core.messages import TrainConfig
from fedwarden.core.params import ParamSpec, Vector
from fedwarden.core.records import RunResult
from fedwarden.data.dataset import FederatedDataset
from fedwarden.data.heterogeneity import label_heterogeneity
from fedwarden.data.sources import load_dataset
from fedwarden.deploy.revocation import REVOCATION_LIST, RevocationList
from fedwarden.models.numpy import softmax_regression
from fedwarden.models.trainer import Trainer
from fedwarden.pipeline import Pipeline, StreamingWeightedMean, ValidateUpdate
from fedwarden.pipeline.clip import ClipUpdate
from fedwarden.pipeline.compress import Codec, CompressUpdate
from fedwarden.pipeline.dp_mean import GaussianMean
from fedwarden.pipeline.local_dp import LocalGaussianNoise
from fedwarden.pipeline.releases import ReleasePolicy, WithholdClientStatistics, release_inventory
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
from fedwarden.privacy.accounting import (
    Neighboring,
    calibrate_noise_multiplier,
    calibrate_release,
)
from fedwarden.privacy.clipping import AdaptiveClipping, ClipNorm
from fedwarden.privacy.ledger import PrivacyBudget, PrivacyLedger
from fedwarden.privacy.randomness import NoiseSource
from fedwarden.privacy.secrecy import (
    cohort_randomness,
    commits_cohorts,
    sampling_secrecy,
    server_noise,
)
from fedwarden.privacy.silo import (
    ClientBudgets,
    LocalPrivacy,
    SiloPrivacy,
    calibrate_silo_noise_multiplier,
)
from fedwarden.privacy.user_level import CohortSampling, UserLevelPrivacy
from fedwarden.runtime.base import Runtime
from fedwarden.runtime.engine import Workload
from fedwarden.runtime.local import LocalRuntime
from fedwarden.runtime.ray import RayRuntime
from fedwarden.runtime.state import ClientStateStore
from fedwarden.secure.distributed_dp import DistributedDiscreteGaussian
from fedwarden.secure.secagg import SecAggParameters
from fedwarden.server.clustered import ClusteredTraining
from fedwarden.server.fedbuff import FedBuffServer
from fedwarden.server.integrity import (
    BudgetChange,
    recorded_config_hashes,
    recorded_epsilons,
    require_ledger,
    require_recorded_config,
    require_spend_kept,
)
from fedwarden.server.rundir import RunDirectory

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedwarden.core.alerts import Alert
    from fedwarden.governance.anchor import AnchorEveryRound
    from fedwarden.governance.audit import ServerAuditTrail
    from fedwarden.governance.store import RoundRows, RunStore
    from fedwarden.monitor.alerts import FederationMetrics, Monitoring
    from fedwarden.runtime.grpc.credentials import TlsKit
    from fedwarden.runtime.grpc.local_clients import LocalClients
from fedwarden.server.server import CentralTestSet, RoundObserver, Server
from fedwarden.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedOpt,
    FedProx,
    FedYogi,
    PoissonSampler,
    Sampler,
    Strategy,
    StratifiedSampler,
    UniformSampler,
)
from fedwarden.strategies.scaffold import Scaffold, ScaffoldTrainer

logger = logging.getLogger(__name__)


def build_trainer(config: RunConfig, dataset: FederatedDataset) -> Trainer:
    """The model adapter named by ``config.model`` for this data set's shape."""
    model = config.model
    num_classes = dataset.num_classes
    if model.kind == "softmax":
        if num_classes is None:
            raise ConfigError("model.kind 'softmax' needs a classification data set")
        return softmax_regression(dataset.num_features, num_classes)
    if model.kind == "mlp":
        if num_classes is None:
            raise ConfigError("model.kind 'mlp' needs a classification data set")
        from fedwarden.models.torch import TorchTrainer, mlp

        factory = partial(mlp, dataset.num_features, num_classes, model.hidden)
        privacy = config.privacy
        if privacy.mechanism == "dp_sgd":
            from fedwarden.models.dp_sgd import DpSgdTrainer

            assert privacy.noise_multiplier is not None
            return DpSgdTrainer(
                factory,
                noise_multiplier=privacy.noise_multiplier,
                max_grad_norm=privacy.max_grad_norm,
                delta=privacy.delta,
                noise=NoiseSource.secure_or_testing(privacy.reproducible_noise, config.seed),
            )
        return TorchTrainer(factory)
    if model.kind == "sklearn":
        from fedwarden.models.sklearn import SklearnTrainer

        return SklearnTrainer(
            model.estimator, num_features=dataset.num_features, num_classes=num_classes
        )
    assert model.factory is not None
    module_name, _, function_name = model.factory.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(
            f"model.factory {model.factory!r} cannot be imported ({error}); write it as "
            '"package.module:function" with the package on PYTHONPATH'
        ) from None
    trainer: Trainer = factory(dataset.num_features, num_classes)
    return trainer


def build_strategy(config: RunConfig, population: int, trainer: Trainer) -> Strategy:
    """The strategy named by ``config.strategy`` with the clients' training config.

    SCAFFOLD needs the model's size (``trainer`` is its :class:`ScaffoldTrainer`)
    and the share of the ``population`` sampled per round.
    """
    section = config.strategy
    train = TrainConfig(
        local_epochs=config.train.local_epochs,
        batch_size=config.train.batch_size,
        learning_rate=config.train.learning_rate,
    )
    if section.name == "scaffold":
        assert isinstance(trainer, ScaffoldTrainer)
        sampling = config.sampling
        fraction = (
            sampling.rate
            if sampling.scheme == "poisson"
            else min(sampling.cohort_size, population) / population
        )
        return Scaffold(
            train,
            model_size=trainer.model_size,
            sampled_fraction=fraction,
            server_learning_rate=section.server_learning_rate or 1.0,
        )
    if section.name in ("fedavg", "fedprox", "fedavgm"):
        server_lr = section.server_learning_rate or 1.0
        if section.name == "fedavg":
            return FedAvg(train, server_lr)
        if section.name == "fedprox":
            return FedProx(train, section.proximal_mu, server_lr)
        return FedAvgM(train, server_lr, section.momentum)
    fedopt_family: dict[str, type[FedOpt]] = {
        "fedadam": FedAdam,
        "fedyogi": FedYogi,
        "fedadagrad": FedAdagrad,
    }
    fedopt = fedopt_family[section.name]
    return fedopt(
        train,
        server_learning_rate=section.server_learning_rate or 0.01,
        beta1=section.beta1,
        beta2=section.beta2,
        tau=section.tau,
    )


def build_sampler(config: RunConfig, dataset: FederatedDataset) -> Sampler:
    """The cohort sampler named by ``config.sampling``."""
    sampling = config.sampling
    if sampling.scheme == "poisson":
        return PoissonSampler(sampling.rate)
    if sampling.scheme == "stratified":
        assert sampling.attribute is not None
        strata = {
            cid: client.attributes[sampling.attribute]
            for cid, client in dataset.clients.items()
            if sampling.attribute in client.attributes
        }
        return StratifiedSampler(sampling.cohort_size, sampling.attribute, strata)
    return UniformSampler(sampling.cohort_size)


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


def malicious_clients(config: RunConfig, dataset: FederatedDataset) -> tuple[str, ...]:
    """The clients ``config.attack`` makes malicious (none without an attack), from the seed."""
    attack = config.attack
    if attack.kind == "none":
        return ()
    return choose_malicious(dataset.client_ids, attack.malicious_fraction, config.seed)


def build_model_attack(config: RunConfig) -> ModelAttack | None:
    """The update-poisoning attack of ``config.attack`` (the backdoor's is model replacement)."""
    attack = config.attack
    match attack.kind:
        case "none" | "label_flip":
            return None
        case "sign_flip":
            return SignFlip(attack.scale)
        case "gaussian":
            return GaussianNoise(attack.sigma)
        case "scaling":
            return Scaling(attack.factor)
        case "alie":
            return ALittleIsEnough(attack.z)
        case "ipm":
            return InnerProductManipulation(attack.epsilon)
        case "backdoor":
            return ModelReplacement(attack.boost)
        case _:
            assert_never(attack.kind)


def backdoor_trigger(config: RunConfig) -> Trigger:
    """The trigger of ``config.attack`` (default: the 2x2 corner patch of an 8x8 image)."""
    attack = config.attack
    if attack.trigger_indices is None:
        return Trigger.corner_patch(value=attack.trigger_value)
    return Trigger(tuple(attack.trigger_indices), attack.trigger_value)


def build_backdoor_test(config: RunConfig, dataset: FederatedDataset) -> CentralTestSet | None:
    """Triggered central test examples labelled with the backdoor's target (None without one)."""
    if config.attack.kind != "backdoor":
        return None
    triggered = backdoor_test_set(
        dataset.x_test, dataset.y_test, backdoor_trigger(config), config.attack.target_label
    )
    return CentralTestSet(triggered.x, triggered.target_labels)


def poisoned(config: RunConfig, dataset: FederatedDataset) -> FederatedDataset:
    """``dataset`` with the malicious clients' training data poisoned, for data attacks."""
    attack = config.attack
    if attack.kind == "label_flip":
        return flip_labels(dataset, malicious_clients(config, dataset), mapping=attack.mapping)
    if attack.kind == "backdoor":
        return add_backdoor(
            dataset,
            malicious_clients(config, dataset),
            backdoor_trigger(config),
            attack.target_label,
            attack.poison_fraction,
            config.seed,
        )
    return dataset


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

        return HomomorphicMean(weighting)
    distributed = privacy.distributed if isinstance(privacy, UserLevelPrivacy) else None
    assert distributed is None or isinstance(distributed, DistributedDiscreteGaussian)
    return SecureSum(
        secagg_parameters(config),
        clip_norm=config.secure.clip_norm,
        noise=noise,
        weighting=weighting,
        max_weight=max(client.num_train for client in dataset.clients.values()),
        distributed_dp=distributed,
    )


def secagg_parameters(config: RunConfig) -> SecAggParameters:
    """The ring size, neighbour count, threshold and corrupted clients ``config.secure`` names."""
    secure = config.secure
    return SecAggParameters(
        secure.modulus_bits, secure.num_neighbours, secure.threshold, secure.corrupted_clients
    )


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
) -> UserLevelPrivacy | ClientBudgets | None:
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
            silo_sizes={cid: client.num_train for cid, client in dataset.clients.items()},
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
    poisson = config.sampling.scheme == "poisson"
    sampling = CohortSampling(
        population,
        rate=config.sampling.rate if poisson else None,
        cohort_size=None if poisson else config.sampling.cohort_size,
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
            population=None if poisson else population,
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


@dataclass(frozen=True)
class Deployment:
    """Where ``fedwarden server`` listens and keeps its state (the grpc runtime, for real).

    ``tls`` None serves ``--insecure`` (loopback only). ``store_url`` is a
    SQLAlchemy URL; None keeps a SQLite file in the runs directory.
    ``listening`` is set once the federation service accepts connections
    (the health endpoint reports it).
    """

    address: str
    tls: TlsKit | None
    store_url: str | None = None
    audit_key: Ed25519PrivateKey | None = None
    """Signs the audit log (``audit.key`` of the server kit); None: no audit log."""
    audit_public_key: Path | None = None
    """Where the audit log's public key (``audit.pub``) lies, to print how to verify it."""
    revocation_list: Path | None = None
    """The CA's revocation list (``revoked.pem`` of the server kit), re-read as it changes."""
    listening: threading.Event = field(default_factory=threading.Event)
    launcher: LocalClients | None = None
    """Local client processes to start (``fedwarden run`` on the grpc runtime)."""
    metrics: FederationMetrics = field(default_factory=lambda: _new_metrics())
    """The Prometheus series served on the operations endpoint's ``/metrics``."""

    @classmethod
    def local(
        cls,
        directory: Path,
        dataset: FederatedDataset,
        pki: Path,
        *,
        allow_test_mode_noise: bool = False,
    ) -> Deployment:
        """Loopback with mutual TLS and one client process per client, files under ``directory``.

        ``pki`` keeps the CA and the kits across runs (the store enrols each client's key once).
        ``allow_test_mode_noise`` lets the local clients accept a test-mode config.
        """
        from fedwarden.governance.audit import load_signing_key
        from fedwarden.runtime.grpc.local_clients import LocalClients

        launcher = LocalClients(
            directory, dataset, pki, allow_test_mode_noise=allow_test_mode_noise
        )
        tls = launcher.provision()
        audit_key = load_signing_key(launcher.server_kit / "audit.key")
        return cls(
            "127.0.0.1:0",
            tls,
            audit_key=audit_key,
            audit_public_key=launcher.server_kit / "audit.pub",
            revocation_list=launcher.server_kit / REVOCATION_LIST,
            launcher=launcher,
        )


def local_federation(runs_dir: Path) -> Path:
    """Where ``fedwarden run`` on the grpc runtime keeps the CA and kits of its local clients."""
    return runs_dir / "federation" / "pki"


def _new_metrics() -> FederationMetrics:
    from fedwarden.monitor.alerts import FederationMetrics

    return FederationMetrics()


def build_monitoring(
    config: RunConfig,
    audit: ServerAuditTrail | None,
    metrics: FederationMetrics | None,
    run_id: str | None = None,
) -> Monitoring:
    """The alert rules of ``config.monitoring`` and the run's MLflow tracking, if on.

    Alerts go to the log, the audit trail and the webhook; the MLflow run is named after
    ``run_id`` (the run directory's name; ``config.name`` for a run without one).
    """
    from fedwarden.monitor.alerts import AlertRules, AlertThresholds, Monitoring, webhook
    from fedwarden.monitor.tracking import start_tracking

    section = config.monitoring
    sinks: list[Callable[[Alert], None]] = []
    if audit is not None:
        sinks.append(audit.alert_raised)
    if section.webhook_url is not None:
        sinks.append(webhook(section.webhook_url))
    rules = AlertRules(
        AlertThresholds(
            loss_patience=section.loss_patience,
            max_dropout_fraction=section.max_dropout_fraction,
            silent_rounds=section.silent_rounds,
            budget_warning_fraction=section.budget_warning_fraction,
            accuracy_floor=section.accuracy_floor,
        ),
        budget_epsilon=config.privacy.epsilon if config.privacy.mechanism != "none" else None,
        sinks=sinks,
    )
    tracking = start_tracking(config, config.name if run_id is None else run_id)
    return Monitoring(rules, metrics or _new_metrics(), tracking)


def open_store(config: RunConfig, deployment: Deployment | None) -> RunStore:
    """A deployment's run store: its URL, or ``<runs_dir>/fedwarden.db``."""
    from fedwarden.governance.store import RunStore

    if deployment is not None and deployment.store_url is not None:
        return RunStore(deployment.store_url)
    config.runs_dir.mkdir(parents=True, exist_ok=True)
    return RunStore.sqlite(config.runs_dir / "fedwarden.db")


def build_runtime(
    config: RunConfig,
    dataset: FederatedDataset,
    run_dir: RunDirectory | None,
    store: RunStore | None,
    deployment: Deployment | None,
) -> Runtime:
    """The runtime named by ``config.runtime``; the grpc runtime serves ``deployment``."""
    if config.runtime.kind == "ray":
        return RayRuntime(config.runtime.workers, config.runtime.address)
    if config.runtime.kind == "local":
        return LocalRuntime(config.runtime.workers)
    from fedwarden.runtime.grpc.limits import ServerLimits
    from fedwarden.runtime.grpc.server import GrpcRuntime, RunDescription

    if run_dir is None or store is None or deployment is None:
        raise ConfigError(
            "the grpc runtime keeps its spool and store with the run directory; run with one"
        )
    return GrpcRuntime(
        deployment.address,
        tls=deployment.tls,
        store=store,
        run=RunDescription(
            run_dir.path.name,
            config.model_dump_json(),
            dataset.num_features,
            dataset.num_classes,
        ),
        spool_dir=run_dir.path / "spool",
        expected_clients=dataset.client_ids,
        heartbeat_s=config.runtime.heartbeat_s,
        join_timeout_s=config.runtime.join_timeout_s,
        revocations=None
        if deployment.tls is None or deployment.revocation_list is None
        else RevocationList(deployment.revocation_list, deployment.tls.root_certificate),
        limits=ServerLimits.for_clients(
            len(dataset.client_ids),
            stream_deadline_s=config.runtime.stream_deadline_s,
            calls_per_peer=config.runtime.calls_per_client,
        ),
        launcher=deployment.launcher,
        listening=deployment.listening,
    )


@dataclass(frozen=True)
class PreparedRun:
    """The data set and trainer of a run, built once and shared by server and workers.

    ``config`` is the run's config with every calibrated value filled in.
    """

    config: RunConfig
    dataset: FederatedDataset
    trainer: Trainer


def prepare(config: RunConfig) -> PreparedRun:
    """Load the data, calibrate DP-SGD's noise if asked to, and build the model for ``config``."""
    dataset = poisoned(config, load_dataset(config.data, config.seed))
    section = config.privacy
    if section.mechanism == "dp_sgd" and section.noise_multiplier is None:
        assert section.epsilon is not None
        noise_multiplier = calibrate_silo_noise_multiplier(
            section.epsilon,
            section.delta,
            silo_sizes=[client.num_train for client in dataset.clients.values()],
            batch_size=config.train.batch_size,
            local_epochs=config.train.local_epochs,
            rounds=config.rounds,
        )
        logger.info("DP-SGD noise multiplier calibrated to %.4f", noise_multiplier)
        privacy = section.model_copy(update={"noise_multiplier": noise_multiplier})
        config = config.model_copy(update={"privacy": privacy})
    trainer = build_trainer(config, dataset)
    if config.strategy.name == "scaffold":
        trainer = ScaffoldTrainer(trainer)
    return PreparedRun(config, dataset, trainer)


def resumed(run_dir: Path) -> tuple[RunConfig, int]:
    """The config of the run in ``run_dir`` and how many rounds it completed."""
    directory = RunDirectory(run_dir)
    config = RunConfig.model_validate_json(directory.read_config())
    checkpoint = directory.load_checkpoint()
    return config, 0 if checkpoint is None else checkpoint.round_index + 1


def _audit_trail(
    config: RunConfig,
    store: RunStore,
    run_dir: RunDirectory,
    deployment: Deployment,
    privacy: UserLevelPrivacy | ClientBudgets | None,
) -> ServerAuditTrail | None:
    """The run's audit trail (recording the run when it is new), or None without an audit key."""
    from fedwarden import __version__
    from fedwarden.governance.audit import AuditLog, ServerAuditTrail

    run_id = run_dir.path.name
    new_run = store.run(run_id) is None
    if new_run:
        store.create_run(run_id, config.name, run_dir.read_config(), str(run_dir.path))
    if deployment.audit_key is None:
        logger.warning(
            "no audit key (audit.key in the server kit): this run is not written to the audit "
            "log; issue a server kit with `fedwarden pki issue server NAME` to get one"
        )
        return None
    section = config.privacy
    dp = None
    if section.mechanism != "none":
        noise_multiplier = getattr(privacy, "noise_multiplier", None) or section.noise_multiplier
        dp = {
            "mechanism": section.mechanism,
            "noise_multiplier": noise_multiplier,
            "clip_norm": section.clip_norm,
            "epsilon_budget": section.epsilon,
            "delta": section.delta,
        }
    trail = ServerAuditTrail(
        AuditLog(store, deployment.audit_key),
        run_id,
        dp=dp,
        delta=None if dp is None else section.delta,
        cohort_openings=run_dir.path / "cohort_openings.json" if commits_cohorts(config) else None,
        ledger=None if privacy is None else privacy.ledger,
    )
    if new_run:
        trail.run_created(run_dir.read_config(), __version__)
    return trail


def serve(
    config: RunConfig,
    deployment: Deployment,
    observer: RoundObserver | None = None,
    budget_change: BudgetChange | None = None,
) -> RunResult:
    """``fedwarden server``: run ``config`` over gRPC, continuing its unfinished run if any.

    The store remembers the run; a server killed mid-run and started again
    with the same config and store continues from the last completed round.
    ``budget_change`` changes the unfinished run's budget explicitly: ``config``
    must then be its stored config with that budget.
    """
    with open_store(config, deployment) as store:
        unfinished = store.find_unfinished_run(config.name)
        resume = None
        if unfinished is not None:
            stored = RunConfig.model_validate_json(
                RunDirectory(Path(unfinished.run_dir)).read_config()
            )
            expected = stored if budget_change is None else budget_change.apply(stored)
            if expected != config:
                raise ConfigError(
                    f"run {config.name!r} ({unfinished.run_id}) is unfinished and was started "
                    "with another config; restore that config, or give this run another name "
                    "(a privacy budget changes only with --budget-epsilon E "
                    "--budget-changed-by NAME)"
                )
            resume = Path(unfinished.run_dir)
            config = stored
            logger.warning("continuing unfinished run %s", unfinished.run_id)
        return run(
            config,
            resume=resume,
            observer=observer,
            deployment=deployment,
            store=store,
            budget_change=budget_change,
        )


def run(
    config: RunConfig,
    *,
    resume: Path | None = None,
    observer: RoundObserver | None = None,
    write_run_dir: bool = True,
    stop_after: int | None = None,
    deployment: Deployment | None = None,
    store: RunStore | None = None,
    budget_change: BudgetChange | None = None,
) -> RunResult:
    """Run ``config`` to the end and return its result.

    With ``resume``, continue the run in that directory instead: ``config``
    must be the one stored there (see :func:`resumed`), and the run's ledger
    must agree with every record of it (:mod:`fedwarden.server.integrity`);
    ``budget_change`` changes its privacy budget explicitly. ``deployment`` and
    ``store`` are the grpc runtime's (see :func:`serve`).
    """
    if budget_change is not None and resume is None:
        raise ConfigError(
            "a privacy budget is changed only when resuming a run (--resume RUN_DIR); a new "
            "run takes its budget from privacy.epsilon"
        )
    if resume is not None:
        run_dir: RunDirectory | None = RunDirectory(resume)
    elif write_run_dir:
        run_dir = RunDirectory.create(config.runs_dir, config.name)
        run_dir.write_config(config.model_dump_json(indent=1))
    else:
        run_dir = None
    if config.runtime.kind == "grpc" and store is None:
        if run_dir is None:
            raise ConfigError(
                "the grpc runtime keeps its store and spool in the run directory; run with one"
            )
        # The runs directory's store: its registry and audit log span successive runs.
        with open_store(config, deployment) as runs_store:
            return _run(
                config, run_dir, observer, stop_after, deployment, runs_store, budget_change
            )
    return _run(config, run_dir, observer, stop_after, deployment, store, budget_change)


def _run(
    config: RunConfig,
    run_dir: RunDirectory | None,
    observer: RoundObserver | None,
    stop_after: int | None,
    deployment: Deployment | None,
    store: RunStore | None,
    budget_change: BudgetChange | None = None,
) -> RunResult:
    checkpoint = None if run_dir is None else run_dir.load_checkpoint()
    resume = None if run_dir is None or checkpoint is None else run_dir.path
    clustering = config.clustering
    if clustering.enabled and resume is not None:
        raise ConfigError("a clustered run cannot be resumed yet; start it again")
    old_epsilon = config.privacy.epsilon
    if run_dir is not None and checkpoint is not None:
        require_ledger(run_dir, config, checkpoint)
        require_recorded_config(run_dir, recorded_config_hashes(store, run_dir))
    if budget_change is not None:
        config = budget_change.apply(config)
        changed_config_json = config.model_dump_json(indent=1)
    prepared = prepare(config)
    config, dataset, trainer = prepared.config, prepared.dataset, prepared.trainer
    pilot_clients = _pilot_clients(config, dataset)
    policy = ReleasePolicy.of(config)
    if policy.protected:
        logger.info(policy.why_no_train_loss())
    privacy = build_privacy(
        config,
        dataset,
        trainer.spec.size,
        run_dir,
        None if budget_change is None else budget_change.by,
    )
    if run_dir is not None and checkpoint is not None and privacy is not None:
        require_spend_kept(
            run_dir, privacy.epsilon(), recorded_epsilons(store, run_dir, checkpoint)
        )
    noise = server_noise(config)
    pipeline = build_pipeline(config, trainer, dataset, privacy, noise)
    audit = None
    if store is not None and run_dir is not None:
        if deployment is None:
            deployment = Deployment.local(
                run_dir.path / "deploy",
                dataset,
                local_federation(config.runs_dir),
                allow_test_mode_noise=config.privacy.reproducible_noise,
            )
        audit = _audit_trail(config, store, run_dir, deployment, privacy)
    if budget_change is not None and run_dir is not None and old_epsilon is not None:
        budget_change.record(run_dir, store, audit, old_epsilon, changed_config_json)
    monitoring = build_monitoring(
        config,
        audit,
        None if deployment is None else deployment.metrics,
        run_id=None if run_dir is None else run_dir.path.name,
    )
    try:  # a run that fails marks its MLflow run FAILED
        with build_runtime(config, dataset, run_dir, store, deployment) as runtime:

            def make_server(
                client_ids: Sequence[str], initial_vector: Vector, rounds: int
            ) -> Server:
                """A cluster's server over the running runtime (no central test: it is global)."""
                cluster_server = Server(
                    trainer=trainer,
                    strategy=build_strategy(config, len(client_ids), trainer),
                    sampler=build_sampler(config, dataset),
                    pipeline=build_pipeline(config, trainer, dataset),
                    runtime=runtime,
                    client_ids=client_ids,
                    rounds=rounds,
                    seed=config.seed,
                    cohort_randomness=cohort_randomness(config),
                    min_cohort=config.sampling.min_cohort,
                    deadline_s=config.sampling.deadline_s,
                    evaluate_every=config.evaluate_every,
                    observer=observer,
                )
                cluster_server.vector = initial_vector.copy()
                return cluster_server

            server_settings: dict[str, Any] = {
                "trainer": trainer,
                "strategy": build_strategy(config, len(dataset.clients), trainer),
                "sampler": build_sampler(config, dataset),
                "pipeline": pipeline,
                "runtime": runtime,
                "client_ids": dataset.client_ids,
                "rounds": clustering.warmup_rounds if clustering.enabled else config.rounds,
                "seed": config.seed,
                "cohort_randomness": cohort_randomness(config),
                "noise_randomness": noise,
                "central_test": CentralTestSet(dataset.x_test, dataset.y_test),
                "backdoor_test": build_backdoor_test(config, dataset),
                "reputation": build_reputation(config),
                "min_cohort": config.sampling.min_cohort,
                "deadline_s": config.sampling.deadline_s,
                "evaluate_every": config.evaluate_every,
                "run_dir": run_dir,
                "observer": observer,
                "privacy": privacy,
                "audit": audit,
                "monitors": [
                    monitoring,
                    *_round_rows(store, run_dir),
                    *_anchoring(store, run_dir, audit, deployment),
                ],
                "client_evaluation_off": None
                if policy.federated_evaluation
                else policy.why_no_federated_evaluation("the end-of-run client evaluation"),
            }
            asynchronous = config.asynchronous
            server = (
                FedBuffServer(
                    buffer_size=asynchronous.buffer_size,
                    concurrency=asynchronous.concurrency or 2 * asynchronous.buffer_size,
                    staleness_exponent=asynchronous.staleness_exponent,
                    max_staleness=asynchronous.max_staleness,
                    **server_settings,
                )
                if asynchronous.enabled
                else Server(**server_settings)
            )
            checkpoint = None if run_dir is None else run_dir.load_checkpoint()
            state_dir = None if run_dir is None else run_dir.client_state_dir
            if checkpoint is not None:
                server.restore(checkpoint)
                if state_dir is not None:
                    ClientStateStore(state_dir).discard_after(checkpoint.round_index)
            runtime.start(Workload(dataset, trainer, pipeline.stages, config.seed, state_dir))
            finetune = None
            if config.personalization.finetune_epochs:
                finetune = TrainConfig(
                    local_epochs=config.personalization.finetune_epochs,
                    batch_size=config.train.batch_size,
                    learning_rate=config.train.learning_rate,
                )
            clustered = None
            if clustering.enabled:
                clustered = ClusteredTraining(
                    make_server,
                    cluster_rounds=config.rounds - clustering.warmup_rounds - 1,
                    max_clusters=clustering.max_clusters,
                    min_cluster_size=clustering.min_cluster_size,
                    distance_threshold=clustering.distance_threshold,
                ).run(server)
                result = replace(
                    clustered.warmup,
                    rounds=config.rounds,
                    client_accuracy=clustered.clustered_metrics.get("accuracy"),
                )
            else:
                result = server.run(finetune=finetune, stop_after=stop_after)
            governed: dict[str, Any] = {}
            completed = run_dir is not None and store is not None and result.rounds == config.rounds
            if completed and audit is not None and run_dir is not None and store is not None:
                description = f"{config.data.source}, held by {len(dataset.clients)} clients"
                governed = _register_model(
                    config, store, audit, run_dir, result, description, runtime, pilot_clients
                )
                assert deployment is not None
                governed["governance"] = _governance_report(store, audit, run_dir, deployment)
        extras = {
            **result.extras,
            "runtime": runtime.name,
            "num_clients": len(dataset.clients),
            "pipeline": pipeline.describe(),
        }
        aggregator_report = pipeline.aggregator.report()
        if pipeline.aggregator.hides_individual_updates:
            extras["secure_aggregation"] = aggregator_report
        if "robust_rule" in aggregator_report:
            extras["robust_aggregation"] = aggregator_report
        if server.reputation is not None:
            extras["quarantined_clients"] = sorted(server.reputation.quarantined())
        malicious = malicious_clients(config, dataset)
        if malicious:
            attack = {"kind": config.attack.kind, "malicious_clients": list(malicious)}
            if isinstance(pipeline.aggregator, AttackSimulation):
                counts = aggregator_report["attack"]
                attack["poisoned_updates"] = counts["poisoned_updates"]
                attack["poisoned_rejected"] = counts["poisoned_rejected"]
            extras["attack"] = attack
        if clustered is not None:
            extras["clustering"] = clustered.to_json()
        if config.privacy.mechanism != "none":
            extras["privacy"] = {**extras.get("privacy", {}), **sampling_secrecy(config)}
        if policy.protected:
            extras.setdefault("privacy", {})["releases"] = release_inventory(
                config,
                None if privacy is None else privacy.ledger,
                config.rollout.pilot_clients,
            )
        if dataset.num_classes is not None:
            heterogeneity = label_heterogeneity(dataset)
            extras["label_chi2"] = heterogeneity.chi2
            extras["label_chi2_p_value"] = heterogeneity.p_value
        extras.update(governed)
        monitoring.run_finished(
            None if run_dir is None else run_dir.path, extras.get("registered_model")
        )
        final = RunResult(**{**result.__dict__, "extras": extras})
        if run_dir is not None:
            run_dir.write_summary(final.to_json())
            if store is not None and completed:
                store.finish_run(run_dir.path.name, "completed")
        return final
    except BaseException:
        monitoring.run_failed()
        raise


def _anchoring(
    store: RunStore | None,
    run_dir: RunDirectory | None,
    audit: ServerAuditTrail | None,
    deployment: Deployment | None,
) -> list[AnchorEveryRound]:
    """The writer of the audit log's root-signed anchor into the run directory, every round."""
    from fedwarden.governance.anchor import ANCHOR_FILE, AnchorEveryRound

    if store is None or run_dir is None or audit is None or deployment is None:
        return []
    if deployment.audit_key is None:
        return []
    return [AnchorEveryRound(store, deployment.audit_key, run_dir.path / ANCHOR_FILE)]


def _round_rows(store: RunStore | None, run_dir: RunDirectory | None) -> list[RoundRows]:
    """The run store's recorder of completed rounds, when the run has a store."""
    from fedwarden.governance.store import RoundRows

    if store is None or run_dir is None:
        return []
    return [RoundRows(store, run_dir.path.name)]


def _governance_report(
    store: RunStore, audit: ServerAuditTrail, run_dir: RunDirectory, deployment: Deployment
) -> dict[str, str | None]:
    """Write the HTML audit report and a last anchor into the run directory; where all is."""
    from fedwarden.governance.audit import audit_report, render_html

    report = run_dir.path / "audit_report.html"
    report.write_text(render_html(audit_report(store, audit.log.public_key)))
    anchors = _anchoring(store, run_dir, audit, deployment)
    for writer in anchors:
        writer.anchor()
    return {
        "audit_anchor": str(anchors[0].path) if anchors else None,
        "store": store.url,
        "audit_public_key": (
            None if deployment.audit_public_key is None else str(deployment.audit_public_key)
        ),
        "audit_report": str(report),
    }


def _pilot_clients(config: RunConfig, dataset: FederatedDataset) -> list[str]:
    """The clients that will pilot the run's final model, drawn before anyone trains."""
    from fedwarden.server.rollout import draw_pilot

    count = config.rollout.pilot_clients
    policy = ReleasePolicy.of(config)
    if count and not policy.federated_evaluation:
        logger.warning(policy.why_no_federated_evaluation("the pilot evaluation"))
        return []
    return draw_pilot(dataset.client_ids, count, config.seed) if count else []


def _privacy_claim(result: RunResult) -> dict[str, Any]:
    """What the registry claims the run spent: its reported epsilon, which an auditor recomputes.

    ``epsilon_spent`` is the run's guarantee (the largest client's under per-client budgets);
    ``fedwarden audit recompute`` rebuilds it from the DP events in the signed audit log.
    """
    privacy = result.extras.get("privacy", {})
    return {"epsilon_spent": privacy.get("epsilon")}


def _register_model(
    config: RunConfig,
    store: RunStore,
    audit: ServerAuditTrail,
    run_dir: RunDirectory,
    result: RunResult,
    data_description: str,
    runtime: Runtime,
    pilot_clients: list[str],
) -> dict[str, Any]:
    """Register the final model as the next candidate (audited) and pilot it on ``pilot_clients``.

    Returns the summary's entries: ``registered_model`` (its reference) and ``pilot``.
    """
    import hashlib

    from fedwarden.governance.registry import ModelRegistry
    from fedwarden.server.rollout import run_pilot

    metrics = {
        name: value
        for name, value in (
            ("accuracy", result.accuracy),
            ("loss", result.loss),
            ("client_accuracy", result.client_accuracy),
        )
        if value is not None
    }
    registry = ModelRegistry(store, audit.log)
    version = registry.register(
        run_dir.path.name,
        None,
        run_dir.path / "model.npz",
        (run_dir.path / "param_spec.json").read_text(),
        rounds=result.rounds,
        participants=sum(record.participants for record in result.history),
        dp=None if audit.dp is None else {**audit.dp, **_privacy_claim(result)},
        metrics=metrics,
        config_hash=hashlib.sha256(run_dir.read_config().encode()).hexdigest(),
        data_description=data_description,
    )
    logger.info("registered the final model as %s", version.reference)
    governed: dict[str, Any] = {"registered_model": version.reference}
    if pilot_clients:
        vector = registry.weights(version.reference)
        pilot = run_pilot(
            runtime, registry, version, vector, pilot_clients, config.rounds, "fedwarden server"
        )
        if pilot is not None:
            governed["pilot"] = pilot.to_json()
    return governed
