"""koi-eval on Koi models: perplexity of an exported checkpoint, KV-cache generation, HellaSwag in training.

koi-eval loads exported (Hugging Face) folders with its own forward passes; Koi checkpoints go
through `koi-train eval`, which hands koi-train's loader to koi-eval's command line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from plain_gpt2 import PlainGPT2

from koi_eval import Example, generate, load_hf_folder, write_eval_bin
from koi_tokenizer import read_shard
from koi_train import Trainer, load_dict, save_hf
from koi_train.config import ModelConfig
from koi_train.models import build_model


@pytest.fixture(scope="module")
def trained_run(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    trainer = Trainer(load_dict(tiny_config(prepared, root, train={"steps": 40})), root / "run", log=lambda *_: None)
    trainer.fit()
    return root, trainer


def _koi_eval(*args, cwd):
    return subprocess.run([sys.executable, "-m", "koi_eval.cli", *args], capture_output=True, text=True, cwd=cwd)


def _koi_train_eval(*args, cwd):
    return subprocess.run([sys.executable, "-m", "koi_train", "eval", *args], capture_output=True, text=True, cwd=cwd)


def test_perplexity_of_exported_checkpoint_equals_plain_torch(trained_run, prepared):
    root, trainer = trained_run
    export = subprocess.run([sys.executable, "-m", "koi_train", "export", str(root / "run"), str(root / "hf")],
                            capture_output=True, text=True)
    assert export.returncode == 0, export.stderr
    val = prepared.val[0]
    result = _koi_eval("perplexity", "-m", str(root / "hf"), val, "--device", "cpu", "--json", str(root / "ppl.json"), cwd=root)
    assert result.returncode == 0, result.stderr
    report = json.loads((root / "ppl.json").read_text())

    plain = PlainGPT2(vocab=512, block=32, layers=2, width=64, heads=4)
    plain.load_from_koi(trainer.parts.model.state_dict())
    tokens = torch.from_numpy(read_shard(val).astype(np.int64))
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 32):
            window = tokens[start : start + 33]
            nll += F.cross_entropy(plain(window[None, :-1])[0], window[1:], reduction="sum").item()
            count += len(window) - 1
    assert report["tokens"] == count
    assert math.isclose(report["perplexity"], math.exp(nll / count), rel_tol=1e-4)


@pytest.mark.parametrize("arch,preset", [("gpt2", "gpt2-tiny"), ("llama", "llama-tiny")])
def test_kv_cache_generation_equals_recomputation(arch, preset):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, preset=preset, block_size=48), tokenizer_vocab=300).eval()
    prompt = torch.randint(0, 300, (12,)).tolist()
    with_cache = generate(model, prompt, max_new_tokens=30, block_size=48, temperature=0)
    without = generate(lambda idx: model(idx), prompt, max_new_tokens=30, block_size=48, temperature=0)
    assert with_cache == without and len(with_cache) == 30
    cache = model.make_cache()
    ids = torch.tensor([prompt])
    step_logits = [model(ids[:, :5], cache=cache)[:, -1]] + [model(ids[:, k : k + 1], cache=cache)[:, -1] for k in range(5, 12)]
    full = model(ids)
    torch.testing.assert_close(torch.stack(step_logits, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_hellaswag_in_training_and_cli(trained_run, prepared, tmp_path):
    tokens = read_shard(prepared.val[0])[:400].astype(int).tolist()
    examples = [Example(tokens[i : i + 10], [tokens[i + 10 : i + 14], tokens[i + 50 : i + 54], tokens[i + 90 : i + 93],
                                             tokens[i + 130 : i + 136]], 0) for i in range(0, 200, 40)]
    path = tmp_path / "hellaswag.bin"
    write_eval_bin(path, examples)
    raw = tiny_config(prepared, tmp_path, train={"steps": 4}, eval={"every": 2, "hellaswag": str(path)})
    Trainer(load_dict(raw), tmp_path / "run", log=lambda *_: None).fit()
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert len(evals) == 2 and all(r["hellaswag_examples"] == 5 and 0 <= r["hellaswag_acc"] <= 1 for r in evals)
    root, _ = trained_run
    result = _koi_train_eval("hellaswag", "-m", str(root / "run"), str(path), "--device", "cpu", cwd=root)
    assert result.returncode == 0 and "hellaswag_acc_norm" in result.stdout, result.stderr
    bad = _koi_train_eval("hellaswag", "-m", str(root / "run"), str(tmp_path / "missing.jsonl"), "--device", "cpu", cwd=root)
    assert bad.returncode == 2 and bad.stderr.startswith("koi-train eval hellaswag: ") and "--tokenizer is required" in bad.stderr
    not_hf = _koi_eval("hellaswag", "-m", str(root / "run"), str(path), "--device", "cpu", cwd=root)
    assert not_hf.returncode == 2 and "koi-train eval" in not_hf.stderr


@pytest.mark.parametrize("model_cfg", [
    ModelConfig(arch="gpt2", preset="gpt2-tiny", block_size=48),
    ModelConfig(arch="llama", preset="llama-tiny", block_size=48, n_kv_head=2, rope_theta=500.0),
    ModelConfig(arch="llama", preset="llama-tiny", block_size=48, qk_norm=True, tie_embeddings=True),
], ids=["gpt2", "llama-gqa", "llama-qk-norm-tied"])
def test_koi_eval_reads_exports_without_koi_train(model_cfg, tmp_path):
    """An exported Koi model scores the same through koi-eval's own forward pass as in koi-train."""
    torch.manual_seed(0)
    model = build_model(model_cfg, tokenizer_vocab=300).eval()
    save_hf(model, tmp_path)
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(load_hf_folder(tmp_path)(ids), model(ids), atol=2e-5, rtol=2e-4)
