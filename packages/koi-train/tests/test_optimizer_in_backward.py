"""The optimizer step inside backward trains exactly as the ordinary step does, without holding gradients."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from koi_train import ConfigError, Trainer, load_dict


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.parametrize("name", ["adamw", "adamw8bit"])
def test_same_losses_as_the_ordinary_step(prepared, tmp_path, name):
    common = dict(train={"steps": 8, "log_every": 1, "grad_clip": 0}, optimizer={"name": name},
                  instability={"action": "rollback"})
    ordinary = Trainer(load_dict(tiny_config(prepared, tmp_path, name="a", **common)), tmp_path / "a", log=lambda *_: None)
    ordinary.fit()
    common["train"]["optimizer_in_backward"] = True
    fused = Trainer(load_dict(tiny_config(prepared, tmp_path, name="b", **common)), tmp_path / "b", log=lambda *_: None)
    fused.fit()
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert all(p.grad is None for p in fused.parts.model.parameters())  # gradients were freed as they were used
    norms = [r["grad_norm"] for r in map(json.loads, (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    ordinary_norms = [r["grad_norm"] for r in map(json.loads, (tmp_path / "a" / "metrics.jsonl").read_text().splitlines())
                      if r["kind"] == "train"]
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(ordinary_norms), rtol=1e-4, atol=1e-6)


def test_incompatible_settings_are_config_errors(prepared, tmp_path):
    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True})
    with pytest.raises(ConfigError, match="train.grad_clip: expected 0"):
        Trainer(load_dict(raw), tmp_path / "x", log=lambda *_: None)
    raw["train"]["grad_clip"] = 0
    raw["instability"] = {"action": "lr_cut"}
    with pytest.raises(ConfigError, match="instability.action: expected skip, rollback or abort"):
        Trainer(load_dict(raw), tmp_path / "y", log=lambda *_: None)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_distributed_runs_refuse_the_step_in_backward(prepared, tmp_path, strategy):
    """The hook fires before DDP averages (or FSDP reduce-scatters) the gradient: ranks would drift apart."""
    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0},
                      distributed={"strategy": strategy})
    with pytest.raises(ConfigError, match=f"train.optimizer_in_backward: expected false with distributed.strategy '{strategy}'"):
        Trainer(load_dict(raw), tmp_path / "x", log=lambda *_: None)


def test_bf16_weights_keep_stochastic_rounding_when_stepped_in_backward(prepared, tmp_path):
    from koi_kernels import FusedAdamW

    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0, "steps": 4},
                      optimizer={"weights": "bf16"}, instability={"action": "rollback"})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert all(isinstance(opt, FusedAdamW) for opt in trainer.parts.optimizer.optimizers)
    before = [p.detach().clone() for p in trainer.parts.model.parameters()]
    trainer.fit()
    params = list(trainer.parts.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    assert sum(not torch.equal(a, b) for a, b in zip(before, params)) == len(params)  # every parameter moved
    raw["optimizer"] = {"weights": "bf16", "name": "lion"}
    with pytest.raises(ConfigError, match="optimizer.weights: bf16 weights need optimizer.name adamw or adamw8bit"):
        Trainer(load_dict(raw), tmp_path / "other", log=lambda *_: None)


def test_bf16_weights_with_8bit_states_stepped_in_backward(prepared, tmp_path):
    """The low-memory recipe: bf16 weights, 8-bit moments, no gradients kept; it learns."""
    from koi_kernels import AdamW8bit

    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0, "steps": 30},
                      optimizer={"weights": "bf16", "name": "adamw8bit"}, instability={"action": "rollback"})
    trainer = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None)
    assert all(isinstance(opt, AdamW8bit) for opt in trainer.parts.optimizer.optimizers)
    trainer.fit()
    assert all(p.dtype == torch.bfloat16 for p in trainer.parts.model.parameters())
    state = trainer.parts.optimizer.optimizers[0].state[trainer.parts.optimizer.params[0]]
    assert state["m_codes"].element_size() == 1
    losses = _losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 0.4, losses


def test_block_compiled_model_steps_each_block_before_the_next_backward():
    """Compiled per block, a block's parameters are stepped (and their gradients freed) while the
    backward is still on its way down: the step in backward then saves memory under compile too."""
    from koi_train.config import ModelConfig
    from koi_train.models import build_model
    from koi_train.objective import NextTokenLoss
    from koi_train.optim_in_backward import BackwardOptimizer
    from koi_train.regional_compile import compile_blocks
    from koi_train.remat import apply_remat

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt2", preset="gpt2-tiny", n_layer=3))
    apply_remat(model, "full")
    assert compile_blocks(model, backend="aot_eager") == 3
    events: list[str] = []
    optimizer = BackwardOptimizer(model, lambda group, seed: torch.optim.SGD(group, lr=0.1))
    block_params = {id(p): i for i, block in enumerate(model.blocks) for p in block.parameters()}
    for p in optimizer.params:
        if id(p) in block_params:
            p.register_post_accumulate_grad_hook(lambda _, i=block_params[id(p)]: events.append(f"stepped block {i}"))

    def mark_block_0_input(module, args, output) -> None:  # its gradient arrives once every block's backward is done
        output.register_hook(lambda grad: events.append("block 0 input"))

    model.transformer.drop.register_forward_hook(mark_block_0_input)
    tokens = torch.randint(0, 256, (2, 33))
    NextTokenLoss(model)(tokens[:, :-1], tokens[:, 1:]).backward()
    steps = [int(e.rsplit(" ", 1)[1]) for e in events if e.startswith("stepped")]
    assert steps == sorted(steps, reverse=True)  # block 2's backward ends, its step runs, then block 1's...
    last_block_1 = len(events) - 1 - events[::-1].index("stepped block 1")
    assert last_block_1 < events.index("block 0 input")  # ...all before the gradient leaves block 0
    assert all(p.grad is None for p in optimizer.params)  # every gradient freed in its hook


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_block_compiled_model_samples_eagerly_and_trains_on_one_graph(arch):
    """Sampling with a KV cache must not recompile the blocks (Dynamo guards on the cache per layer and
    position: torch's recompile limit was hit after 8, minutes in); training and val-loss calls share
    the compiled graphs, and a cached call gives the eager model's logits."""
    from torch._dynamo.utils import counters

    from koi_train.config import ModelConfig
    from koi_train.models import build_model
    from koi_train.regional_compile import compile_blocks

    torch.manual_seed(0)
    torch._dynamo.reset()
    counters.clear()
    model = build_model(ModelConfig(arch=arch, preset=f"{arch}-tiny", n_layer=4))
    reference = build_model(ModelConfig(arch=arch, preset=f"{arch}-tiny", n_layer=4))
    reference.load_state_dict(model.state_dict())
    compile_blocks(model, backend="eager")
    tokens = torch.randint(0, 256, (2, 16))
    model(tokens).float().sum().backward()
    with torch.no_grad():
        model.eval()
        model(tokens)  # a val-loss call: no_grad, full sequence
        cache = model.make_cache()
        got = [model(tokens[:1, :5], cache=cache)]
        got += [model(tokens[:1, i : i + 1], cache=cache) for i in range(5, 9)]
        reference.eval()
        want_cache = reference.make_cache()
        want = [reference(tokens[:1, :5], cache=want_cache)]
        want += [reference(tokens[:1, i : i + 1], cache=want_cache) for i in range(5, 9)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # train, and no_grad
    assert not counters["recompiles"] or sum(counters["recompiles"].values()) <= 1


def _tiny_gpt2(layers: int = 3):
    from koi_train.config import ModelConfig
    from koi_train.models import build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(arch="gpt2", preset="gpt2-tiny", n_layer=layers))


def test_each_block_is_one_optimizer_with_its_own_rounding_seed(prepared, tmp_path):
    from koi_train.optim_in_backward import stepping_groups

    model = _tiny_gpt2()
    groups = stepping_groups(model)
    assert [len(g) for g in groups[:3]] == [len(list(b.parameters())) for b in model.blocks]
    assert all(len(g) == 1 for g in groups[3:])
    assert sorted(id(p) for g in groups for p in g) == sorted(id(p) for p in model.parameters())
    raw = tiny_config(prepared, tmp_path, train={"optimizer_in_backward": True, "grad_clip": 0},
                      optimizer={"weights": "bf16", "name": "adamw8bit"})
    optimizers = Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None).parts.optimizer.optimizers
    # one seed each: per-parameter optimizers all used seed 0, so same-shaped weights drew the same noise
    assert len({opt.seed for opt in optimizers}) == len(optimizers)


