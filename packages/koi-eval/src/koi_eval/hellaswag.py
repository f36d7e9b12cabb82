"""HellaSwag multiple choice: which of four endings does the model find most likely?

Examples come from the original JSONL (``ctx``, ``endings``, ``label``) or llm.c's binary eval
file. Each ending is scored by the model's loss on the ending tokens given the context: ``acc``
picks the lowest total loss, ``acc_norm`` the lowest mean loss per ending token (llm.c's
convention), so long endings are not penalised for their length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

EVAL_MAGIC = 20240522  # llm.c multiple-choice eval files
EVAL_VERSION = 1
START_EXAMPLE = 65535


class EvalFileError(ValueError):
    def __init__(self, path: object, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")


@dataclass(frozen=True)
class Example:
    context: list[int]
    endings: list[list[int]]
    label: int


@dataclass(frozen=True)
class HellaSwagResult:
    acc: float
    acc_norm: float
    examples: int

    def as_record(self) -> dict:
        return {"hellaswag_acc": self.acc, "hellaswag_acc_norm": self.acc_norm, "hellaswag_examples": self.examples}


def read_jsonl(path: str | Path, encode: Callable[[str], list[int]]) -> list[Example]:
    """Original HellaSwag JSONL; endings are encoded with a leading space, as they follow the context."""
    examples = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            context, endings, label = row["ctx"], row["endings"], int(row["label"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise EvalFileError(path, f"line {lineno}", f"expected JSON with ctx, endings and label ({exc})") from None
        if not 0 <= label < len(endings):
            raise EvalFileError(path, f"line {lineno}.label", f"expected 0..{len(endings) - 1}, got {label}")
        examples.append(Example(encode(context), [encode(" " + e) for e in endings], label))
    return examples


def write_eval_bin(path: str | Path, examples: Sequence[Example]) -> None:
    """llm.c's layout: 256 int32 header, then per example a uint16 stream (see `read_eval_bin`)."""
    streams = []
    for index, ex in enumerate(examples):
        body = [index, ex.label, len(ex.endings), len(ex.context), *ex.context]
        for ending in ex.endings:
            body += [len(ending), *ending]
        stream = [START_EXAMPLE, 0, *body]
        stream[1] = 2 * len(stream)  # bytes of this example, so a reader can skip it
        streams.append(np.array(stream, dtype=np.uint16))
    header = np.zeros(256, dtype=np.int32)
    header[:4] = (EVAL_MAGIC, EVAL_VERSION, len(examples), max((len(s) * 2 for s in streams), default=0))
    Path(path).write_bytes(header.tobytes() + b"".join(s.tobytes() for s in streams))


def read_eval_bin(path: str | Path) -> list[Example]:
    """Stream per example: START(65535), bytes, index, label, n_endings, n_ctx, ctx..., (n, ending...) x n_endings."""
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype=np.int32)
    if len(header) < 256 or header[0] != EVAL_MAGIC:
        raise EvalFileError(path, "header.magic", f"expected {EVAL_MAGIC}, got {int(header[0]) if len(header) else 'nothing'}")
    if header[1] != EVAL_VERSION:
        raise EvalFileError(path, "header.version", f"expected {EVAL_VERSION}, got {int(header[1])}")
    data = np.frombuffer(raw[1024:], dtype=np.uint16)
    examples, pos = [], 0
    for k in range(int(header[2])):
        if pos >= len(data) or data[pos] != START_EXAMPLE:
            raise EvalFileError(path, f"example {k}", "expected the start-of-example marker 65535")
        nbytes = int(data[pos + 1])
        stream = data[pos : pos + nbytes // 2].tolist()
        label, n_endings, n_ctx = stream[3], stream[4], stream[5]
        context, cursor, endings = stream[6 : 6 + n_ctx], 6 + n_ctx, []
        for _ in range(n_endings):
            n = stream[cursor]
            endings.append(stream[cursor + 1 : cursor + 1 + n])
            cursor += 1 + n
        examples.append(Example(context, endings, label))
        pos += nbytes // 2
    return examples


@torch.no_grad()
def ending_losses(logits_fn, example: Example, *, block_size: int, device="cpu") -> tuple[list[float], list[float]]:
    """(total loss, mean loss) of each ending given the context, batched over the endings."""
    rows = [(example.context + e)[-(block_size + 1):] for e in example.endings]
    width = max(len(r) for r in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1, dtype=torch.bool)
    for i, (row, ending) in enumerate(zip(rows, example.endings)):
        batch[i, : len(row)] = torch.tensor(row)
        n_end = min(len(ending), len(row) - 1)
        mask[i, len(row) - 1 - n_end : len(row) - 1] = True  # targets that are ending tokens
    batch = batch.to(device)
    logits = logits_fn(batch[:, :-1]).float()
    losses = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none").view(len(rows), -1).cpu()
    totals = (losses * mask).sum(1)
    return totals.tolist(), (totals / mask.sum(1)).tolist()


def evaluate_hellaswag(logits_fn, examples: Sequence[Example], *, block_size: int, device="cpu",
                       limit: int | None = None) -> HellaSwagResult:
    chosen = list(examples)[:limit] if limit else list(examples)
    correct = correct_norm = 0
    for ex in chosen:
        totals, means = ending_losses(logits_fn, ex, block_size=block_size, device=device)
        correct += int(np.argmin(totals)) == ex.label
        correct_norm += int(np.argmin(means)) == ex.label
    n = max(len(chosen), 1)
    return HellaSwagResult(correct / n, correct_norm / n, len(chosen))
