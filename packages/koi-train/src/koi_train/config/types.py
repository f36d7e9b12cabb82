"""The run config as typed dataclasses: the one object the rest of the code reads.

Field names and defaults mirror `schemas/run-config.schema.json`; a test fails when they drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..versions import CONFIG_FORMAT


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "gpt2"
    preset: str | None = "gpt2-tiny"
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    mlp_hidden: int | None = None
    dropout: float = 0.0
    tie_embeddings: bool | None = None
    rope_theta: float = 10000.0
    qk_norm: bool = False
    init_std: float = 0.02


@dataclass(frozen=True)
class PrepareConfig:
    text: tuple[str, ...] = ("builtin:python-topics",)
    tokenizer: str | None = None
    vocab_size: int = 1024
    val_fraction: float = 0.1


@dataclass(frozen=True)
class DataConfig:
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    tokenizer: str | None = None
    prepare: PrepareConfig | None = None


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    optimizer_in_backward: bool = False
    device: str = "auto"
    dtype: str = "auto"
    compile: bool | str = "auto"  # "auto": on CUDA only
    compile_mode: str = "default"
    log_every: int = 10


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    weights: str = "fp32"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    embedding_lr: float | None = None
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    muon_ns_steps: int = 5


@dataclass(frozen=True)
class PrecisionConfig:
    plan: dict[str, str] = field(default_factory=dict)
    group_size: int | None = None
    tile: tuple[int, int] | None = None
    activations: bool = False
    learnable_scales: bool = False
    fp8_matmul: bool = False
    fp8_scaling: str = "row"
    quantize_after: float = 0.0
    quantize_ramp: float = 0.0


@dataclass(frozen=True)
class RematConfig:
    mode: str = "none"


@dataclass(frozen=True)
class InstabilityConfig:
    enabled: bool = True
    window: int = 50
    warmup: int = 10
    snapshot_every: int = 50
    loss_z: float = 6.0
    grad_factor: float = 10.0
    action: str = "skip"
    lr_cut_factor: float = 0.5
    lr_cut_steps: int = 50
    max_events: int = 20


@dataclass(frozen=True)
class EvalConfig:
    every: int = 100
    sample_fraction: float = 0.1
    max_windows: int | None = 200
    full_at_end: bool = False
    max_seconds: float | None = None
    sample_prompt: str | None = "\n"
    sample_tokens: int = 64
    hellaswag: str | None = None
    hellaswag_limit: int | None = None


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep_last: int = 2
    dir: str | None = None


@dataclass(frozen=True)
class DistributedConfig:
    strategy: str = "none"
    backend: str = "auto"


@dataclass(frozen=True)
class MixtureConfig:
    experts: int = 0
    switch: int = 50
    method: str = "pso"
    social: float = 0.1
    crossover: float = 0.05


@dataclass(frozen=True)
class ActivationPredictorConfig:
    enabled: bool = False
    keep_fraction: float = 0.25
    rank: int = 64


@dataclass(frozen=True)
class SparsityConfig:
    plan: dict[str, str] = field(default_factory=dict)
    dense_steps: int = 0
    recompute_every: int = 100
    decay: float = 0.0
    kernel: str = "auto"
    activation_predictor: ActivationPredictorConfig = field(default_factory=ActivationPredictorConfig)


@dataclass(frozen=True)
class RunConfig:
    format_version: int = CONFIG_FORMAT
    name: str = "run"
    out_dir: str = "runs"
    seed: int = 1337
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    remat: RematConfig = field(default_factory=RematConfig)
    instability: InstabilityConfig = field(default_factory=InstabilityConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
