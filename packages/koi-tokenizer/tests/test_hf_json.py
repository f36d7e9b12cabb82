"""Koi writes a Hugging Face tokenizer.json that the `tokenizers` library encodes with exactly as Koi does."""

from __future__ import annotations

import tokenizers

from koi_tokenizer import Tokenizer


def test_gpt2_as_hf_json_encodes_like_koi_and_reads_back(gpt2_tokenizer, pydocs_val_text, tmp_path):
    path = tmp_path / "tokenizer.json"
    gpt2_tokenizer.save_hf_json(path)
    text = pydocs_val_text[:100_000].replace("<|endoftext|>", "")
    hf = tokenizers.Tokenizer.from_file(str(path))
    ids = gpt2_tokenizer.encode(text)
    assert hf.encode(text).ids == ids
    assert hf.decode(ids) == text
    assert hf.token_to_id("<|endoftext|>") == gpt2_tokenizer.eot_id == 50256
    again = Tokenizer.load(path)
    assert again.bpe_data.vocab == gpt2_tokenizer.bpe_data.vocab and again.bpe_data.merges == gpt2_tokenizer.bpe_data.merges
    assert again.special_tokens == gpt2_tokenizer.special_tokens
