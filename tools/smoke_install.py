"""Use one installed Koi package the way a user would first, in a venv that holds only it and its dependencies.

    python tools/smoke_install.py koi-eval 0.1.0

Run by the nox `release` session after installing the built wheel (and again the sdist) into a
clean venv; it imports nothing from the source tree. It checks the version the package reports,
that no undeclared Koi package came along, and one real use per package (koi-eval scores a
Hugging Face GPT-2 folder with its own dependencies only).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DECLARED = {  # what each package may find installed; everything else must be absent
    "koi-tokenizer": [], "koi-quant": [], "koi-kernels": ["koi-quant"], "koi-eval": ["koi-tokenizer"],
    "koi-train": ["koi-tokenizer", "koi-quant", "koi-kernels", "koi-eval"],
}
TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def run(command: str, *args: str, cwd: Path) -> str:
    """Run one of the venv's console scripts, as a user who activated it would."""
    done = subprocess.run([str(Path(sys.executable).parent / command), *args], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise SystemExit(f"{command} {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def tokenizer(tmp: Path) -> None:
    from koi_tokenizer import train_bpe

    tok = train_bpe([TEXT], vocab_size=300)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    (tmp / "text.txt").write_text(TEXT)
    run("koi-tokenizer", "--help", cwd=tmp)


def quant(tmp: Path) -> None:
    import torch

    from koi_quant import memory_table, quantize_

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
    quantize_(model, {"0": "ternary"})
    assert model(torch.randn(2, 64)).shape == (2, 8)
    assert "ternary" in str(memory_table(model))


def kernels(tmp: Path) -> None:
    import torch

    from koi_kernels import rms_norm, rms_norm_reference

    x, w = torch.randn(3, 40), torch.rand(40)
    torch.testing.assert_close(rms_norm(x, w)[0], rms_norm_reference(x, w)[0])


def gpt2_folder(folder: Path, vocab: int = 300, width: int = 32, block: int = 64) -> None:
    """A random GPT-2 in Hugging Face's layout (Conv1D weights stored (in, out), tied head left out)."""
    import torch
    from safetensors.torch import save_file

    shapes = {"wte.weight": (vocab, width), "wpe.weight": (block, width), "ln_f.weight": (width,), "ln_f.bias": (width,),
              "h.0.ln_1.weight": (width,), "h.0.ln_1.bias": (width,), "h.0.ln_2.weight": (width,), "h.0.ln_2.bias": (width,),
              "h.0.attn.c_attn.weight": (width, 3 * width), "h.0.attn.c_attn.bias": (3 * width,),
              "h.0.attn.c_proj.weight": (width, width), "h.0.attn.c_proj.bias": (width,),
              "h.0.mlp.c_fc.weight": (width, 4 * width), "h.0.mlp.c_fc.bias": (4 * width,),
              "h.0.mlp.c_proj.weight": (4 * width, width), "h.0.mlp.c_proj.bias": (width,)}
    folder.mkdir(parents=True)
    save_file({name: torch.randn(shape) * 0.2 for name, shape in shapes.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": width,
                                                    "n_positions": block, "vocab_size": vocab}))


def evaluation(tmp: Path) -> None:
    import numpy as np

    from koi_tokenizer import write_shard

    assert importlib.util.find_spec("transformers") is None, "koi-eval must score GPT-2 without transformers"
    gpt2_folder(tmp / "gpt2")
    write_shard(tmp / "val.bin", np.random.default_rng(0).integers(0, 300, 500).astype(np.uint16))
    run("koi-eval", "perplexity", "-m", "gpt2", "val.bin", "--device", "cpu", "--json", "ppl.json", cwd=tmp)
    report = json.loads((tmp / "ppl.json").read_text())
    assert report["tokens"] == 499 and report["perplexity"] > 1, report


def train(tmp: Path) -> None:
    import numpy as np

    from koi_tokenizer import write_shard
    from koi_train import build_model, save_hf
    from koi_train.config import ModelConfig, schema

    assert schema()["title"] == "Koi run config"  # the packaged copy of schemas/run-config.schema.json
    shown = json.loads(run("koi-train", "show", cwd=tmp))  # the packaged quickstart, every default filled in
    (tmp / "run.json").write_text(json.dumps(shown))
    run("koi-train", "validate", "run.json", cwd=tmp)
    save_hf(build_model(ModelConfig(arch="llama", preset="llama-tiny", block_size=64), tokenizer_vocab=300), tmp / "llama")
    write_shard(tmp / "val.bin", np.random.default_rng(0).integers(0, 300, 300).astype(np.uint16))
    for command in (["koi-eval"], ["koi-train", "eval"]):  # an export scores through either
        run(*command, "perplexity", "-m", "llama", "val.bin", "--device", "cpu", cwd=tmp)


CHECKS = {"koi-tokenizer": tokenizer, "koi-quant": quant, "koi-kernels": kernels, "koi-eval": evaluation, "koi-train": train}


def main(package: str, version: str) -> int:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU in a smoke venv: Triton kernels, if any run, interpret
    module = importlib.import_module(package.replace("-", "_"))
    source = Path(module.__file__).resolve()
    assert "site-packages" in source.parts, f"{package} imported from {source}, not from the installed wheel"
    assert module.__version__ == version, f"{package}.__version__ is {module.__version__}, pyproject.toml says {version}"
    extra = [name for name in DECLARED if name != package and name not in DECLARED[package]
             and importlib.util.find_spec(name.replace("-", "_")) is not None]
    assert not extra, f"undeclared koi packages installed with {package}: {extra}"
    with tempfile.TemporaryDirectory() as tmp:
        CHECKS[package](Path(tmp))
    print(f"{package} {version}: installed alone from its archive, imports, reports its version and works")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
