"""The koi-tokenizer command: its subcommands work, and bad input is one line with exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from koi_tokenizer.cli import build_parser, main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "koi_tokenizer.cli", *args], capture_output=True, text=True)


def test_frozen_subcommands_and_flags():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    flags = {name: sorted(opt for a in p._actions for opt in a.option_strings) for name, p in sub.choices.items()}
    assert flags == {
        "train": ["--help", "--output", "--separator", "--special", "--vocab-size", "-h", "-o"],
        "encode": ["--allow-special", "--help", "--tokenizer", "-h", "-t"],
        "decode": ["--help", "--tokenizer", "-h", "-t"],
        "info": ["--help", "-h"],
        "shard": ["--help", "--output", "--prefix", "--quiet", "--separator", "--shard-tokens", "--tokenizer",
                  "--val-fraction", "--workers", "-h", "-o", "-t"],
    }


def test_encode_decode_info(tmp_path, data_dir, capsys):
    gpt2 = str(data_dir / "gpt2")
    text = tmp_path / "t.txt"
    text.write_text("Hello world, it's Koi.")
    assert main(["encode", "-t", gpt2, str(text)]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids[:2] == [15496, 995]  # "Hello", " world" in GPT-2
    assert main(["decode", "-t", gpt2, json.dumps(ids)]) == 0
    assert capsys.readouterr().out == "Hello world, it's Koi."
    assert main(["info", gpt2]) == 0
    assert json.loads(capsys.readouterr().out)["vocab_size"] == 50257


def test_train_then_shard(tmp_path, data_dir, capsys):
    corpus = str(data_dir / "corpus" / "pydocs-val.txt")
    assert main(["train", corpus, "--vocab-size", "600", "-o", str(tmp_path / "bpe.json")]) == 0
    capsys.readouterr()
    shard_args = ["shard", corpus, "-t", str(tmp_path / "bpe.json"), "-o", str(tmp_path / "shards"), "--val-fraction", "0.1"]
    assert main([*shard_args, "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["train_tokens"] > 0 and report["val_tokens"] > 0
    assert main(["info", report["train_shards"][0]]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == report["train_tokens"]


@pytest.mark.parametrize("args,needle", [
    (["info", "/nonexistent/vocab"], "not found"),
    (["encode", "-t", "/nonexistent/vocab"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and needle in result.stderr


def test_corrupt_vocab_file_exit_2(tmp_path, data_dir):
    (tmp_path / "vocab.json").write_text('{"a": "not an id"}')
    (tmp_path / "merges.txt").write_bytes((data_dir / "gpt2" / "merges.txt").read_bytes())
    result = run("info", str(tmp_path))
    assert result.returncode == 2
    assert "vocab.json: contents: expected a JSON object of token -> integer id" in result.stderr
