"""Sampling text from a model: temperature, top-k, top-p, stop on end-of-text."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def filter_logits(logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest top-p nucleus to -inf. logits: (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


@torch.no_grad()
def generate(
    logits_fn: LogitsFn, prompt: Sequence[int], *, max_new_tokens: int, block_size: int,
    temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    eot_id: int | None = None, vocab_limit: int | None = None, generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> list[int]:
    """Return the generated ids (prompt excluded). temperature 0 means greedy.

    A model with ``make_cache()`` (Koi's GPT-2 and Llama) is fed one new token per step with a KV
    cache until the context fills; then, and for plain functions, the window is recomputed.
    """
    ids = torch.tensor([list(prompt)], dtype=torch.long, device=device)
    new: list[int] = []
    cache = logits_fn.make_cache() if hasattr(logits_fn, "make_cache") else None
    fed = 0  # tokens of ids already in the cache
    for _ in range(max_new_tokens):
        if cache is not None and ids.shape[1] <= block_size:
            logits = logits_fn(ids[:, fed:], cache=cache)[:, -1, :].float()  # (1, V)
            fed = ids.shape[1]
        else:
            logits = logits_fn(ids[:, -block_size:])[:, -1, :].float()
        if vocab_limit is not None:
            logits = logits[:, :vocab_limit]  # padded embedding rows are not real tokens
        if temperature == 0:
            next_id = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits / temperature, top_k=top_k, top_p=top_p).softmax(-1)
            next_id = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)
        token = int(next_id)
        if eot_id is not None and token == eot_id:
            break
        new.append(token)
        ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
    return new
