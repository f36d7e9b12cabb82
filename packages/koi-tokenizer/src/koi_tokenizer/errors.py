"""The two ways tokenizer input can be wrong: a bad tokenizer file, or a bad token shard.

Both carry the file name in their message so a user sees which file to fix without a traceback.
"""

from __future__ import annotations


class TokenizerFileError(ValueError):
    """A vocabulary, merges, rank or tokenizer JSON file that cannot be used."""

    def __init__(self, path: object, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")
        self.path = str(path)
        self.field = field


class ShardError(ValueError):
    """A token shard whose header or size does not match what the format promises."""

    def __init__(self, path: object, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")
        self.path = str(path)
        self.field = field


class DisallowedSpecialTokenError(ValueError):
    """Text contains a special token the caller did not allow (tiktoken's default behaviour)."""
