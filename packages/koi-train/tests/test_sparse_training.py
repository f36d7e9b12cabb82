"""Sparse training from the config: activation predictors learn the firing neurons; a 2:4 run trains, resumes, exports."""

from __future__ import annotations

import json
import math
import os
import signal

import pytest
import torch
from conftest import tiny_config
from torch import nn

from koi_kernels import Fp8Linear, SparseFp8Linear
from koi_quant import SparseLinear, quantize_
from koi_train import ConfigError, Trainer, load_dict
from koi_train.checkpoint import load_checkpoint
from koi_train.models.gpt2 import MLP, GPT2Spec
from koi_train.models.llama import LlamaSpec, SwiGLU
from koi_train.sparsity import PredictedMLP, add_predictors, remove_predictors


def _planted_mlp(width: int = 16, hidden: int = 64) -> MLP:
    """Neuron j reads coordinate j // 16 (times a gain in [1, 1.5]): which neurons fire depends on the largest of x[0:4]."""
    torch.manual_seed(0)
    mlp = MLP(GPT2Spec(n_layer=1, n_head=1, n_embd=width, block_size=8, vocab_size=8, mlp_hidden=hidden))
    with torch.no_grad():
        mlp.c_fc.weight.copy_(0.02 * torch.randn(hidden, width))
        for j in range(hidden):
            mlp.c_fc.weight[j, j // 16] += 3 * (1 + 0.5 * torch.rand(()))
        mlp.c_fc.bias.zero_()
    return mlp


def test_predictor_recalls_the_planted_neurons():
    holder = nn.Module()
    holder.mlp = _planted_mlp()
    add_predictors(holder, keep_fraction=0.25, rank=8)
    block: PredictedMLP = holder.mlp
    for p in (*block.c_fc.parameters(), *block.c_proj.parameters()):
        p.requires_grad_(False)
    optimizer = torch.optim.Adam(block.predictor.parameters(), lr=5e-2)
    gen = torch.Generator().manual_seed(1)
    for _ in range(60):  # the predictor trains from train_alongside alone: the block's output loss says nothing of it
        block(torch.randn(128, 16, generator=gen)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    block.eval()
    block.use_predictor, block.recalls = True, []
    x = torch.randn(4, 128, 16, generator=gen)
    block(x)
    assert block.recalls[0] > 0.9, block.recalls


def test_gathered_per_token_path_equals_the_masked_dense_path():
    holder = nn.Module()
    holder.mlp = _planted_mlp()
    add_predictors(holder, keep_fraction=0.25, rank=8)
    block = holder.mlp.eval()
    block.use_predictor = True
    x = torch.randn(2, 8, 16)  # 16 tokens: gathered per token
    gathered = block(x)
    keep = torch.zeros(2, 8, 64, dtype=torch.bool).scatter_(-1, block.predictor(x).topk(block.keep, -1).indices, True)
    masked = block.c_proj(torch.nn.functional.gelu(block.c_fc(x), approximate="tanh") * keep)
    torch.testing.assert_close(gathered, masked, rtol=1e-5, atol=1e-6)
    assert type(remove_predictors(holder) and holder.mlp) is MLP and holder.mlp.c_fc is block.c_fc


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("kind", ["gpt2", "gpt2-int8", "llama"])
def test_decoding_computes_each_tokens_predicted_neurons_and_follows_weight_changes(kernels, kind, monkeypatch):
    """Without gradients (decoding) the per-token path runs koi-kernels' gathered MLP on the weights it keeps."""
    device = "cuda" if kernels == "triton" and torch.cuda.is_available() else "cpu"
    if kernels == "triton" and device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton kernel on a CPU needs TRITON_INTERPRET=1 (nox sets it)")
    monkeypatch.setenv("KOI_KERNELS", kernels)
    # fp32 matmuls for the reference: a CUDA run earlier in the process leaves TF32 on
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        _decode_and_compare(kind, device)
    finally:
        torch.set_float32_matmul_precision(previous)


def _decode_and_compare(kind: str, device: str) -> None:
    holder = nn.Module()
    torch.manual_seed(2)
    holder.mlp = _planted_mlp() if kind.startswith("gpt2") else SwiGLU(LlamaSpec(n_layer=1, n_head=1, n_kv_head=1, n_embd=16,
                                                                                  block_size=8, vocab_size=8, mlp_hidden=64))
    if kind == "gpt2-int8":  # weights computed from latent ones: what decoding keeps must be recomputed when they change
        quantize_(holder, {"mlp.*": "int8"})
    add_predictors(holder, keep_fraction=0.25, rank=8)
    block = holder.mlp.to(device).eval()
    block.use_predictor = True
    ups = [getattr(block, name) for name in block.up_names]
    down = getattr(block, block.down_name)
    x = torch.randn(1, 3, 16, device=device)
    with torch.no_grad():
        for changed in (down, ups[-1], None):
            index = block.predictor(x).topk(block.keep, -1).indices
            keep = torch.zeros(1, 3, 64, dtype=torch.bool, device=device).scatter_(-1, index, True)
            want = down(block.hidden(*(u(x) for u in ups)) * keep)
            torch.testing.assert_close(block(x), want, rtol=1e-4, atol=1e-5)
            if changed is not None:
                changed.weight.mul_(-2.0)  # as an optimizer step changes it in place: the kept weights must follow


def test_compiled_predicted_mlp_has_the_eager_gradients():
    holder = nn.Module()
    holder.mlp = _planted_mlp()
    add_predictors(holder, keep_fraction=0.25, rank=8)
    x = torch.randn(3, 5, 16)

    def grads(fn):
        holder.zero_grad()
        fn(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in holder.named_parameters()}

    eager = grads(holder.mlp)
    compiled = grads(torch.compile(holder.mlp, backend="aot_eager", fullgraph=True))
    assert eager["mlp.predictor.up.weight"].abs().sum() > 0
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-5, atol=1e-6, msg=name)


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_sparse_run_trains_resumes_bitwise_and_exports(prepared, tmp_path):
    sparsity = {"plan": {"transformer.h.*.mlp.*": "2:4"}, "dense_steps": 4, "recompute_every": 5, "decay": 1e-4,
                "activation_predictor": {"enabled": True, "keep_fraction": 0.5, "rank": 8}}
    raw = tiny_config(prepared, tmp_path, train={"steps": 20, "log_every": 1}, eval={"every": 10, "max_windows": 8},
                      sparsity=sparsity)
    lines = []
    full = Trainer(load_dict(raw), tmp_path / "a", log=lines.append)
    full.fit()
    assert any(line.startswith("sparsity (dense for 4 steps") for line in lines)
    assert any("transformer.h.*.mlp.*" in line and "4 modules" in line for line in lines)
    assert any(line.startswith("activation predictor: rank 8 on 2 MLPs") for line in lines)
    losses = _losses(tmp_path / "a")
    assert losses[-1] < losses[0] - 0.5
    layer = full.parts.model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, SparseLinear) and (layer.mask.reshape(-1, 4).sum(-1) == 2).all()
    evals = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals and 0 < evals[-1]["predictor_recall"] <= 1 and evals[-1]["mlp_neurons_skipped"] == 0.5
    assert evals[-1]["sparse_mlp_loss_change"] == pytest.approx(evals[-1]["sparse_mlp_val_loss"] - evals[-1]["val_loss"])

    def interrupt_at_step_12(message):  # between mask updates (at 9 and 14): the resumed run must use the saved masks
        if message.startswith("step     12/"):
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C: the trainer stops and saves at the next step boundary

    with pytest.raises(KeyboardInterrupt):
        Trainer(load_dict(raw), tmp_path / "b", log=interrupt_at_step_12).fit()
    resumed = Trainer(load_dict(raw), tmp_path / "b", log=lambda *_: None)
    resumed.resume()
    resumed.fit()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    final_a = load_checkpoint(str(tmp_path / "a" / "checkpoints" / "step_00000020.pt"))["model"]
    for name, tensor in resumed.parts.model.state_dict().items():
        assert torch.equal(tensor, final_a[name]), name

    from koi_train.export import export_checkpoint
    from koi_train.hf_io import load_hf

    export_checkpoint(str(tmp_path / "a"), str(tmp_path / "hf"))
    exported = load_hf(tmp_path / "hf")
    assert (exported.transformer.h[0].mlp.c_fc.weight.reshape(-1, 4) != 0).sum(-1).max() <= 2
    tokens = torch.randint(0, 512, (2, 16))
    full.parts.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens), full.parts.model(tokens), rtol=1e-4, atol=1e-4)


