"""`train.compile_mode: reduce-overhead`: CUDA graphs train the same model as plain compile.

On CUDA the graphed run must match the default compiled run step for step with gradient
accumulation (the case graphs are for, and the one where a graph-owned `.grad` would be
overwritten by the next micro-batch). On the CPU the mode compiles as default, and the pieces
that keep gradients out of the graphs' pool are checked directly.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from koi_train import ConfigError, Trainer, load_dict
from koi_train.cuda_graphs import give_stable_grads, graphs_hint, skip_note, skipped_graphs
from koi_train.optimizer_set import OptimizerSet

CUDA = torch.cuda.is_available()


def _fit(raw, run_dir):
    trainer = Trainer(load_dict(raw), run_dir, log=lambda *_: None)
    trainer.fit()
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    return trainer, losses


@pytest.mark.skipif(not CUDA, reason="CUDA graphs exist on CUDA only (the CPU twin is below)")
def test_graphed_run_matches_default_compile_with_accumulation(prepared, tmp_path):
    train = {"device": "cuda", "compile": True, "grad_accum": 3, "steps": 12, "log_every": 1}
    plain, plain_losses = _fit(tiny_config(prepared, tmp_path, train=train), tmp_path / "plain")
    skipped_before = skipped_graphs()
    graphed, graphed_losses = _fit(tiny_config(prepared, tmp_path, train={**train, "compile_mode": "reduce-overhead"}),
                                   tmp_path / "graphed")
    assert graphed.parts.cuda_graphs and not plain.parts.cuda_graphs
    assert skipped_graphs() == skipped_before, "Inductor ran the objective without CUDA graphs"
    assert len(graphed_losses) == 12 and graphed_losses[-1] < graphed_losses[0]
    # bf16 autocast and non-deterministic kernels on both sides: equal to a few thousandths, not bit for bit
    assert graphed_losses == pytest.approx(plain_losses, abs=0.02)
    for a, b in zip(plain.parts.model.parameters(), graphed.parts.model.parameters(), strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=0)


def test_reduce_overhead_compiles_as_default_on_cpu(prepared, tmp_path, monkeypatch):
    from koi_train import setup as setup_module

    seen = []
    monkeypatch.setattr(setup_module.torch, "compile", lambda module, **options: seen.append(options) or module)
    raw = tiny_config(prepared, tmp_path, train={"compile": True, "compile_mode": "reduce-overhead"})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert seen == [{"mode": "default"}]
    assert not trainer.parts.cuda_graphs and not trainer.parts.optimizer.keep_grad_buffers
    assert any("need CUDA" in line for line in trainer.parts.report)


@pytest.mark.parametrize("section, field", [
    ("train", {"optimizer_in_backward": True, "grad_clip": 0.0}),
    ("distributed", {"strategy": "ddp"}),
    ("mixture", {"experts": 2}),
])
def test_graphs_refuse_what_they_would_break(prepared, tmp_path, section, field):
    sections = {"train": {"compile": True, "compile_mode": "reduce-overhead"}}
    sections[section] = {**sections.get(section, {}), **field}
    with pytest.raises(ConfigError) as err:
        Trainer(load_dict(tiny_config(prepared, tmp_path, **sections)), tmp_path / "run", log=lambda *_: None)
    assert err.value.path == "train.compile_mode" and "reduce-overhead" in str(err.value)


def test_stable_grads_are_zeroed_in_place_and_accumulate():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[1].bias.requires_grad_(False)
    assert give_stable_grads(model) == 3
    assert model[1].bias.grad is None
    buffers = {id(p): p.grad.data_ptr() for p in model.parameters() if p.requires_grad}
    optimizer = OptimizerSet([torch.optim.SGD(model.parameters(), lr=0.1)])
    optimizer.keep_grad_buffers = True
    x = torch.randn(5, 4)
    model(x).sum().backward()
    once = model[0].weight.grad.clone()
    model(x).sum().backward()  # a second micro-batch adds into the same buffer
    torch.testing.assert_close(model[0].weight.grad, 2 * once)
    optimizer.step()
    optimizer.zero_grad()
    for p in model.parameters():
        if p.requires_grad:
            assert p.grad.data_ptr() == buffers[id(p)] and not p.grad.any()


def test_a_skipped_graph_is_reported(monkeypatch):
    from torch._dynamo.utils import counters

    monkeypatch.setitem(counters, "inductor", counters["inductor"].copy())
    counters["inductor"]["cudagraph_skips"] = 0
    assert skipped_graphs() == 0 and skip_note(0) is None
    counters["inductor"]["cudagraph_skips"] = 2  # what Inductor counts when it refuses to capture a graph
    assert skipped_graphs() == 2
    assert "2 graph(s) without CUDA graphs" in skip_note(2) and "TORCH_LOGS=cudagraphs" in skip_note(2)


def test_accumulating_runs_on_one_gpu_are_pointed_at_graphs(prepared, tmp_path):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    accum = load_dict(tiny_config(prepared, tmp_path, train={"grad_accum": 4}))
    assert "reduce-overhead" in graphs_hint(accum, cuda, compiled=True)
    assert graphs_hint(accum, cpu, compiled=True) is None  # nothing to replay on the CPU
    assert graphs_hint(accum, cuda, compiled=False) is None
    assert graphs_hint(load_dict(tiny_config(prepared, tmp_path)), cuda, compiled=True) is None  # one micro-batch
    asked = load_dict(tiny_config(prepared, tmp_path, train={"grad_accum": 4, "compile_mode": "reduce-overhead"}))
    assert graphs_hint(asked, cuda, compiled=True) is None
    ddp = load_dict(tiny_config(prepared, tmp_path, train={"grad_accum": 4}, distributed={"strategy": "ddp"}))
    assert graphs_hint(ddp, cuda, compiled=True) is None
