"""Format versions of what koi-train writes (checkpoints, resolved configs) and the migrations between them.

A file records the version of the layout it was written in. Reading one walks it up one version
at a time through a registry of migrations (N -> N + 1), so a change of layout is one new entry
here and one test, and old runs keep resuming. A file newer than this code is refused, by name.
This module imports nothing of koi-train (config and checkpoint code both import it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CHECKPOINT_FORMAT = 1
CONFIG_FORMAT = 1
FORMAT_KEY = "format_version"

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _checkpoint_0_to_1(state: dict[str, Any]) -> dict[str, Any]:
    """Version 0: checkpoints of koi-train 0.1.0, written before they carried a version; the layout is the same."""
    return state


CHECKPOINT_MIGRATIONS: dict[int, Migration] = {0: _checkpoint_0_to_1}
# Configs without the key are taken as current (hand-written configs leave it out), so no migration starts at 0.
CONFIG_MIGRATIONS: dict[int, Migration] = {}


def migrate(data: dict[str, Any], *, current: int, migrations: dict[int, Migration], missing_means: int,
            what: str, error: Callable[[str, str], Exception]) -> dict[str, Any]:
    """``data`` upgraded to version ``current``, stamped with it; ``error(field, problem)`` builds the exception to raise."""
    found = data.get(FORMAT_KEY, missing_means)
    if not isinstance(found, int) or isinstance(found, bool) or found < 0:
        raise error(FORMAT_KEY, f"expected a non-negative integer, got {found!r}")
    if found > current:
        raise error(FORMAT_KEY, f"expected {current} or older, got {found}: this {what} was written by a newer koi-train; "
                    "upgrade koi-train")
    for version in range(found, current):
        if version not in migrations:
            raise error(FORMAT_KEY, f"no migration from {what} format {version} to {version + 1}; it is too old for this koi-train")
        data = migrations[version](dict(data))
    return {**data, FORMAT_KEY: current}


def migrate_checkpoint(state: dict[str, Any], error: Callable[[str, str], Exception]) -> dict[str, Any]:
    return migrate(state, current=CHECKPOINT_FORMAT, migrations=CHECKPOINT_MIGRATIONS, missing_means=0, what="checkpoint", error=error)


def migrate_config(raw: dict[str, Any], error: Callable[[str, str], Exception]) -> dict[str, Any]:
    return migrate(raw, current=CONFIG_FORMAT, migrations=CONFIG_MIGRATIONS, missing_means=CONFIG_FORMAT, what="config", error=error)