def test_2_4_on_fp8_matmuls_trains_with_masked_fp8_layers(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, train={"steps": 12, "log_every": 1},
                      precision={"plan": {"transformer.h.*": "fp8"}, "fp8_matmul": True, "fp8_scaling": "row-fused"},
                      sparsity={"plan": {"transformer.h.*.mlp.*": "2:4"}, "dense_steps": 2, "recompute_every": 5})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    trainer.fit()
    model = trainer.parts.model
    mlp_layer, attn_layer = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].attn.c_attn
    assert isinstance(mlp_layer, SparseFp8Linear) and mlp_layer.scaling == "row-fused" and mlp_layer.active
    assert (mlp_layer.mask.reshape(-1, 4).sum(-1) == 2).all()
    assert isinstance(attn_layer, Fp8Linear) and not isinstance(attn_layer, SparseFp8Linear)  # outside the sparsity plan
    losses = _losses(tmp_path / "run")
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.5

    from koi_train.export import export_checkpoint
    from koi_train.hf_io import load_hf

    export_checkpoint(str(tmp_path / "run"), str(tmp_path / "hf"), log=lambda *_: None)
    exported = load_hf(tmp_path / "hf").transformer.h[0].mlp.c_fc.weight  # the master weights, masked
    torch.testing.assert_close(exported, (mlp_layer.weight * mlp_layer.mask).detach())


