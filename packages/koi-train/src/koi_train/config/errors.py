"""Errors a user can fix by editing a config: each names the file, the JSON path and the problem."""

from __future__ import annotations


class ConfigError(ValueError):
    def __init__(self, source: str, path: str, problem: str) -> None:
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{path or '(top level)'}: {problem}")
        self.source, self.path, self.problem = source, path, problem
