"""Build every component of a run from its config, in torchtitan's order:
data -> model -> quantize -> sparsify -> remat -> compile -> optimizer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from koi_tokenizer import Tokenizer

from .config import ConfigError, RunConfig
from .cuda_graphs import compile_mode_for, give_stable_grads, graphs_hint, wants_cuda_graphs
from .data import RandomWindows, open_shards
from .distributed import DistInfo, device_for, wrap_model
from .memory_estimate import BlockUnits, MemoryEstimate, estimate_run_memory, remat_report
from .mixture import ExpertMixture, expert_model_config
from .models import build_model, count_parameters, resolve_sizes
from .objective import NextTokenLoss
from .optim import OptimizerSet, build_optimizer, hidden_matrices
from .optim_in_backward import check_compatible
from .prepare import prepare_data
from .quant_warmup import QuantWarmup
from .quantize import apply_precision_plan
from .regional_compile import compile_blocks
from .remat import apply_remat
from .sparsity import SparseTraining, apply_sparsity


@dataclass
class RunParts:
    device: torch.device
    autocast_dtype: torch.dtype | None
    model: nn.Module
    objective: nn.Module  # (inputs, targets) -> loss; compiled and wrapped for DDP/FSDP as configured
    optimizer: OptimizerSet
    train_data: RandomWindows
    val_shards: list[np.ndarray]
    tokenizer: Tokenizer | None
    block_size: int
    params: dict[str, int]
    report: list[str]
    mixture: ExpertMixture | None = None
    sparsity: SparseTraining | None = None
    memory: MemoryEstimate | None = None  # the start-of-run estimate of peak device memory
    quant_warmup: QuantWarmup | None = None  # full precision first, then the plan's formats
    cuda_graphs: bool = False  # the compiled objective replays CUDA graphs (cuda_graphs.py)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("", "train.device", f"expected an available device, got {name!r} but CUDA is not available")
    return device


def pick_autocast(name: str, device: torch.device) -> torch.dtype | None:
    if name == "bf16" or (name == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def build_run(cfg: RunConfig, run_dir: Path, *, dist: DistInfo = DistInfo(), log=print) -> RunParts:
    device = device_for(dist, pick_device(cfg.train.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    report: list[str] = []
    train_patterns, val_patterns, tokenizer_path = cfg.data.train, cfg.data.val, cfg.data.tokenizer
    if cfg.data.prepare is not None:
        prepared = prepare_data(cfg.data.prepare, Path(cfg.out_dir) / ".data", log=log)
        train_patterns = train_patterns or prepared.train
        val_patterns = val_patterns or prepared.val
        tokenizer_path = tokenizer_path or prepared.tokenizer
    tokenizer = Tokenizer.load(tokenizer_path) if tokenizer_path else None
    if tokenizer is not None and dist.is_main:  # the run folder keeps its own tokenizer: export ships it with the weights
        tokenizer.save(run_dir / "tokenizer.json")

    torch.manual_seed(cfg.seed)
    tokenizer_vocab = tokenizer.vocab_size if tokenizer else None
    sizes = resolve_sizes(cfg.model, tokenizer_vocab)
    model_cfg = cfg.model
    if cfg.mixture.experts > 1:
        if dist.active:
            raise ConfigError("", "mixture.experts", "the expert mixture runs in one process; set distributed.strategy to none")
        model_cfg = expert_model_config(cfg.model, cfg.mixture, sizes["n_layer"])
    model = build_model(model_cfg, tokenizer_vocab)
    block_size = sizes["block_size"]
    train_shards = open_shards(train_patterns, field="data.train", min_tokens=block_size + 1)
    val_shards = open_shards(val_patterns, field="data.val", min_tokens=block_size + 1) if val_patterns else []
    train_data = RandomWindows(train_shards, block_size=block_size, batch_size=cfg.train.batch_size, seed=cfg.seed,
                               rank=dist.rank, world_size=dist.world_size, pin_memory=device.type == "cuda")

    report += apply_precision_plan(model, cfg.precision)
    quant_warmup = None
    if QuantWarmup.wanted(cfg.precision):  # its buffers must exist before the model moves and compiles
        quant_warmup = QuantWarmup(model, cfg.precision, cfg.train.steps)
        report.append(quant_warmup.report())
    sparsity, sparsity_report = apply_sparsity(model, cfg.sparsity, cfg.precision)
    report += sparsity_report
    wrapped = apply_remat(model, cfg.remat.mode)
    compute_bytes = 2 if device.type == "cuda" else 4
    residual_bytes = 2 if cfg.optimizer.weights == "bf16" and device.type == "cuda" else 4  # the weights' dtype, under autocast
    compiled = cfg.train.compile is True or (cfg.train.compile == "auto" and device.type == "cuda")
    fp8_fused = cfg.precision.fp8_matmul and cfg.precision.fp8_scaling == "row-fused" and compiled and device.type == "cuda"
    block_units = BlockUnits.of(model.spec, fp8_fused_inputs=fp8_fused)
    report.append(remat_report(cfg.remat.mode, batch=cfg.train.batch_size, seq=block_size, width=model.spec.n_embd,
                               layers=model.spec.n_layer, bytes_per_value=compute_bytes, residual_bytes=residual_bytes,
                               block=block_units)
                  + (f", recomputing {len(wrapped)} modules" if wrapped else ""))
    model.to(device)
    if cfg.optimizer.weights == "bf16":  # parameters only: buffers such as RoPE tables keep fp32
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16)
    autocast = pick_autocast(cfg.train.dtype, device)
    if cfg.distributed.strategy == "fsdp" and cfg.optimizer.name == "muon" and dist.active:
        raise ConfigError("", "optimizer.name", "muon needs whole matrices; use ddp, or adamw/lion with fsdp")
    objective = NextTokenLoss(model)
    cuda_graphs = wants_cuda_graphs(cfg, device, compiled)
    mode = compile_mode_for(cfg, device)
    if compiled and mode != cfg.train.compile_mode:
        report.append(f"compile: mode {cfg.train.compile_mode} replays CUDA graphs, which need CUDA; "
                      f"compiling in mode {mode} on {device}")
    if compiled and cfg.train.optimizer_in_backward:
        # A whole-objective graph hands back all gradients at once: the in-backward step would save nothing.
        compiled = False
        blocks = compile_blocks(model, mode=mode)
        report.append(f"compile: on, per block ({blocks} blocks; train.optimizer_in_backward frees each "
                      "block's gradients as its backward ends); the first steps compile and take a minute")
    elif cuda_graphs:
        report.append("compile: on (train.compile), replaying CUDA graphs (train.compile_mode reduce-overhead); "
                      "the first steps compile and capture the objective and take a minute")
    elif compiled:
        report.append("compile: on (train.compile); the first steps compile the objective and take a minute")
        if hint := graphs_hint(cfg, device, compiled):
            report.append(hint)
    if cfg.distributed.strategy == "fsdp":  # shard first, then compile the sharded blocks
        objective = wrap_model(objective, cfg.distributed, dist, device, autocast)
        objective = torch.compile(objective, mode=mode) if compiled else objective
    else:  # compile, then replicate (DDP hooks see the compiled graph's buckets)
        objective = torch.compile(objective, mode=mode) if compiled else objective
        objective = wrap_model(objective, cfg.distributed, dist, device, autocast)
    if cfg.train.optimizer_in_backward:
        check_compatible(cfg)
    try:
        optimizer = build_optimizer(model, cfg.optimizer, cfg.train.lr, device, in_backward=cfg.train.optimizer_in_backward)
    except ValueError as exc:
        field, _, problem = str(exc).partition(": ")
        raise ConfigError("", field, problem) from None
    if cuda_graphs:  # gradients outside the graphs' pool, kept between steps (cuda_graphs.py)
        give_stable_grads(model)
        optimizer.keep_grad_buffers = True
    memory = None
    if cfg.distributed.strategy != "fsdp" and cfg.mixture.experts <= 1:  # sharded or part-trained models need their own sums
        matrices = sum(p.numel() for p in hidden_matrices(model)) if cfg.optimizer.name == "muon" else 0
        memory = estimate_run_memory(model, optimizer=cfg.optimizer.name, muon_matrices=matrices,
                                     in_backward=cfg.train.optimizer_in_backward, remat=cfg.remat.mode,
                                     batch=cfg.train.batch_size, seq=block_size, compute_bytes=compute_bytes,
                                     residual_bytes=residual_bytes, block=block_units, grad_accum=cfg.train.grad_accum)
        report.append(memory.line())
    params = count_parameters(model)
    mixture = None
    if cfg.mixture.experts > 1:
        mixture = ExpertMixture(model, optimizer.optimizers, cfg.mixture, cfg.seed)
        counts = mixture.parameter_counts()
        params = {"total": counts["total"], "trained": counts["active"]}
        report.append(f"mixture: {cfg.mixture.experts} experts of {model.spec.n_layer} layers; only one trains at a time: "
                      f"{params['trained']:,} of {params['total']:,} parameters ({params['trained'] / params['total']:.0%}) per step")
    report.insert(0, f"model {cfg.model.arch}: {params['total']:,} parameters, {params['trained']:,} trained every step, "
                     f"spec {json.dumps(sizes)}")
    report.append(f"data: {train_data.tokens:,} train tokens in {len(train_shards)} shards, "
                  f"{sum(len(s) for s in val_shards):,} val tokens; device {device}"
                  + (f"; {cfg.distributed.strategy} over {dist.world_size} processes" if dist.active else ""))
    return RunParts(device, autocast, model, objective, optimizer, train_data,
                    val_shards, tokenizer, block_size, params, report, mixture, sparsity, memory, quant_warmup,
                    cuda_graphs)