def test_eval_with_predicted_mlp_scores_and_decodes_on_the_predicted_neurons(prepared, tmp_path, capsys):
    from koi_train.eval_command import main as eval_main

    raw = tiny_config(prepared, tmp_path, train={"steps": 8}, sparsity={"activation_predictor": {"enabled": True, "keep_fraction": 0.25}})
    Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None).fit()
    reports = {}
    for flags in ([], ["--predicted-mlp"]):
        out = tmp_path / f"ppl{len(flags)}.json"
        assert eval_main(["perplexity", "-m", str(tmp_path / "run"), prepared.val[0], "--device", "cpu", "--json", str(out), *flags]) == 0
        reports[bool(flags)] = json.loads(out.read_text())
    dense, sparse = reports[False]["perplexity"], reports[True]["perplexity"]
    assert math.isfinite(sparse) and sparse > dense  # three quarters of every MLP's neurons skipped cost something
    assert eval_main(["generate", "-m", str(tmp_path / "run"), "-t", prepared.tokenizer, "--max-tokens", "5",
                      "--temperature", "0", "--device", "cpu", "--predicted-mlp"]) == 0
    capsys.readouterr()

    plain = tiny_config(prepared, tmp_path, name="plain", train={"steps": 2})
    Trainer(load_dict(plain), tmp_path / "plain", log=lambda *_: None).fit()
    assert eval_main(["perplexity", "-m", str(tmp_path / "plain"), prepared.val[0], "--device", "cpu", "--predicted-mlp"]) == 2
    assert "sparsity.activation_predictor.enabled: --predicted-mlp needs a Koi run" in capsys.readouterr().err


def test_sparsity_config_errors_name_the_key(prepared, tmp_path):
    bad = [("sparsity.plan", "matches no Linear", {"sparsity": {"plan": {"nothing.*": "2:4"}}}),
           ("sparsity.plan.*", "output head", {"sparsity": {"plan": {"*": "2:4"}}}),
           ("sparsity.kernel", "fp8_matmul", {"sparsity": {"plan": {"transformer.h.*": "2:4"}, "kernel": "semi_structured"},
                                              "precision": {"plan": {"transformer.h.*": "fp8"}, "fp8_matmul": True}})]
    for path, problem, sections in bad:
        with pytest.raises(ConfigError) as info:
            Trainer(load_dict(tiny_config(prepared, tmp_path, **sections)), tmp_path / "bad", log=lambda *_: None)
        assert info.value.path == path and problem in info.value.problem, info.value
    with pytest.raises(ConfigError, match="sparsity.plan"):
        load_dict({"sparsity": {"plan": {"*": "2/4"}}})
