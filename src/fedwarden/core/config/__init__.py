"""RunConfig: the typed, validated form of a run's TOML file.

Every section is a pydantic model with ``extra="forbid"``, so a typo or a bad
value fails at load time with an error naming the key, the value and what is
allowed (:func:`load_config`). The sections live by topic: :mod:`.learning`
(data, model, training, strategy, pipeline, ...), :mod:`.protection` (privacy,
secure aggregation), :mod:`.operations` (runtime, monitoring, rollout); the
whole run and its cross-section checks in :mod:`.run`.
"""

from fedwarden.core.config.learning import (
    DEVICE_SETTING,
    AsynchronousConfig,
    AttackConfig,
    ClusteringConfig,
    CompressionConfig,
    DataConfig,
    ModelConfig,
    PartitionConfig,
    PersonalizationConfig,
    PipelineConfig,
    SamplingConfig,
    StrategyConfig,
    TrainSection,
)
from fedwarden.core.config.operations import MonitoringConfig, RolloutConfig, RuntimeConfig
from fedwarden.core.config.protection import PrivacyConfig, SecureConfig
from fedwarden.core.config.run import RunConfig, load_config
from fedwarden.core.config.section import (
    SECRET_KEYS,
    Section,
    format_validation_error,
    parse_toml,
)

__all__ = [
    "DEVICE_SETTING",
    "SECRET_KEYS",
    "AsynchronousConfig",
    "AttackConfig",
    "ClusteringConfig",
    "CompressionConfig",
    "DataConfig",
    "ModelConfig",
    "MonitoringConfig",
    "PartitionConfig",
    "PersonalizationConfig",
    "PipelineConfig",
    "PrivacyConfig",
    "RolloutConfig",
    "RunConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "Section",
    "SecureConfig",
    "StrategyConfig",
    "TrainSection",
    "format_validation_error",
    "load_config",
    "parse_toml",
]
