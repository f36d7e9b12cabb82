"""Turn the user's inputs (paths, globs, fsspec URLs) into files and documents."""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from pathlib import Path

from .errors import TokenizerFileError


def is_url(path: str) -> bool:
    return "://" in path


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Expand globs in order; a pattern that matches nothing is an error, not a silent skip."""
    files: list[str] = []
    for pattern in patterns:
        if is_url(pattern):
            fs, _, matches = _fsspec().get_fs_token_paths(pattern)
            matches = [fs.unstrip_protocol(m) for m in matches]
        else:
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            matches = [m for m in matches if Path(m).is_file()] if glob.has_magic(pattern) else matches
        if not matches:
            raise TokenizerFileError(pattern, "input", "expected at least one file, the pattern matched none")
        files.extend(matches)
    return files


def _fsspec():
    try:
        import fsspec
    except ImportError:
        raise ImportError("reading URLs needs fsspec: pip install 'koi-tokenizer[remote]'") from None
    return fsspec


def read_text(path: str) -> str:
    try:
        if is_url(path):
            with _fsspec().open(path, "rt", encoding="utf-8") as f:
                return f.read()
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenizerFileError(path, "file", "not found") from None
    except UnicodeDecodeError as exc:
        raise TokenizerFileError(path, f"byte {exc.start}", "expected UTF-8 text") from None


def file_size(path: str) -> int:
    if is_url(path):
        return int(_fsspec().core.url_to_fs(path)[0].size(path) or 0)
    return Path(path).stat().st_size


def split_documents(text: str, separator: str | None) -> Iterator[str]:
    """Documents of one file: split on ``separator`` (whole file if None), blank ones dropped."""
    pieces = text.split(separator) if separator else [text]
    for piece in pieces:
        piece = piece.strip("\n")
        if piece.strip():
            yield piece
