"""The JSON Schema and the typed config describe the same thing (the nox `schema` session)."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import jsonschema
import pytest

from koi_train.config import RunConfig, load_dict, schema
from koi_train.config.load import config_to_dict

REPO = Path(__file__).resolve().parents[3]


PACKAGED = REPO / "packages" / "koi-train" / "src" / "koi_train" / "config" / "run-config.schema.json"


def test_packaged_schema_is_a_byte_copy_of_schemas():
    """The wheel and sdist need a real file (a symlink out of the package breaks `python -m build`); it must not drift."""
    assert not PACKAGED.is_symlink(), f"{PACKAGED} must be a file, not a symlink"
    assert PACKAGED.read_bytes() == (REPO / "schemas" / "run-config.schema.json").read_bytes(), (
        f"{PACKAGED} differs from schemas/run-config.schema.json; copy it: cp schemas/run-config.schema.json {PACKAGED.relative_to(REPO)}")


def test_schema_file_is_the_packaged_one_and_valid():
    on_disk = json.loads((REPO / "schemas" / "run-config.schema.json").read_text())
    assert on_disk == schema()
    jsonschema.Draft202012Validator.check_schema(on_disk)
    assert on_disk["$schema"].endswith("2020-12/schema")


def _walk(node: dict, path: str = ""):
    for key, sub in node.get("properties", {}).items():
        yield f"{path}{key}", sub
        if "properties" in sub:
            yield from _walk(sub, f"{path}{key}.")


def test_every_key_has_a_description_and_a_default():
    for path, sub in _walk(schema()):
        assert sub.get("description"), f"{path} has no description"
        assert "default" in sub, f"{path} has no default"
        jsonschema.validate(sub["default"], {k: v for k, v in sub.items() if k != "default"})


def _dataclass_of(hint):
    options = typing.get_args(hint) or (hint,)
    return next((o for o in options if dataclasses.is_dataclass(o)), None)


def _compare(cls, node: dict, path: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) == set(node["properties"]), f"{path or 'top level'}: dataclass and schema keys differ"
    hints = typing.get_type_hints(cls)
    for name, sub in node["properties"].items():
        nested = _dataclass_of(hints[name])
        if nested is not None and "properties" in sub:
            _compare(nested, sub, f"{path}{name}.")


def test_dataclasses_mirror_schema_keys():
    _compare(RunConfig, schema(), "")


def test_dataclass_defaults_equal_schema_defaults():
    resolved = config_to_dict(load_dict({}))
    assert resolved["data"]["prepare"] is None
    resolved["data"]["prepare"] = config_to_dict(load_dict({"data": {"prepare": {}}}))["data"]["prepare"]
    for path, sub in _walk(schema()):
        if "properties" in sub and sub["default"] in ({}, None):
            continue
        value = resolved
        for part in path.split("."):
            value = value[part]
        assert value == sub["default"], f"{path}: dataclass default {value!r} != schema default {sub['default']!r}"


def test_prepare_defaults_apply_inside_an_object():
    cfg = load_dict({"data": {"prepare": {}}})
    props = schema()["properties"]["data"]["properties"]["prepare"]["properties"]
    assert cfg.data.prepare.vocab_size == props["vocab_size"]["default"]
    assert list(cfg.data.prepare.text) == props["text"]["default"]


@pytest.mark.parametrize("path", sorted((REPO / "packages" / "koi-train" / "src" / "koi_train" / "configs").glob("*.json")))
def test_shipped_configs_validate(path):
    load_dict(json.loads(path.read_text()), source=str(path))


def test_every_config_in_the_readmes_loads():
    """A user copies these blocks: each must pass the schema and the typed config, as `koi-train run` would read it."""
    import re

    blocks = []
    for readme in (REPO / "README.md", REPO / "packages" / "koi-train" / "README.md"):
        for text in re.findall(r"```json\n(.*?)```", readme.read_text(), re.S):
            blocks.append((readme.name, json.loads(text)))
    configs = [(name, block) for name, block in blocks if {"model", "train"} & set(block)]
    assert configs, "no run config found in the READMEs"
    for name, block in configs:
        load_dict(block, source=f"a config block of {name}")
