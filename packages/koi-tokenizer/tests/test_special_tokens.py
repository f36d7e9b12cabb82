"""Special tokens are refused unless asked for, as in tiktoken, and the error says how to allow them."""

from __future__ import annotations

import pytest

from koi_tokenizer import DisallowedSpecialTokenError

TEXT = "end of one page\n<|endoftext|>\nstart of the next"


def test_special_text_is_refused_by_default(gpt2_tokenizer):
    with pytest.raises(DisallowedSpecialTokenError) as err:
        gpt2_tokenizer.encode(TEXT)
    message = str(err.value)
    assert "<|endoftext|>" in message and "allowed_special" in message


def test_allowed_special_becomes_one_token(gpt2_tokenizer, tiktoken_gpt2):
    ids = gpt2_tokenizer.encode(TEXT, allowed_special={"<|endoftext|>"})
    assert ids.count(gpt2_tokenizer.eot_id) == 1
    assert ids == tiktoken_gpt2.encode(TEXT, allowed_special="all")


def test_disabled_check_encodes_as_plain_text(gpt2_tokenizer, tiktoken_gpt2):
    ids = gpt2_tokenizer.encode(TEXT, disallowed_special=())
    assert gpt2_tokenizer.eot_id not in ids
    assert ids == tiktoken_gpt2.encode(TEXT, disallowed_special=())


def test_batch_equals_single(gpt2_tokenizer, pydocs_val_text):
    docs = pydocs_val_text.split("<|endoftext|>")[:20]
    assert gpt2_tokenizer.encode_batch(docs) == [gpt2_tokenizer.encode(d) for d in docs]
    with_special = [d + "<|endoftext|>" for d in docs[:3]]
    assert gpt2_tokenizer.encode_batch(with_special, allowed_special="all") == [
        gpt2_tokenizer.encode(d, allowed_special="all") for d in with_special
    ]


def test_vocab_and_eot(gpt2_tokenizer):
    assert gpt2_tokenizer.vocab_size == 50257
    assert gpt2_tokenizer.eot_id == 50256


def test_decode_rejects_out_of_range_ids(gpt2_tokenizer):
    with pytest.raises(ValueError, match="50257"):
        gpt2_tokenizer.decode([1, 50257])