def test_a_block_with_an_unused_parameter_still_steps():
    """Backward never completes such a block; the step's norm read finishes it, so the rest still learn."""
    from koi_train.optim_in_backward import BackwardOptimizer

    class TwoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])
            self.unused = torch.nn.Linear(4, 4)
            self.blocks[1].unused = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.blocks[1](self.blocks[0](x))

    model = TwoBlocks()
    optimizer = BackwardOptimizer(model, lambda group, seed: torch.optim.SGD(group, lr=0.1))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(3, 4)).square().sum().backward()
    assert torch.equal(before["blocks.1.weight"], model.blocks[1].weight)  # waiting on blocks.1.unused
    assert not torch.equal(before["blocks.0.weight"], model.blocks[0].weight)  # its block was complete
    norm = optimizer.take_grad_norm()
    assert not torch.equal(before["blocks.1.weight"], model.blocks[1].weight) and norm > 0
    assert torch.equal(before["unused.weight"], model.unused.weight)
    assert all(p.grad is None for p in model.parameters())


def test_old_per_parameter_optimizer_states_resume_into_block_groups():
    """koi-train 0.1 kept one optimizer per parameter, in the model's order; a checkpoint of it still resumes."""
    from koi_kernels import AdamW8bit
    from koi_train.optim_in_backward import BackwardOptimizer

    model = _tiny_gpt2(layers=2)
    params = list(model.parameters())
    old = [AdamW8bit([p], lr=1e-3) for p in params]
    for p in params:
        p.grad = torch.randn_like(p)
    for opt in old:
        opt.step()
    for p in params:
        p.grad = None
    optimizer = BackwardOptimizer(model, lambda group, seed: AdamW8bit(group, lr=1e-3, seed=seed))
    optimizer.load_state_dict([opt.state_dict() for opt in old])
    for opt, p in zip(old, params):
        mine = next(o for o in optimizer.optimizers if any(q is p for g in o.param_groups for q in g["params"]))
        for key, value in opt.state[p].items():
            assert torch.equal(mine.state[p][key], value), key
