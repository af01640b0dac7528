"""RunConfig: every section of a run, the checks across sections, and loading a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, model_validator

from fedwarden.core.config.learning import (
    AsynchronousConfig,
    AttackConfig,
    ClusteringConfig,
    DataConfig,
    ModelConfig,
    PersonalizationConfig,
    PipelineConfig,
    SamplingConfig,
    StrategyConfig,
    TrainSection,
)
from fedwarden.core.config.operations import MonitoringConfig, RolloutConfig, RuntimeConfig
from fedwarden.core.config.protection import PrivacyConfig, SecureConfig
from fedwarden.core.config.section import Section, format_validation_error, parse_toml
from fedwarden.core.errors import ConfigError


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
        if self.privacy.mechanism == "dp_sgd" and self.model.kind not in (
            "mlp",
            "cnn",
            "text",
            "api",
        ):
            raise ValueError(
                "privacy.mechanism 'dp_sgd' trains PyTorch models with Opacus: set model.kind "
                "to 'mlp', 'cnn' or 'text', or to 'api' and hand your own nn.Module to "
                "fedwarden.run(config, model=...)"
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
        if self.model.kind not in ("softmax", "mlp", "cnn", "text"):
            raise ValueError(
                "strategy 'scaffold' corrects every local gradient step, which the NumPy "
                "('softmax') and PyTorch ('mlp', 'cnn', 'text') trainers do; set model.kind to "
                "one of them"
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
        if rule == "fltrust":
            problems = [
                reason
                for reason, applies in (
                    (
                        "clustering must be off (clustered training exists because clients "
                        "disagree, and FLTrust trusts only updates that agree with one root set)",
                        self.clustering.enabled,
                    ),
                    (
                        "asynchronous must be off (FLTrust compares each update with the "
                        "server's update from the same global model; FedBuff's are stale)",
                        self.asynchronous.enabled,
                    ),
                    (
                        "strategy.name cannot be 'scaffold' (the root set has no control variate "
                        "to correct its gradients with)",
                        self.strategy.name == "scaffold",
                    ),
                )
                if applies
            ]
            if problems:
                raise ValueError("pipeline.aggregator 'fltrust': " + "; ".join(problems))
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
        if self.privacy.mechanism not in ("none", "user_level"):
            problems.append(
                f"privacy.mechanism {self.privacy.mechanism!r} is not accounted for buffered "
                "releases: use 'user_level' (each buffer release charged as an unsampled "
                "Gaussian) or 'none'"
            )
        if self.privacy.mechanism == "user_level" and self.privacy.adaptive_clipping:
            problems.append(
                "privacy.adaptive_clipping must be false: its noisy count of unclipped updates "
                "(Andrew et al. 2021) is analysed for sampled synchronous cohorts, and no "
                "published accounting covers it over buffers of updates of mixed staleness "
                "(Nguyen et al. 2022 use a fixed clip norm); set a fixed privacy.clip_norm"
            )
        if self.secure.kind != "none":
            problems.append(
                "secure.kind must be 'none': over grpc a FedBuff client uploads as soon as it "
                "finishes, before the buffer it lands in is known, so there is no cohort to run "
                "SecAgg+ in (secure aggregation over each buffer runs in simulation only, "
                "through the Python API: FedBuffServer with a SecureSum aggregator)"
            )
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
        remote = (self.secure.key_holder, self.secure.key_holder_identity)
        if self.runtime.kind == "grpc" and self.secure.kind == "he" and None in remote:
            raise ValueError(
                "secure.kind 'he' over the grpc runtime needs its key holder, a separate "
                "process the server cannot read: start `fedwarden keyholder serve` and set "
                "secure.key_holder (its HOST:PORT) and secure.key_holder_identity (the client kit "
                "the server calls it with, from `fedwarden pki issue client`)"
            )
        if remote != (None, None) and (self.runtime.kind != "grpc" or self.secure.kind != "he"):
            raise ValueError(
                "secure.key_holder and secure.key_holder_identity are for secure.kind 'he' on "
                "the grpc runtime; simulated runs keep their key holder in process"
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
    """Read and validate a run's TOML file; relative data paths are taken from its folder.

    Both ``data.path`` and ``pipeline.root_data`` are such paths.
    """
    values = parse_toml(path)
    data = values.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data["path"] = str((path.parent / data["path"]).resolve())
    pipeline = values.get("pipeline")
    if isinstance(pipeline, dict) and isinstance(pipeline.get("root_data"), str):
        pipeline["root_data"] = str((path.parent / pipeline["root_data"]).resolve())
    return RunConfig.from_mapping(values, source=str(path))
