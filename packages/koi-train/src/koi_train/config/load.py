"""Read, override, validate and type a run config.

Validation is the JSON Schema's job; this module turns jsonschema's findings into one sentence
(`train.lr: expected number > 0, got "fast"`) and the validated dict into `RunConfig`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from ..versions import migrate_config
from .errors import ConfigError
from .types import RunConfig


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(resources.files("koi_train.config").joinpath("run-config.schema.json").read_text("utf-8"))


def _json_path(parts: typing.Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


TYPE_NAMES = {"number": "number", "integer": "integer", "string": "string", "boolean": "true or false",
              "object": "object", "array": "list", "null": "null"}
BOUNDS = (("exclusiveMinimum", ">"), ("minimum", ">="), ("exclusiveMaximum", "<"), ("maximum", "<="))


def describe_expectation(s: dict[str, Any]) -> str:
    """What a schema node accepts, in words: 'number > 0', 'one of "a", "b"', 'list of 2 items'."""
    if "enum" in s:
        return "one of " + ", ".join(json.dumps(x) for x in s["enum"])
    kinds = s.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    main = [k for k in kinds if k != "null"]
    words = " or ".join(TYPE_NAMES.get(k, k) for k in main) or "value"
    bounds = [f"{sign} {s[key]}" for key, sign in BOUNDS if key in s]
    if bounds:
        words += " " + " and ".join(bounds)
    if "pattern" in s:
        words += f" matching {s['pattern']}"
    if "minLength" in s:
        words += f" of at least {s['minLength']} characters"
    if "minItems" in s or "maxItems" in s:
        lo, hi = s.get("minItems"), s.get("maxItems")
        words += f" of exactly {lo} items" if lo == hi else f" of {lo or 0} to {hi if hi is not None else 'any'} items"
    if "null" in kinds:
        words += " or null"
    return words


def _to_error(error: jsonschema.ValidationError, source: str) -> ConfigError:
    path = _json_path(error.absolute_path)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        key = _json_path([*error.absolute_path, extra[0]]) if extra else path
        expected = ("one of " + ", ".join(known)) if known else "no other keys"
        return ConfigError(source, key, f"unknown key; expected {expected}")
    return ConfigError(source, path, f"expected {describe_expectation(error.schema)}, got {json.dumps(error.instance)}")


def validate(raw: Any, source: str = "") -> None:
    """Raise `ConfigError` for the most relevant problem of ``raw``, if any."""
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        raise _to_error(error, source)


def _build(cls: type, raw: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        kwargs[f.name] = _coerce(hints[f.name], raw[f.name])
    return cls(**kwargs)


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else (hint,)
    for option in options:
        if dataclasses.is_dataclass(option):
            return _build(option, value)
        if typing.get_origin(option) is tuple:
            return tuple(value)
        if option is float and isinstance(value, int):
            return float(value)
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.path=value`` -> (["key", "path"], value); the value is JSON when it parses as JSON."""
    if "=" not in text:
        raise ConfigError("--set", text, "expected key.path=value")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", ".".join(keys), f"{key} is not an object")
        node[keys[-1]] = value
    return raw


def load_dict(raw: Any, *, source: str = "", overrides: typing.Sequence[str] = ()) -> RunConfig:
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(source, "", f"expected object, got {json.dumps(raw)}")
        raw = apply_overrides(raw, overrides)
    if isinstance(raw, dict):  # an older layout is upgraded before it is checked against today's schema
        raw = migrate_config(raw, lambda field, problem: ConfigError(source, field, problem))
    validate(raw, source)
    return _build(RunConfig, raw)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"line {exc.lineno} column {exc.colno}", f"expected JSON ({exc.msg})") from None


def load_config(path: str | Path, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a JSON config file, apply ``--set`` overrides, validate and return the typed config."""
    return load_dict(read_config_file(path), source=str(path), overrides=overrides)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The fully resolved config (every default filled in), as saved next to a run."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
