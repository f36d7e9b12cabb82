"""Models: HF-compatible names, honest parameter counts, and parity with a plain PyTorch GPT-2."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from plain_gpt2 import PlainGPT2

from koi_train.config import ModelConfig, TrainConfig
from koi_train.models import build_model, count_parameters
from koi_train.schedule import lr_multiplier


def test_gpt2_124m_parameter_count_and_hf_names():
    with torch.device("meta"):
        model = build_model(ModelConfig(preset="gpt2-124M"))
    counts = count_parameters(model)
    # 124,475,904 with the vocabulary padded to 50304 and tied embeddings (wte counted once)
    assert counts == {"total": 124_475_904, "trained": 124_475_904}
    names = set(model.state_dict())
    for expected in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.11.attn.c_attn.weight",
                     "transformer.h.0.mlp.c_proj.bias", "transformer.ln_f.weight", "lm_head.weight"):
        assert expected in names
    assert model.lm_head.weight is model.transformer.wte.weight


def test_full_depth_presets():
    expected = {"gpt2-350M": (24, 1024), "gpt2-774M": (36, 1280), "gpt2-1558M": (48, 1600)}
    for preset, (layers, width) in expected.items():
        with torch.device("meta"):
            model = build_model(ModelConfig(preset=preset))
        assert len(model.blocks) == layers and model.spec.n_embd == width


def test_llama_gqa_qknorm_forward_and_backward():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="llama", preset="llama-tiny", qk_norm=True), tokenizer_vocab=300)
    assert model.spec.n_kv_head == 2 and model.spec.vocab_size == 320
    assert "model.layers.0.self_attn.q_norm.weight" in model.state_dict()
    idx = torch.randint(0, 300, (2, 17))
    logits = model(idx)
    assert logits.shape == (2, 17, 320)
    F.cross_entropy(logits.flatten(0, 1), idx.flatten()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_causality():
    torch.manual_seed(0)
    for arch, preset in (("gpt2", "gpt2-tiny"), ("llama", "llama-tiny")):
        model = build_model(ModelConfig(arch=arch, preset=preset), tokenizer_vocab=256).eval()
        idx = torch.randint(0, 256, (1, 20))
        changed = idx.clone()
        changed[0, 15] = (idx[0, 15] + 1) % 256
        a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :15], b[:, :15])
        assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_training_matches_plain_pytorch_for_20_steps(prepared):
    """TARGETS parity: same init, same batches, fp32 CPU: losses equal within 1e-4 for 20 steps."""
    from koi_tokenizer import read_shard

    torch.manual_seed(0)
    koi = build_model(ModelConfig(preset="gpt2-tiny", n_layer=2, n_embd=64, n_head=4, block_size=32), tokenizer_vocab=512)
    plain = PlainGPT2(vocab=512, block=32, layers=2, width=64, heads=4)
    plain.load_from_koi(koi.state_dict())
    tokens = torch.from_numpy(read_shard(prepared.train[0])[:20 * 8 * 33].astype("int64")).view(20, 8, 33)
    opt_cfg = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    koi_opt, plain_opt = torch.optim.AdamW(koi.parameters(), **opt_cfg), torch.optim.AdamW(plain.parameters(), **opt_cfg)
    schedule = TrainConfig(steps=20, warmup_steps=4)
    for step in range(20):
        x, y = tokens[step, :, :-1], tokens[step, :, 1:]
        losses = []
        for model, opt in ((koi, koi_opt), (plain, plain_opt)):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * lr_multiplier(step, schedule)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-4, f"step {step}: koi {losses[0]:.6f} vs plain {losses[1]:.6f}"
    assert losses[0] < 6.0  # it learned something from ln(512) = 6.24
