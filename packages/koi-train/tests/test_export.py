"""An exported run is a Hugging Face folder that tokenizes and predicts like the Koi run, no Koi needed."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from koi_tokenizer import Tokenizer
from koi_train.cli import main
from koi_train.load_model import load_trained_model

TEXT = "The for statement iterates over the items of any sequence, in the order that they appear.\n\n    >>> x = 1"


@pytest.fixture(scope="module")
def exported(prepared, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export")
    config = tmp_path / "run.json"
    config.write_text(json.dumps(tiny_config(prepared, tmp_path, name="run", train={"steps": 3})))
    assert main(["run", str(config)]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    return tmp_path / "run", tmp_path / "hf", Tokenizer.load(prepared.tokenizer)


def test_export_writes_the_runs_tokenizer_and_its_special_ids(exported):
    import tokenizers

    run_dir, hf_dir, koi_tokenizer = exported
    assert (run_dir / "tokenizer.json").is_file()  # the run keeps its own tokenizer
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == config["pad_token_id"] == koi_tokenizer.eot_id
    assert config["vocab_size"] >= koi_tokenizer.vocab_size
    hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert hf.encode(TEXT).ids == koi_tokenizer.encode(TEXT)
    assert hf.decode(koi_tokenizer.encode(TEXT)) == TEXT
    assert hf.token_to_id("<|endoftext|>") == koi_tokenizer.eot_id
    assert json.loads((hf_dir / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"


def test_transformers_loads_and_runs_the_exported_folder(exported):
    transformers = pytest.importorskip("transformers")
    run_dir, hf_dir, koi_tokenizer = exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert tokenizer(TEXT)["input_ids"] == koi_tokenizer.encode(TEXT)
    assert tokenizer.eos_token_id == koi_tokenizer.eot_id
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.tensor([koi_tokenizer.encode(TEXT)[:16]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, load_trained_model(str(run_dir)).eval()(ids), rtol=1e-4, atol=1e-4)
