"""koi-eval's own GPT-2 and Llama/Qwen3 forward passes give transformers' logits on the same folder.

transformers is the independent reference here (a test dependency only): it builds a random model
from a config, saves the folder, and koi-eval loads that folder with nothing but safetensors.
"""

from __future__ import annotations

import json

import pytest
import torch

from koi_eval import EvalFileError, load_hf_folder

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=40, vocab_size=301),
    "llama-gqa": lambda: transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, max_position_embeddings=40, vocab_size=301,
                                                  rope_theta=500.0, tie_word_embeddings=False),
    "qwen3-tied": lambda: transformers.Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                                   num_key_value_heads=1, head_dim=24, max_position_embeddings=40, vocab_size=301,
                                                   tie_word_embeddings=True),
}


@pytest.fixture(params=sorted(CONFIGS))
def hf_folder(request, tmp_path):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).float().eval()
    with torch.no_grad():  # norms start at one and biases at zero; random values make a wrong layout visible
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_logits_equal_transformers(hf_folder):
    reference, folder = hf_folder
    ours = load_hf_folder(folder)
    ids = torch.randint(0, 301, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(input_ids=ids).logits, atol=2e-5, rtol=2e-4)
    assert ours.block_size == 40


def test_missing_tensor_and_key_name_the_file_and_field(hf_folder, tmp_path):
    _, folder = hf_folder
    config = json.loads((folder / "config.json").read_text())
    key = "n_layer" if config["model_type"] == "gpt2" else "num_hidden_layers"
    (folder / "config.json").write_text(json.dumps({**config, key: config[key] + 1}))
    with pytest.raises(EvalFileError, match=r"model\.safetensors: .*\.2\..*missing"):
        load_hf_folder(folder)
    del config[key]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EvalFileError, match=rf"config\.json: {key}: expected this key"):
        load_hf_folder(folder)


def test_other_architectures_load_through_transformers(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                        max_position_embeddings=24, vocab_size=301)
    reference = transformers.AutoModelForCausalLM.from_config(config).float().eval()
    reference.save_pretrained(tmp_path)
    ours = load_hf_folder(tmp_path)
    ids = torch.randint(0, 301, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(input_ids=ids).logits)
    assert ours.block_size == 24
