"""Every supported file format loads to the same tokenizer; broken files get a clear error."""

from __future__ import annotations

import base64
import json

import pytest

from koi_tokenizer import Tokenizer, TokenizerFileError

SAMPLE = "The quick brown fox jumps over the lazy dog; it's 2024 and naïve café 🐍 still works."


def test_koi_format_round_trip(gpt2_tokenizer, tmp_path):
    path = tmp_path / "gpt2.json"
    gpt2_tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.encode(SAMPLE) == gpt2_tokenizer.encode(SAMPLE)
    assert loaded.special_tokens == gpt2_tokenizer.special_tokens
    assert not list(tmp_path.glob("*.tmp"))


def test_tiktoken_rank_file(gpt2_tokenizer, tmp_path, pydocs_val_text):
    ranks = gpt2_tokenizer.bpe_data.vocab
    path = tmp_path / "gpt2.tiktoken"
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])))
    loaded = Tokenizer.from_tiktoken_file(path, special_tokens={"<|endoftext|>": 50256})
    sample = pydocs_val_text[:50_000]
    assert loaded.encode(sample, disallowed_special=()) == gpt2_tokenizer.encode(sample, disallowed_special=())


def test_hf_tokenizer_json(gpt2_tokenizer, data_dir, tmp_path):
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    # A tokenizer.json as HF writes it for GPT-2, built by HF from the original files.
    engine = HFTokenizer(models.BPE.from_file(str(data_dir / "gpt2" / "vocab.json"), str(data_dir / "gpt2" / "merges.txt")))
    engine.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    engine.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    path = tmp_path / "tokenizer.json"
    engine.save(str(path))
    loaded = Tokenizer.load(path)
    assert loaded.encode(SAMPLE) == gpt2_tokenizer.encode(SAMPLE)
    assert loaded.eot_id == 50256


def test_gpt2_folder_and_openai_names(data_dir, tmp_path, gpt2_tokenizer):
    (tmp_path / "encoder.json").write_bytes((data_dir / "gpt2" / "vocab.json").read_bytes())
    (tmp_path / "vocab.bpe").write_bytes((data_dir / "gpt2" / "merges.txt").read_bytes())
    assert Tokenizer.load(tmp_path).encode(SAMPLE) == gpt2_tokenizer.encode(SAMPLE)


def test_vocab_that_is_not_json(tmp_path, data_dir):
    bad = tmp_path / "vocab.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json: contents: expected JSON"):
        Tokenizer.from_gpt2_files(bad, data_dir / "gpt2" / "merges.txt")


def test_merge_naming_a_missing_token(tmp_path, data_dir):
    vocab = json.loads((data_dir / "gpt2" / "vocab.json").read_text())
    del vocab["Ġthe"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerFileError) as err:
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json", data_dir / "gpt2" / "merges.txt")
    assert "merges.txt: merge" in str(err.value) and "not in the vocabulary" in str(err.value)


def test_vocab_without_every_byte(tmp_path, data_dir):
    vocab = json.loads((data_dir / "gpt2" / "vocab.json").read_text())
    del vocab["Ā"]  # byte 0 in GPT-2's printable byte alphabet
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(TokenizerFileError, match=r"vocab\.json: vocabulary: expected a token for each of the 256 bytes; byte 0"):
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")


@pytest.mark.parametrize("bad_token", ["a b", "x\u1234", "\x00"])  # a raw space, a character past the map, a raw byte
def test_vocab_token_that_is_not_byte_level_text(tmp_path, data_dir, bad_token):
    vocab = json.loads((data_dir / "gpt2" / "vocab.json").read_text())
    vocab[bad_token] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(TokenizerFileError, match=r"vocab\.json: token .* is not byte-level BPE text"):
        Tokenizer.from_gpt2_files(tmp_path / "vocab.json", data_dir / "gpt2" / "merges.txt")


def test_merge_token_that_is_not_byte_level_text(tmp_path, data_dir):
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nh e\n\nx \u1234\n")
    with pytest.raises(TokenizerFileError, match="merges.txt: line 5: token '\u1234' is not byte-level BPE text"):
        Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", tmp_path / "merges.txt")


def test_token_texts_convert_like_one_at_a_time(data_dir):
    from koi_tokenizer.byte_level import token_text_to_bytes, token_texts_to_bytes

    texts = [*json.loads((data_dir / "gpt2" / "vocab.json").read_text())]
    texts.remove("<|endoftext|>")
    assert token_texts_to_bytes(texts) == [token_text_to_bytes(t) for t in texts]
    assert token_texts_to_bytes([]) == []


def test_malformed_merge_line(tmp_path, data_dir):
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nthree parts here\n")
    with pytest.raises(TokenizerFileError, match="merges.txt: line 3: expected two tokens"):
        Tokenizer.from_gpt2_files(data_dir / "gpt2" / "vocab.json", tmp_path / "merges.txt")


def test_missing_file_and_wrong_kind(tmp_path):
    with pytest.raises(TokenizerFileError, match="not found"):
        Tokenizer.load(tmp_path / "nope.json")
    wrong = tmp_path / "tokenizer.json"
    wrong.write_text(json.dumps({"model": {"type": "WordPiece"}}))
    with pytest.raises(TokenizerFileError, match="model.type: expected 'BPE', got 'WordPiece'"):
        Tokenizer.load(wrong)
