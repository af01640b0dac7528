"""RunConfig: the typed, validated form of a run's TOML file.

Every section is a pydantic model with ``extra="forbid"``, so a typo or a bad
value fails at load time with an error naming the key, the value and what is
allowed (:func:`load_config`).
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from fedwarden.core.alerts import check_webhook_url
from fedwarden.core.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionConfig(Section):
    """How a centralized data set is split across clients."""

    scheme: Literal["iid", "dirichlet", "shards", "power_law"] = "dirichlet"
    alpha: Annotated[float, Field(gt=0)] = 0.5
    """Dirichlet concentration: small values give strong label skew (Hsu et al. 2019)."""
    shards_per_client: Annotated[int, Field(ge=1)] = 2
    """Label-sorted shards per client (McMahan et al. 2017)."""
    power_law_exponent: Annotated[float, Field(gt=0)] = 1.5
    """Quantity skew: client sizes proportional to a Pareto draw with this exponent."""
    min_client_size: Annotated[int, Field(ge=1)] = 10


class DataConfig(Section):
    """Where the clients' data comes from and how it is split."""

    source: Literal["digits", "breast_cancer", "wine", "synthetic", "npz_folder"] = "digits"
    num_clients: Annotated[int, Field(ge=1)] = 20
    partition: PartitionConfig = PartitionConfig()
    central_test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Share of a centralized data set held out as the server's test set."""
    client_test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Share of each client's data held out as its local test split."""
    path: Path | None = None
    """The folder of per-client ``.npz`` files (``source = "npz_folder"``)."""
    synthetic_alpha: Annotated[float, Field(ge=0)] = 1.0
    synthetic_beta: Annotated[float, Field(ge=0)] = 1.0
    synthetic_features: Annotated[int, Field(ge=1)] = 60
    synthetic_classes: Annotated[int, Field(ge=2)] = 10

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        if self.source == "npz_folder" and self.path is None:
            raise ValueError(
                "source 'npz_folder' needs data.path, the folder of <client>.npz files"
            )
        if self.source != "npz_folder" and self.path is not None:
            raise ValueError(f"data.path is only read for source 'npz_folder', not {self.source!r}")
        return self


SECRET_KEYS = frozenset({"webhook_url", "mlflow_tracking_uri"})
"""Keys whose values may carry a secret (a token in a URL): errors never echo them."""


