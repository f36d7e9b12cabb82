"""Generation: greedy follows the model, sampling respects top-k/top-p, EOT stops."""

from __future__ import annotations

import torch

from koi_eval import filter_logits, generate


def test_filter_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    k2 = filter_logits(logits, top_k=2)
    assert torch.isfinite(k2).tolist() == [[True, True, False, False, False]]
    p = filter_logits(logits, top_p=0.8)  # 0.5 + 0.2 < 0.8, adding 0.15 crosses it
    assert torch.isfinite(p).tolist() == [[True, True, True, False, False]]
    shuffled = logits[:, [3, 0, 4, 2, 1]]
    assert torch.isfinite(filter_logits(shuffled, top_p=0.8)).tolist() == [[False, True, False, True, True]]


def test_greedy_follows_bigram_and_stops_at_eot(tokenized, bigram):
    tok, _, _ = tokenized
    prompt = tok.encode("The")
    ids = generate(bigram, prompt, max_new_tokens=10, block_size=64, temperature=0)
    current = prompt[-1]
    for token in ids:
        assert token == int(bigram.log_probs[current].argmax())
        current = token
    table = torch.full((5, 5), -10.0)
    table[:, 4] = 0.0  # token 4 always most likely
    stop = generate(lambda idx: table[idx], [0], max_new_tokens=10, block_size=8, temperature=0, eot_id=4)
    assert stop == []


def test_sampling_is_seeded_and_stays_in_top_k(bigram, tokenized):
    tok, _, _ = tokenized
    prompt = tok.encode("def")
    a = generate(bigram, prompt, max_new_tokens=20, block_size=64, top_k=3, generator=torch.Generator().manual_seed(1))
    b = generate(bigram, prompt, max_new_tokens=20, block_size=64, top_k=3, generator=torch.Generator().manual_seed(1))
    assert a == b
    current = prompt[-1]
    for token in a:
        assert token in torch.topk(bigram.log_probs[current], 3).indices.tolist()
        current = token
