"""The run config: one JSON Schema (`schemas/run-config.schema.json`), read into `RunConfig`."""

from .errors import ConfigError
from .load import config_to_dict, load_config, load_dict, schema, validate
from .types import (
    ActivationPredictorConfig,
    CheckpointConfig,
    DataConfig,
    DistributedConfig,
    EvalConfig,
    InstabilityConfig,
    MixtureConfig,
    ModelConfig,
    OptimizerConfig,
    PrecisionConfig,
    PrepareConfig,
    RematConfig,
    RunConfig,
    SparsityConfig,
    TrainConfig,
)

__all__ = [
    "ActivationPredictorConfig", "CheckpointConfig", "ConfigError", "DataConfig", "DistributedConfig", "EvalConfig", "InstabilityConfig",
    "MixtureConfig", "ModelConfig", "OptimizerConfig", "PrecisionConfig", "PrepareConfig", "RematConfig", "RunConfig", "SparsityConfig",
    "TrainConfig", "config_to_dict", "load_config", "load_dict", "schema", "validate",
]