def format_validation_error(error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: the dotted key, what was wrong, and what is allowed."""
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            known = _known_keys(model, problem["loc"][:-1])
            key = str(problem["loc"][-1])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(sorted(known))
            lines.append(f"{location}: unknown key{hint} (allowed here: {allowed})")
        else:
            value = problem.get("input")
            secret = bool(problem["loc"]) and problem["loc"][-1] in SECRET_KEYS
            shown = "" if isinstance(value, dict) or secret else f" (got {value!r})"
            lines.append(f"{location}: {problem['msg']}{shown}")
    return "\n".join(lines)


def _known_keys(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``path`` inside ``model``."""
    current: type[BaseModel] = model
    for part in path:
        annotation = current.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def parse_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning syntax errors into :class:`ConfigError`."""
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None


class ModelConfig(Section):
    """Which model the clients train.

    ``kind``: ``softmax`` (NumPy multinomial logistic regression), ``mlp``
    (PyTorch, needs the ``torch`` extra), ``sklearn`` (a scikit-learn linear
    model named by ``estimator``), or ``custom``: ``factory = "module:function"``
    returning a Trainer, called with the data set's feature and class counts.
    """

    kind: Literal["softmax", "mlp", "sklearn", "custom"] = "softmax"
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (64,)
    estimator: Literal["sgd_classifier", "sgd_regressor", "logistic_regression"] = "sgd_classifier"
    factory: str | None = None

    @model_validator(mode="after")
    def _factory_for_custom(self) -> ModelConfig:
        if (self.kind == "custom") != (self.factory is not None):
            raise ValueError(
                "model.factory (\"module:function\") is set exactly when kind = 'custom'"
            )
        return self


class TrainSection(Section):
    """How each client trains per round."""

    local_epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 32
    learning_rate: Annotated[float, Field(gt=0)] = 0.05


class StrategyConfig(Section):
    """The server algorithm. Fields a strategy does not use are ignored by it."""

    name: Literal[
        "fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"
    ] = "fedavg"
    server_learning_rate: Annotated[float, Field(gt=0)] | None = None
    """Defaults: 1.0 for FedAvg/FedProx/FedAvgM, 0.01 for the FedOpt family."""
    proximal_mu: Annotated[float, Field(ge=0)] = 0.01
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[float, Field(gt=0)] = 1e-3


class SamplingConfig(Section):
    """How each round's cohort is drawn, and when a round counts."""

    scheme: Literal["uniform", "poisson", "stratified"] = "uniform"
    cohort_size: Annotated[int, Field(ge=1)] = 10
    rate: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Poisson sampling probability per client and round."""
    attribute: str | None = None
    """Client attribute to stratify by (``scheme = "stratified"``)."""
    min_cohort: Annotated[int, Field(ge=1)] = 1
    """Fewest accepted updates for a round to change the model."""
    deadline_s: Annotated[float, Field(gt=0)] | None = None
    """Wall-clock seconds after which unfinished clients are dropped and counted."""

    @model_validator(mode="after")
    def _attribute_for_stratified(self) -> SamplingConfig:
        if self.scheme == "stratified" and self.attribute is None:
            raise ValueError(
                "scheme 'stratified' needs sampling.attribute, the attribute to group by"
            )
        return self


class CompressionConfig(Section):
    """Update compression on the client, decoded on the server (bytes on the wire counted exactly).

    ``sparsify`` keeps ``fraction`` of the coordinates (``topk``: the largest;
    ``randk``: seeded random positions); ``quantize`` codes the values
    (``uniform`` with ``bits`` in 1, 2, 4, 8; ``qsgd`` with ``levels`` per
    ``bucket_size`` bucket, Alistarh et al. 2017); ``rotate`` applies a
    randomized Hadamard rotation before quantizing (Suresh et al. 2017);
    ``error_feedback`` keeps what compression lost in the client's state and
    adds it to the next update (Stich et al. 2018; Karimireddy et al. 2019).
    Off while both ``sparsify`` and ``quantize`` are ``"none"``.
    """

    sparsify: Literal["none", "topk", "randk"] = "none"
    fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    quantize: Literal["none", "uniform", "qsgd"] = "none"
    bits: Literal[1, 2, 4, 8] = 8
    levels: Annotated[int, Field(ge=1)] = 15
    bucket_size: Annotated[int, Field(ge=1)] = 512
    rotate: bool = False
    error_feedback: bool = True

    @property
    def enabled(self) -> bool:
        """Whether any compression is asked for."""
        return self.sparsify != "none" or self.quantize != "none"


class PipelineConfig(Section):
    """Server-side checks and aggregation of updates.

    ``aggregator`` picks the reduction: the weighted ``mean`` (FedAvg) or a
    Byzantine-robust rule (``median``, ``trimmed_mean`` trimming
    ``trim_fraction`` at each end, ``krum`` / ``multi_krum`` / ``bulyan``
    tolerating ``byzantine`` = f attackers, ``multi_krum`` averaging
    ``multi_krum_selected`` (default n - f), ``geometric_median``,
    ``centered_clipping`` with radius ``clip_radius``, ``norm_bounded_mean``
    clipping each update to ``clip_radius``). Robust rules score every update;
    an update ``anomaly_threshold`` robust z-scores from the center is flagged,
    and a client flagged ``quarantine_after`` times is no longer sampled.
    """

    max_update_norm: Annotated[float, Field(gt=0)] | None = None
    """Reject updates whose L2 norm exceeds this (a sanity bound, not DP clipping)."""
    weighting: Literal["examples", "uniform"] = "examples"
    compression: CompressionConfig = CompressionConfig()
    aggregator: Literal[
        "mean",
        "median",
        "trimmed_mean",
        "krum",
        "multi_krum",
        "bulyan",
        "geometric_median",
        "centered_clipping",
        "norm_bounded_mean",
    ] = "mean"
    byzantine: Annotated[int, Field(ge=0)] = 0
    trim_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    multi_krum_selected: Annotated[int, Field(ge=1)] | None = None
    clip_radius: Annotated[float, Field(gt=0)] = 1.0
    anomaly_threshold: Annotated[float, Field(gt=0)] = 3.5
    quarantine_after: Annotated[int, Field(ge=1)] | None = None


class PersonalizationConfig(Section):
    """Personalization by local fine-tuning after training."""

    finetune_epochs: Annotated[int, Field(ge=0)] = 0


class PrivacyConfig(Section):
    """Differential privacy: the mechanism, the budget, and how noise is calibrated.

    ``mechanism = "user_level"`` is DP-FedAvg (McMahan et al. 2018): the privacy
    unit is a client, each update is clipped to ``clip_norm`` and the sum gets
    Gaussian noise ``noise_multiplier * clip_norm``. Without a
    ``noise_multiplier`` the noise is calibrated so that ``rounds`` rounds spend
    exactly the budget ``epsilon`` at ``delta``. ``mechanism = "local"`` is local
    DP: each client clips to ``clip_norm`` and adds noise
    ``noise_multiplier * 2 * clip_norm`` itself; ``epsilon`` is each client's
    budget, and a client whose next release would exceed it is no longer sampled.
    ``mechanism = "dp_sgd"`` is sample-level DP-SGD at each silo (Abadi et al.
    2016, with Opacus; PyTorch models): per-example gradients clipped to
    ``max_grad_norm``, noise ``noise_multiplier * max_grad_norm``; ``epsilon`` is
    each silo's budget, and a silo that would exceed it is no longer sampled.
    Without a ``noise_multiplier`` it is calibrated so that the smallest silo's
    ``rounds`` rounds spend exactly ``epsilon``.
    """

    mechanism: Literal["none", "user_level", "local", "dp_sgd"] = "none"
    epsilon: Annotated[float, Field(gt=0)] | None = None
    """Run budget; a round that would exceed it is refused before sampling."""
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    noise_multiplier: Annotated[float, Field(gt=0)] | None = None
    clip_norm: Annotated[float, Field(gt=0)] = 1.0
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    """DP-SGD's per-example gradient clip norm."""
    clip_on: Literal["client", "server"] = "client"
    per_layer_clipping: bool = False
    adaptive_clipping: bool = False
    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    clip_learning_rate: Annotated[float, Field(gt=0)] = 0.2
    count_noise_multiplier: Annotated[float, Field(gt=0)] = 10.0
    reproducible_noise: bool = False
    """Test mode only: noise from a seeded stream, logged loudly. Never for a real release."""
    public_example_counts: bool = False
    """Declare each client's example count public: sent in clear and stored beside its update.

    Under differential privacy or secure aggregation counts are otherwise withheld (inside the
    secure sum, or every client weighs the same); DP-SGD's per-silo accounting always uses them.
    """

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyConfig:
        if self.mechanism == "user_level" and self.epsilon is None:
            raise ValueError("privacy.mechanism 'user_level' needs a budget: set privacy.epsilon")
        if self.mechanism == "dp_sgd" and self.epsilon is None:
            raise ValueError(
                "privacy.mechanism 'dp_sgd' needs privacy.epsilon (each silo's budget)"
            )
        if self.mechanism == "local" and self.noise_multiplier is None:
            raise ValueError(
                "privacy.mechanism 'local' needs privacy.noise_multiplier (noise std is "
                "noise_multiplier * 2 * clip_norm)"
            )
        if self.mechanism == "local" and self.epsilon is None:
            raise ValueError(
                "privacy.mechanism 'local' needs privacy.epsilon (each client's budget: a client "
                "whose next release would exceed it is no longer sampled)"
            )
        if self.adaptive_clipping and self.per_layer_clipping:
            raise ValueError(
                "adaptive clipping tracks one flat clip norm; turn off per_layer_clipping"
            )
        return self


class SecureConfig(Section):
    """Secure aggregation: the server learns only the cohort's sum, never one update.

    ``kind = "secagg"`` is SecAgg+ (Bonawitz et al. 2017; Bell et al. 2020):
    each update is clipped to ``clip_norm``, stochastically quantized to
    integers mod ``2^modulus_bits`` and masked; ``num_neighbours`` (k),
    ``threshold`` (t) and ``corrupted_clients`` (c, clients that may collude
    with a lying server; t must exceed (k + 1 + c) / 2) default to values sized
    for the cohort (see :mod:`fedwarden.secure.secagg_parameters`). With
    ``privacy.mechanism = "user_level"`` the clients add the noise themselves
    (the distributed discrete Gaussian, Kairouz et al. 2021), clip to
    ``privacy.clip_norm``, and the ledger charges the noise of ``t`` survivors.
    ``kind = "he"`` sums CKKS ciphertexts (TenSEAL) that only a separate key
    holder can decrypt.
    """

    kind: Literal["none", "secagg", "he"] = "none"
    modulus_bits: Annotated[int, Field(ge=8, le=62)] = 32
    num_neighbours: Annotated[int, Field(ge=1)] | None = None
    threshold: Annotated[int, Field(ge=2)] | None = None
    corrupted_clients: Annotated[int, Field(ge=0)] | None = None
    clip_norm: Annotated[float, Field(gt=0)] = 10.0
    """L2 bound of each update inside the ring (without user-level DP)."""


class AttackConfig(Section):
    """Attack simulation for robustness studies: which clients are malicious and what they do.

    ``kind`` is a model-poisoning attack on the update (``sign_flip``:
    ``-scale`` times the client's own update; ``gaussian``: N(0, ``sigma``^2);
    ``scaling``: ``factor`` times it; ``alie``: Baruch et al. 2019, z from the
    normal quantile unless ``z`` is given; ``ipm``: ``-epsilon`` times the
    benign mean, Xie et al. 2020), or data poisoning (``label_flip`` with
    ``mapping``; ``backdoor``: ``trigger_indices`` set to ``trigger_value`` on
    ``poison_fraction`` of each malicious client's examples, relabelled
    ``target_label``, then model replacement with ``boost``, Bagdasaryan et
    al. 2020). ``malicious_fraction`` of the clients, chosen from the seed.
    """

    kind: Literal[
        "none", "sign_flip", "gaussian", "scaling", "alie", "ipm", "label_flip", "backdoor"
    ] = "none"
    malicious_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    scale: Annotated[float, Field(gt=0)] = 1.0
    sigma: Annotated[float, Field(gt=0)] = 1.0
    factor: Annotated[float, Field(gt=0)] = 10.0
    z: Annotated[float, Field(gt=0)] | None = None
    epsilon: Annotated[float, Field(gt=0)] = 0.1
    mapping: Literal["shift", "reverse"] = "shift"
    target_label: Annotated[int, Field(ge=0)] = 0
    poison_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    trigger_indices: list[Annotated[int, Field(ge=0)]] | None = None
    """Feature indices the trigger sets; default the 2x2 bottom-right patch of an 8x8 image."""
    trigger_value: float = 1.0
    boost: Annotated[float, Field(gt=0)] | None = None
    """Model replacement's boost; default cohort size over malicious count."""


class ClusteringConfig(Section):
    """Clustered FL (Briggs et al. 2020): one model per group of clients whose updates agree.

    With ``enabled``, the global model trains ``warmup_rounds`` rounds; then
    every client trains once from it (the probe), the clients are clustered by
    the cosine similarity of those updates (average linkage, cut at
    ``distance_threshold``, at most ``max_clusters``, clusters smaller than
    ``min_cluster_size`` merged into the nearest), and each cluster trains its
    own model for the remaining ``rounds - warmup_rounds - 1`` rounds.
    """

    enabled: bool = False
    warmup_rounds: Annotated[int, Field(ge=0)] = 5
    max_clusters: Annotated[int, Field(ge=1)] = 4
    min_cluster_size: Annotated[int, Field(ge=1)] = 2
    distance_threshold: Annotated[float, Field(ge=0, le=2)] | None = 0.5


class MonitoringConfig(Section):
    """Alert rules checked after every round (log, audit log, optional webhook); MLflow."""

    loss_patience: Annotated[int, Field(ge=1)] = 5
    """Alert when the central loss has not improved for this many rounds."""
    max_dropout_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    silent_rounds: Annotated[int, Field(ge=1)] = 3
    """Alert when a client is sampled this many rounds in a row without delivering."""
    budget_warning_fraction: Annotated[float, Field(gt=0, le=1)] = 0.8
    accuracy_floor: Annotated[float, Field(ge=0, le=1)] | None = None
    webhook_url: Annotated[str, AfterValidator(check_webhook_url)] | None = None
    """Each alert is POSTed here as JSON."""
    mlflow_tracking_uri: Annotated[str, Field(min_length=1)] | None = None
    """MLflow tracking server or store (``http://host:5000``); default ``MLFLOW_TRACKING_URI``."""
    mlflow_experiment: Annotated[str, Field(min_length=1)] = "fedwarden"
    """The MLflow experiment that tracked runs go to."""


class AsynchronousConfig(Section):
    """FedBuff (Nguyen et al. 2022): clients train concurrently on the model they were given.

    The server applies every ``buffer_size`` updates as one server update (one
    "round"), each scaled by ``(1 + staleness) ** -staleness_exponent``, and
    keeps ``concurrency`` clients training (default: twice the buffer).
    """

    enabled: bool = False
    buffer_size: Annotated[int, Field(ge=1)] = 10
    concurrency: Annotated[int, Field(ge=1)] | None = None
    staleness_exponent: Annotated[float, Field(ge=0)] = 0.5
    max_staleness: Annotated[int, Field(ge=0)] | None = None
    """Updates staler than this many server updates are refused (None: none are)."""


class RuntimeConfig(Section):
    """Where clients run."""

    kind: Literal["local", "ray", "grpc"] = "local"
    workers: Annotated[int, Field(ge=1)] | None = None
    """Worker processes (local) or actors (ray); default one per core."""
    address: str | None = None
    """Ray cluster address (``host:6379``, ``ray://host:10001``, ``auto``); default: a local one."""
    heartbeat_s: Annotated[float, Field(gt=0)] = 30.0
    """grpc: how often clients signal they are alive; silent for three periods means lost."""
    join_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    """grpc: how long the server waits for every client to join before the first round."""
    stream_deadline_s: Annotated[float, Field(gt=0)] = 30.0
    """grpc: a stream's first message and each next chunk arrive within this, or it is cut."""
    calls_per_client: Annotated[int, Field(ge=4)] = 8
    """grpc: calls one client (certificate) may have in progress at once; more are refused."""


class RolloutConfig(Section):
    """Staged rollout: the final model evaluated federatedly on pilot clients before promotion.

    At the end of a completed deployment run (the grpc runtime, which keeps a
    model registry), ``pilot_clients`` clients drawn with the run's seed
    evaluate the new candidate version and the production version on their
    own test data; the registry records both accuracies (audited) and a later
    promotion compares them. 0 evaluates nothing.
    """

    pilot_clients: Annotated[int, Field(ge=0)] = 0


class RunConfig(Section):
    """A whole run: data, model, client training, strategy, sampling, pipeline, runtime."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "run"
    seed: Annotated[int, Field(ge=0)] = 0
    rounds: Annotated[int, Field(ge=1)] = 10
    evaluate_every: Annotated[int, Field(ge=1)] = 1
    runs_dir: Path = Path("runs")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainSection = TrainSection()
    strategy: StrategyConfig = StrategyConfig()
    sampling: SamplingConfig = SamplingConfig()
    pipeline: PipelineConfig = PipelineConfig()
    personalization: PersonalizationConfig = PersonalizationConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    secure: SecureConfig = SecureConfig()
    attack: AttackConfig = AttackConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    asynchronous: AsynchronousConfig = AsynchronousConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    rollout: RolloutConfig = RolloutConfig()

    @model_validator(mode="after")
    def _privacy_fits_sampling(self) -> RunConfig:
        if self.privacy.mechanism == "dp_sgd" and self.model.kind != "mlp":
            raise ValueError(
                "privacy.mechanism 'dp_sgd' trains PyTorch models with Opacus: set model.kind "
                "to 'mlp'"
            )
        if self.privacy.mechanism == "user_level" and self.sampling.scheme == "stratified":
            raise ValueError(
                "user-level DP is accounted for Poisson or uniform cohorts; stratified sampling "
                "has no accountant here: set sampling.scheme to 'poisson' or 'uniform'"
            )
        return self

    @model_validator(mode="after")
    def _clustering_fits(self) -> RunConfig:
        clustering = self.clustering
        if not clustering.enabled:
            return self
        if self.rounds < clustering.warmup_rounds + 2:
            raise ValueError(
                f"clustering needs rounds >= warmup_rounds + 2 (warm-up, one probing round, "
                f"then at least one round per cluster); rounds is {self.rounds} and "
                f"warmup_rounds {clustering.warmup_rounds}"
            )
        if self.privacy.mechanism in ("user_level", "dp_sgd") or self.secure.kind != "none":
            raise ValueError(
                "clustering groups clients by their individual updates, which no privacy "
                "accountant covers and secure aggregation hides: turn off privacy.mechanism "
                "and secure.kind, or clustering"
            )
        return self

    @model_validator(mode="after")
    def _scaffold_fits(self) -> RunConfig:
        if self.strategy.name != "scaffold":
            return self
        if self.model.kind not in ("softmax", "mlp"):
            raise ValueError(
                "strategy 'scaffold' corrects every local gradient step, which the NumPy "
                "('softmax') and PyTorch ('mlp') trainers do; set model.kind to one of them"
            )
        if self.privacy.mechanism in ("user_level", "dp_sgd"):
            raise ValueError(
                f"strategy 'scaffold' with privacy.mechanism '{self.privacy.mechanism}' is not "
                "supported (its control variates double what is clipped and released); use "
                "fedavg or fedprox"
            )
        return self

    @model_validator(mode="after")
    def _robust_rule_fits(self) -> RunConfig:
        rule = self.pipeline.aggregator
        if rule == "mean":
            return self
        if self.privacy.mechanism == "user_level":
            raise ValueError(
                f"pipeline.aggregator '{rule}' cannot replace user-level DP's noisy mean: "
                "choose one of them"
            )
        if rule in ("krum", "multi_krum", "bulyan") and self.sampling.scheme != "poisson":
            need = 4 if rule == "bulyan" else 2
            least = need * self.pipeline.byzantine + 3
            if self.sampling.cohort_size < least:
                raise ValueError(
                    f"pipeline.aggregator '{rule}' with byzantine f={self.pipeline.byzantine} "
                    f"needs a cohort of at least {need}f + 3 = {least}, but sampling.cohort_size "
                    f"is {self.sampling.cohort_size}; lower pipeline.byzantine or sample more"
                )
        return self

    @model_validator(mode="after")
    def _compression_fits_privacy(self) -> RunConfig:
        if (
            self.pipeline.compression.enabled
            and self.privacy.mechanism == "user_level"
            and self.privacy.clip_on == "client"
        ):
            raise ValueError(
                "pipeline.compression with user-level DP needs privacy.clip_on = 'server': error "
                "feedback adds the residual after a client-side clip, so the update sent would "
                "no longer be bounded by clip_norm"
            )
        return self

    @model_validator(mode="after")
    def _secure_fits_privacy(self) -> RunConfig:
        if self.secure.kind == "none" or self.privacy.mechanism != "user_level":
            return self
        if self.secure.kind == "he":
            raise ValueError(
                "user-level DP needs noise on the sum, and under secure.kind 'he' only the key "
                "holder sees the sum: set secure.kind to 'secagg' (the clients then add "
                "distributed discrete Gaussian noise)"
            )
        privacy = self.privacy
        problems = []
        if self.sampling.scheme != "uniform":
            problems.append("sampling.scheme must be 'uniform' (fixed-size cohorts)")
        if privacy.clip_on != "client":
            problems.append("privacy.clip_on must be 'client' (the server sees no update)")
        if privacy.adaptive_clipping:
            problems.append("privacy.adaptive_clipping must be false")
        if privacy.per_layer_clipping:
            problems.append("privacy.per_layer_clipping must be false (the rotation clips flat)")
        if problems:
            raise ValueError(
                "user-level DP under secure aggregation (distributed discrete Gaussian): "
                + "; ".join(problems)
            )
        return self

    @model_validator(mode="after")
    def _asynchronous_fits(self) -> RunConfig:
        if not self.asynchronous.enabled:
            return self
        problems = []
        if self.runtime.kind != "grpc":
            problems.append(
                "runtime.kind must be 'grpc' (clients must train while the server aggregates)"
            )
        if self.privacy.mechanism != "none":
            problems.append(
                "privacy.mechanism must be 'none' (no accountant here covers updates of mixed "
                "staleness, nor the privacy spent by updates too stale to use)"
            )
        if self.secure.kind != "none":
            problems.append("secure.kind must be 'none' (secure aggregation needs a cohort)")
        if self.clustering.enabled:
            problems.append("clustering must be off")
        if self.strategy.name == "scaffold":
            problems.append(
                "strategy.name cannot be 'scaffold' (its control variates are synchronous)"
            )
        if problems:
            raise ValueError("asynchronous (FedBuff) training: " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _grpc_runtime_fits(self) -> RunConfig:
        if self.rollout.pilot_clients and self.runtime.kind != "grpc":
            raise ValueError(
                "rollout.pilot_clients needs runtime.kind 'grpc': pilot evaluations are recorded "
                "in the deployment's model registry, which simulated runtimes do not keep"
            )
        if self.runtime.kind == "grpc" and self.secure.kind == "he":
            raise ValueError(
                "secure.kind 'he' does not run over the grpc runtime yet (its key holder is "
                "simulated in process): use secure.kind 'secagg' for deployments, or "
                "runtime.kind 'local' or 'ray' for homomorphic aggregation"
            )
        return self

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str = "config") -> RunConfig:
        """Validate a parsed config, raising :class:`ConfigError` that names every bad key."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise ConfigError(
                f"{source} has {error.error_count()} problem(s):\n"
                + format_validation_error(error, cls)
            ) from None


def load_config(path: Path) -> RunConfig:
    """Read and validate a run's TOML file; relative data paths are taken from its folder."""
    values = parse_toml(path)
    data = values.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / data["path"]).resolve())
    return RunConfig.from_mapping(values, source=str(path))
