"""HellaSwag scoring on hand-made examples whose answer is known, and both file formats."""

from __future__ import annotations

import json

import pytest
import torch

from koi_eval import EvalFileError, Example, evaluate_hellaswag, read_eval_bin, read_jsonl, write_eval_bin

VOCAB = 10


def chain_model(next_of: dict[int, int], confidence: float = 5.0):
    """A model that strongly predicts next_of[t] after token t (uniform otherwise)."""
    table = torch.zeros(VOCAB, VOCAB)
    for a, b in next_of.items():
        table[a, b] = confidence
    return lambda idx: table[idx]


def test_known_answers_for_acc_and_acc_norm():
    model = chain_model({1: 2, 2: 3, 3: 4, 4: 5})
    examples = [
        Example(context=[1], endings=[[7, 7], [2, 3], [8], [9, 9, 9]], label=1),  # the chain continues 1 -> 2 -> 3
        Example(context=[2], endings=[[3, 4, 5], [6], [7, 8], [0]], label=0),
    ]
    result = evaluate_hellaswag(model, examples, block_size=16)
    assert (result.acc, result.acc_norm, result.examples) == (1.0, 1.0, 2)


def test_acc_and_acc_norm_differ_on_length():
    # P(2 | 1 or 2) = e^2 / (e^2 + 9) = 0.45: ending 0 costs 4 x 0.80 = 3.2 nats (0.8 per token);
    # ending 1 is one unlikely token, 1 / 16.4: 2.8 nats. acc (total) picks 1, acc_norm (mean) picks 0.
    model = chain_model({1: 2, 2: 2}, confidence=2.0)
    ex = Example(context=[1], endings=[[2, 2, 2, 2], [9]], label=0)
    result = evaluate_hellaswag(model, [ex], block_size=16)
    assert (result.acc, result.acc_norm) == (0.0, 1.0)
    wrong = Example(context=[1], endings=[[9, 9], [2, 2]], label=0)
    assert evaluate_hellaswag(model, [wrong], block_size=16).acc_norm == 0.0


def test_bin_round_trip(tmp_path):
    examples = [Example([1, 2, 3], [[4], [5, 6], [7, 8, 9], [1]], 2), Example([9], [[1, 2], [3], [4], [5]], 0)]
    path = tmp_path / "hellaswag_val.bin"
    write_eval_bin(path, examples)
    assert read_eval_bin(path) == examples
    raw = bytearray(path.read_bytes())
    raw[0:4] = (1234).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(EvalFileError, match="header.magic: expected 20240522"):
        read_eval_bin(path)


def test_jsonl_reader_encodes_endings_with_a_space(tmp_path, tokenized):
    tok, _, _ = tokenized
    path = tmp_path / "hs.jsonl"
    rows = [{"ctx": "A man is sitting on a roof. he", "endings": ["is using wrap.", "starts pulling up roofing.", "a", "b"], "label": 1}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    (ex,) = read_jsonl(path, tok.encode)
    assert ex.label == 1 and ex.context == tok.encode(rows[0]["ctx"])
    assert ex.endings[1] == tok.encode(" starts pulling up roofing.")
    path.write_text('{"ctx": "x", "endings": ["a"], "label": 3}')
    with pytest.raises(EvalFileError, match=r"line 1.label: expected 0..0, got 3"):
        read_jsonl(path, tok.encode)
