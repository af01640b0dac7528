"""Config sections of what is learned and how.

The data and its partition, the model, client training, the strategy, client sampling, the
update pipeline (with compression), personalization, clustering, asynchronous rounds, and the
simulated attacks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from fedwarden.core.config.section import Section

DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")
"""The values of ``train.device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""


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

    source: Literal["digits", "breast_cancer", "wine", "synthetic", "npz_folder", "api"] = "digits"
    """``"api"``: the clients' data is handed to :func:`fedwarden.run` in Python (``clients=``)."""
    num_clients: Annotated[int, Field(ge=1)] = 20
    partition: PartitionConfig = PartitionConfig()
    central_test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Share of a centralized data set held out as the server's test set."""
    client_test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """Share of each client's data held out as its local test split."""
    path: Path | None = None
    """The per-client folder (``source = "npz_folder"``): ``<client>.npz``, ``.csv``,
    ``.parquet``, an image folder or a Hugging Face ``save_to_disk`` folder per client."""
    target: str = "label"
    """The label column of CSV, Parquet and Hugging Face clients."""
    features: tuple[str, ...] | None = None
    """Feature columns, in order (default: every column but the target)."""
    categories: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    """Categorical feature columns and their categories, one-hot encoded in this order."""
    missing: Literal["refuse", "drop"] = "refuse"
    """A row with a missing value is refused (column and row named) or dropped."""
    classes: tuple[str, ...] | None = None
    """Class names in label order for text labels and image subfolders (default: sorted)."""
    image_shape: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] = (32, 32)
    """Height and width every image is resized to."""
    image_mode: Literal["L", "RGB"] = "RGB"
    """Pillow mode images are converted to: ``"L"`` (grayscale) or ``"RGB"``."""
    synthetic_alpha: Annotated[float, Field(ge=0)] = 1.0
    synthetic_beta: Annotated[float, Field(ge=0)] = 1.0
    synthetic_features: Annotated[int, Field(ge=1)] = 60
    synthetic_classes: Annotated[int, Field(ge=2)] = 10
    fingerprint: str | None = None
    """What the Python API was handed (``source = "api"``): clients, their sizes, the example
    shape; a resumed run must be handed the same."""

    @model_validator(mode="after")
    def _path_matches_source(self) -> DataConfig:
        if self.source != "api" and self.fingerprint is not None:
            raise ValueError(
                "data.fingerprint is only set with source = 'api', by fedwarden.run(clients=...)"
            )
        if self.source == "npz_folder" and self.path is None:
            raise ValueError(
                "source 'npz_folder' needs data.path, the folder of <client>.npz files"
            )
        if self.source != "npz_folder" and self.path is not None:
            raise ValueError(f"data.path is only read for source 'npz_folder', not {self.source!r}")
        return self


class ModelConfig(Section):
    """Which model the clients train.

    ``kind``: ``softmax`` (NumPy multinomial logistic regression), ``mlp``
    (PyTorch, needs the ``torch`` extra), ``cnn`` (a small PyTorch CNN for image
    folders, shaped by ``data.image_shape`` and ``data.image_mode``), ``text`` (a
    PyTorch bag of embeddings over token ids, ``vocabulary_size`` and
    ``embedding_dim``), ``sklearn`` (a scikit-learn linear
    model named by ``estimator``), ``custom``: ``factory = "module:function"``
    returning a Trainer, called with the data set's feature and class counts, or
    ``api``: a model handed to :func:`fedwarden.run` in Python (``model=``;
    the run records it as ``fingerprint``).
    """

    kind: Literal["softmax", "mlp", "cnn", "text", "sklearn", "custom", "api"] = "softmax"
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (64,)
    estimator: Literal["sgd_classifier", "sgd_regressor", "logistic_regression"] = "sgd_classifier"
    factory: str | None = None
    vocabulary_size: Annotated[int, Field(ge=2)] | None = None
    """Token ids of ``kind = "text"`` run from 1 to ``vocabulary_size - 1``; 0 pads a row."""
    embedding_dim: Annotated[int, Field(ge=1)] = 64
    """Width of each token's embedding for ``kind = "text"``."""
    fingerprint: str | None = None
    """What the Python API was handed (``kind = "api"``): the model's class and parameter
    shapes; a resumed run must be handed the same."""

    @model_validator(mode="after")
    def _factory_for_custom(self) -> ModelConfig:
        if self.kind != "api" and self.fingerprint is not None:
            raise ValueError(
                "model.fingerprint is only set with kind = 'api', by fedwarden.run(model=...)"
            )
        if (self.kind == "custom") != (self.factory is not None):
            raise ValueError(
                "model.factory (\"module:function\") is set exactly when kind = 'custom'"
            )
        if self.kind == "text" and self.vocabulary_size is None:
            raise ValueError(
                "model.kind 'text' needs model.vocabulary_size, one more than the largest token id"
            )
        return self


class TrainSection(Section):
    """How each client trains per round."""

    local_epochs: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 32
    learning_rate: Annotated[float, Field(gt=0)] = 0.05
    device: str = "auto"
    """Where PyTorch models train: ``"auto"`` (CUDA when present, else the CPU), ``"cpu"``,
    ``"cuda"`` or ``"cuda:N"``; resolved on each client's machine."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if DEVICE_SETTING.fullmatch(device) is None:
            raise ValueError(
                "train.device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N the CUDA device "
                "index, e.g. 'cuda:0')"
            )
        return device


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
    clipping each update to ``clip_radius``, ``fltrust`` weighting each update
    by its agreement with the server's own update on the clean ``root_data``).
    Robust rules score every update; an update ``anomaly_threshold`` robust
    z-scores from the center is flagged, and a client flagged
    ``quarantine_after`` times is no longer sampled.
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
        "fltrust",
    ] = "mean"
    byzantine: Annotated[int, Field(ge=0)] = 0
    trim_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    multi_krum_selected: Annotated[int, Field(ge=1)] | None = None
    clip_radius: Annotated[float, Field(gt=0)] = 1.0
    anomaly_threshold: Annotated[float, Field(gt=0)] = 3.5
    quarantine_after: Annotated[int, Field(ge=1)] | None = None
    root_data: Path | None = None
    """FLTrust's root data set on the server: a file or folder in any client data format."""

    @model_validator(mode="after")
    def _root_data_fits_rule(self) -> PipelineConfig:
        if self.aggregator == "fltrust" and self.root_data is None:
            raise ValueError(
                "pipeline.aggregator 'fltrust' needs pipeline.root_data, the server's small "
                "clean data set its own update is trained on (Cao et al. 2021); give its path"
            )
        if self.aggregator != "fltrust" and self.root_data is not None:
            raise ValueError(
                f"pipeline.root_data is only read by pipeline.aggregator 'fltrust', not "
                f"{self.aggregator!r}; remove root_data or set aggregator = 'fltrust'"
            )
        return self


class PersonalizationConfig(Section):
    """Personalization by local fine-tuning after training."""

    finetune_epochs: Annotated[int, Field(ge=0)] = 0


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
