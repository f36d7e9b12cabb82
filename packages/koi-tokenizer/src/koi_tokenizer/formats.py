"""Readers and writers for the tokenizer files Koi understands.

Every reader returns the same three things: ``vocab`` (token bytes -> id), ``merges`` (ranked
pairs of token bytes) and ``special_tokens`` (text -> id). Each check names the file and the
place in it, because a corrupted vocabulary otherwise shows up much later as garbage tokens.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_bytes
from .byte_level import bytes_to_token_text, token_text_to_bytes, token_texts_to_bytes
from .errors import TokenizerFileError

KOI_FORMAT = "koi-bpe"
KOI_FORMAT_VERSION = 1


@dataclass
class BPEData:
    vocab: dict[bytes, int]
    merges: list[tuple[bytes, bytes]]
    special_tokens: dict[str, int] = field(default_factory=dict)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerFileError(path, "file", "not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerFileError(path, "contents", f"expected JSON, got invalid text ({exc})") from None


def _check_bytes(path: Path, vocab: dict[bytes, int], field: str = "vocabulary") -> None:
    """Byte-level BPE starts from single bytes: every one of the 256 needs a token."""
    lacking = next((b for b in range(256) if bytes([b]) not in vocab), None)
    if lacking is not None:
        raise TokenizerFileError(path, field, f"expected a token for each of the 256 bytes; byte {lacking} has none")


def _check_merges(path: Path, vocab: dict[bytes, int], merges: list[tuple[bytes, bytes]]) -> None:
    for rank, (left, right) in enumerate(merges):
        for part in (left, right, left + right):
            if part not in vocab:
                raise TokenizerFileError(
                    path, f"merge {rank}", f"token {part!r} of merge ({left!r}, {right!r}) is not in the vocabulary"
                )


def _text_tokens_to_bytes(path: Path, where: str, text: str) -> bytes:
    try:
        return token_text_to_bytes(text)
    except KeyError:
        raise TokenizerFileError(path, where, f"token {text!r} is not byte-level BPE text") from None


def _all_text_tokens_to_bytes(path: Path, texts: list[str], where: Callable[[int], str]) -> list[bytes]:
    """Every token text as bytes in one pass; on a bad one, the error names ``where(index)``.

    The places are only worked out on that error: a tokenizer's construction converts 150k texts.
    """
    try:
        return token_texts_to_bytes(texts)
    except KeyError:
        for index, text in enumerate(texts):
            _text_tokens_to_bytes(path, where(index), text)
        raise


def read_gpt2_files(vocab_path: str | Path, merges_path: str | Path) -> BPEData:
    """GPT-2's ``vocab.json``/``encoder.json`` with ``merges.txt``/``vocab.bpe``."""
    vocab_path, merges_path = Path(vocab_path), Path(merges_path)
    raw = _read_json(vocab_path)
    if not isinstance(raw, dict) or not all(isinstance(v, int) for v in raw.values()):
        raise TokenizerFileError(vocab_path, "contents", "expected a JSON object of token -> integer id")
    special = {text: idx for text, idx in raw.items() if text.startswith("<|") and text.endswith("|>")}
    texts = [text for text in raw if text not in special]
    tokens = _all_text_tokens_to_bytes(vocab_path, texts, lambda k: f"token {texts[k]!r}")
    vocab = dict(zip(tokens, map(raw.__getitem__, texts)))
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenizerFileError(merges_path, "file", "not found") from None
    parts: list[str] = []
    linenos: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerFileError(merges_path, f"line {lineno}", f"expected two tokens separated by a space, got {line!r}")
        parts += pair
        linenos.append(lineno)
    halves = iter(_all_text_tokens_to_bytes(merges_path, parts, lambda k: f"line {linenos[k // 2]}"))
    merges = list(zip(halves, halves))
    _check_bytes(vocab_path, vocab)
    _check_merges(merges_path, vocab, merges)
    return BPEData(vocab, merges, special)


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Recover the merge list implied by a tiktoken rank table.

    A token of rank r is produced by BPE over its own bytes using only ranks below r; the last
    merge joins exactly two parts, which is the merge that creates it.
    """
    merges: list[tuple[int, tuple[bytes, bytes]]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while True:
            best = None
            for k in range(len(parts) - 1):
                r = ranks.get(parts[k] + parts[k + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, k)
            if best is None:
                break
            k = best[1]
            parts[k : k + 2] = [parts[k] + parts[k + 1]]
        if len(parts) == 2:
            merges.append((rank, (parts[0], parts[1])))
    merges.sort()
    return [pair for _, pair in merges]


def read_tiktoken_file(path: str | Path, special_tokens: dict[str, int] | None = None) -> BPEData:
    """A tiktoken ``.tiktoken`` rank file: one ``base64(token) rank`` per line."""
    path = Path(path)
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise TokenizerFileError(path, "file", "not found") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (IndexError, ValueError):
            raise TokenizerFileError(path, f"line {lineno}", f"expected 'base64 rank', got {line[:60]!r}") from None
        ranks[token] = rank
    _check_bytes(path, ranks, "ranks")
    return BPEData(ranks, merges_from_ranks(ranks), dict(special_tokens or {}))


def read_hf_json(path: str | Path) -> BPEData:
    """A Hugging Face ``tokenizer.json`` whose model is byte-level BPE."""
    path = Path(path)
    raw = _read_json(path)
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        found = model.get("type") if isinstance(model, dict) else type(model).__name__
        raise TokenizerFileError(path, "model.type", f"expected 'BPE', got {found!r}")
    special = {t["content"]: t["id"] for t in raw.get("added_tokens", []) if t.get("special")}
    vocab = {
        _text_tokens_to_bytes(path, f"model.vocab[{text!r}]", text): idx
        for text, idx in model["vocab"].items()
        if text not in special
    }
    merges = []
    for rank, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        where = f"model.merges[{rank}]"
        merges.append((_text_tokens_to_bytes(path, where, left), _text_tokens_to_bytes(path, where, right)))
    _check_bytes(path, vocab)
    _check_merges(path, vocab, merges)
    return BPEData(vocab, merges, special)


def write_hf_json(path: str | Path, data: BPEData) -> None:
    """A Hugging Face ``tokenizer.json`` (byte-level BPE with GPT-2's pre-tokenizer), so a model
    exported with it tokenizes in ``tokenizers``/``transformers`` exactly as Koi does, no Koi needed."""
    vocab = {bytes_to_token_text(token): idx for token, idx in sorted(data.vocab.items(), key=lambda item: item[1])}
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [{"id": idx, "content": text, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
                          "special": True} for text, idx in sorted(data.special_tokens.items(), key=lambda item: item[1])],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", **byte_level},
        "post_processor": {"type": "ByteLevel", **byte_level, "trim_offsets": False},
        "decoder": {"type": "ByteLevel", **byte_level},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "vocab": {**vocab, **data.special_tokens},
                  "merges": [f"{bytes_to_token_text(a)} {bytes_to_token_text(b)}" for a, b in data.merges]},
    }
    atomic_write_bytes(path, json.dumps(doc, ensure_ascii=False).encode("utf-8"))


def write_koi_file(path: str | Path, data: BPEData) -> None:
    """Koi's own format: one JSON file, tokens as base64 so any byte sequence survives."""
    tokens = sorted(data.vocab, key=data.vocab.__getitem__)
    index = {token: i for i, token in enumerate(tokens)}
    doc = {
        "format": KOI_FORMAT,
        "version": KOI_FORMAT_VERSION,
        "tokens": [[base64.b64encode(t).decode("ascii"), data.vocab[t]] for t in tokens],
        "merges": [[index[a], index[b]] for a, b in data.merges],
        "special_tokens": data.special_tokens,
    }
    atomic_write_bytes(path, json.dumps(doc, separators=(",", ":")).encode("utf-8"))


def read_koi_file(path: str | Path) -> BPEData:
    path = Path(path)
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != KOI_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise TokenizerFileError(path, "format", f"expected {KOI_FORMAT!r}, got {found!r}")
    if doc.get("version") != KOI_FORMAT_VERSION:
        raise TokenizerFileError(path, "version", f"expected {KOI_FORMAT_VERSION}, got {doc.get('version')!r}")
    try:
        tokens = [(base64.b64decode(t, validate=True), int(i)) for t, i in doc["tokens"]]
        merges = [(tokens[a][0], tokens[b][0]) for a, b in doc["merges"]]
        special = {str(k): int(v) for k, v in doc.get("special_tokens", {}).items()}
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise TokenizerFileError(path, "tokens/merges", f"malformed entry ({exc!r})") from None
    vocab = dict(tokens)
    _check_bytes(path, vocab)
    _check_merges(path, vocab, merges)
    return BPEData(vocab, merges, special)


def read_any(path: str | Path) -> BPEData:
    """Guess the format: a folder of GPT-2 files, a Koi or HF JSON, or a tiktoken rank file."""
    path = Path(path)
    if path.is_dir():
        for vocab_name, merges_name in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (path / vocab_name).exists() and (path / merges_name).exists():
                return read_gpt2_files(path / vocab_name, path / merges_name)
        if (path / "tokenizer.json").exists():
            return read_hf_json(path / "tokenizer.json")
        raise TokenizerFileError(path, "folder", "expected vocab.json + merges.txt, encoder.json + vocab.bpe, or tokenizer.json")
    if not path.exists():
        raise TokenizerFileError(path, "file", "not found")
    if path.suffix == ".json":
        doc = _read_json(path)
        if isinstance(doc, dict) and doc.get("format") == KOI_FORMAT:
            return read_koi_file(path)
        return read_hf_json(path)
    return read_tiktoken_file(path)
