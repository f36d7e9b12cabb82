"""The run config: one JSON Schema (`schemas/run-config.schema.json`), read into `RunConfig`."""

from .errors import ConfigError
from .load import config_to_dict, load_config, load_dict, schema, validate
from .types import (
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
    TrainConfig,
)

__all__ = [
    "CheckpointConfig", "ConfigError", "DataConfig", "DistributedConfig", "EvalConfig", "InstabilityConfig", "MixtureConfig",
    "ModelConfig", "OptimizerConfig", "PrecisionConfig", "PrepareConfig", "RematConfig", "RunConfig",
    "TrainConfig", "config_to_dict", "load_config", "load_dict", "schema", "validate",
]
