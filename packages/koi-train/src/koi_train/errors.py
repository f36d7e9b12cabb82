"""The errors koi-train reports as one line and exit code 2: each names a file or config path."""

from __future__ import annotations

from .config.errors import ConfigError


class CheckpointError(ValueError):
    def __init__(self, path: object, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")


class ExportError(ValueError):
    def __init__(self, path: object, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")


__all__ = ["CheckpointError", "ConfigError", "ExportError"]
