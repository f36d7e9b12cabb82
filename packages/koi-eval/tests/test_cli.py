"""`koi-eval` on a Hugging Face GPT-2 folder, with no other Koi package than koi-tokenizer: flags, output and exit codes."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from koi_eval import load_hf_folder
from koi_eval.cli import build_parser
from koi_tokenizer import read_shard, write_shard

VOCAB, BLOCK, WIDTH = 400, 32, 48


def random_gpt2_folder(folder) -> None:
    """An HF GPT-2 folder as `save_pretrained` writes one: Conv1D weights (in, out), tied head left out."""
    torch.manual_seed(0)
    shapes = {"wte.weight": (VOCAB, WIDTH), "wpe.weight": (BLOCK, WIDTH), "ln_f.weight": (WIDTH,), "ln_f.bias": (WIDTH,)}
    for i in range(2):
        shapes |= {f"h.{i}.ln_1.weight": (WIDTH,), f"h.{i}.ln_1.bias": (WIDTH,), f"h.{i}.ln_2.weight": (WIDTH,),
                   f"h.{i}.ln_2.bias": (WIDTH,), f"h.{i}.attn.c_attn.weight": (WIDTH, 3 * WIDTH), f"h.{i}.attn.c_attn.bias": (3 * WIDTH,),
                   f"h.{i}.attn.c_proj.weight": (WIDTH, WIDTH), f"h.{i}.attn.c_proj.bias": (WIDTH,),
                   f"h.{i}.mlp.c_fc.weight": (WIDTH, 4 * WIDTH), f"h.{i}.mlp.c_fc.bias": (4 * WIDTH,),
                   f"h.{i}.mlp.c_proj.weight": (4 * WIDTH, WIDTH), f"h.{i}.mlp.c_proj.bias": (WIDTH,)}
    tensors = {name: torch.randn(shape) * 0.2 for name, shape in shapes.items()}
    for name, tensor in tensors.items():
        if "ln_" in name and name.endswith("weight"):
            tensor.add_(1.0)  # layer-norm gains near one, as trained
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 4, "n_embd": WIDTH,
                                                    "n_positions": BLOCK, "vocab_size": VOCAB, "n_inner": None}))


def koi_eval(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "koi_eval.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def scored(tokenized, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    random_gpt2_folder(root / "gpt2")
    _, _, val = tokenized
    write_shard(root / "val.bin", val[:500].astype(np.uint16))
    return root


def test_perplexity_of_an_hf_folder(scored):
    result = koi_eval("perplexity", "-m", "gpt2", "val.bin", "--device", "cpu", "--json", "ppl.json", cwd=scored)
    assert result.returncode == 0, result.stderr
    report = json.loads((scored / "ppl.json").read_text())
    model, tokens = load_hf_folder(scored / "gpt2"), torch.from_numpy(read_shard(scored / "val.bin").astype(np.int64))
    nll = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, BLOCK):
            window = tokens[start : start + BLOCK + 1]
            nll += F.cross_entropy(model(window[None, :-1])[0], window[1:], reduction="sum").item()
    assert report["tokens"] == len(tokens) - 1
    assert math.isclose(report["perplexity"], math.exp(nll / report["tokens"]), rel_tol=1e-5)
    assert "perplexity" in result.stdout


def test_generate_from_an_hf_folder(scored, tokenized):
    tok, _, _ = tokenized
    tok.save(scored / "tok.json")
    result = koi_eval("generate", "-m", "gpt2", "-t", "tok.json", "--prompt", "The", "--max-tokens", "5", "--device", "cpu", cwd=scored)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("The")


def test_a_koi_run_folder_points_to_koi_train(scored):
    (scored / "runs" / "r" / "checkpoints").mkdir(parents=True)
    result = koi_eval("perplexity", "-m", "runs/r", "val.bin", cwd=scored)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "runs/r: model: expected a Hugging Face folder" in result.stderr
    assert "koi-train eval" in result.stderr


def test_flags_and_exit_codes_are_frozen():
    """A change here is a change to the command line users type: make it on purpose."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {name: sorted(opt for action in p._actions for opt in action.option_strings) for name, p in sub.choices.items()}
    common = ["--device", "--help", "--json", "--model", "-h", "-m"]
    assert flags == {
        "perplexity": sorted(common + ["--block-size", "--stride", "--tokenizer", "-t"]),
        "hellaswag": sorted(common + ["--limit", "--tokenizer", "-t"]),
        "generate": sorted(common + ["--max-tokens", "--prompt", "--seed", "--temperature", "--tokenizer", "--top-k", "--top-p", "-t"]),
    }
    assert koi_eval("perplexity", "-m", "nowhere", "missing.txt", cwd=".").returncode == 2
