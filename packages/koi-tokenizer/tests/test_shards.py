"""Shards follow llm.c's layout, round-trip exactly, and reject damaged files by name."""

from __future__ import annotations

import numpy as np
import pytest

from koi_tokenizer import ShardError, read_shard, shard_files, write_shard
from koi_tokenizer.shards import HEADER_BYTES, MAGIC_UINT16, MAGIC_UINT32


@pytest.mark.parametrize("dtype,magic", [(np.uint16, MAGIC_UINT16), (np.uint32, MAGIC_UINT32)])
def test_round_trip_and_header(tmp_path, dtype, magic):
    tokens = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, size=12_345).astype(dtype)
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert list(header[:3]) == [magic, 1, len(tokens)]
    assert path.stat().st_size == HEADER_BYTES + tokens.nbytes
    np.testing.assert_array_equal(read_shard(path), tokens)
    np.testing.assert_array_equal(read_shard(path, mmap=False), tokens)


def _corrupt(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = np.int32(value).tobytes()
    path.write_bytes(bytes(data))


def test_damaged_shards_name_file_and_field(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100, dtype=np.uint16))
    _corrupt(path, 0, 1234)
    with pytest.raises(ShardError, match=r"s\.bin: header\.magic: expected 20240520"):
        read_shard(path)
    write_shard(path, np.arange(100, dtype=np.uint16))
    _corrupt(path, 4, 7)
    with pytest.raises(ShardError, match=r"header\.version: expected 1, got 7"):
        read_shard(path)
    write_shard(path, np.arange(100, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match=r"header\.token_count: 100 tokens means"):
        read_shard(path)
    path.write_bytes(b"short")
    with pytest.raises(ShardError, match="header"):
        read_shard(path)
    with pytest.raises(ShardError, match="not found"):
        read_shard(tmp_path / "missing.bin")


def test_sharding_real_text(tmp_path, data_dir, gpt2_tokenizer):
    source = data_dir / "corpus" / "pydocs-val.txt"
    result = shard_files([str(source)], gpt2_tokenizer, tmp_path, shard_tokens=200_000, val_fraction=0.1, show_progress=False)
    text = source.read_text()
    docs = [d.strip("\n") for d in text.split("<|endoftext|>") if d.strip()]
    assert result.documents == len(docs)
    assert len(result.train) == -(-result.train_tokens // 200_000)
    train = np.concatenate([read_shard(p) for p in result.train])
    val = np.concatenate([read_shard(p) for p in result.val])
    assert all(len(read_shard(p)) == 200_000 for p in result.train[:-1])
    # Every document is preceded by EOT; the split is by document index (every 10th to val).
    assert int((train == 50256).sum()) + int((val == 50256).sum()) == len(docs)
    assert int((val == 50256).sum()) == len(docs[9::10])
    first_val_doc = gpt2_tokenizer.decode(val[1 : np.flatnonzero(val == 50256)[1]].tolist())
    assert first_val_doc == docs[9]
    assert not list(tmp_path.glob(".*.tmp"))


def test_glob_matching_nothing_is_an_error(tmp_path, gpt2_tokenizer):
    from koi_tokenizer import TokenizerFileError

    with pytest.raises(TokenizerFileError, match="matched none"):
        shard_files([str(tmp_path / "*.txt")], gpt2_tokenizer, tmp_path / "out", show_progress=False)


def test_parallel_sharding_is_identical_to_serial(tmp_path, data_dir, gpt2_tokenizer, monkeypatch):
    import koi_tokenizer.parallel as parallel

    monkeypatch.setattr(parallel, "WARM_UP_CHARS", 200_000)  # fork well inside this 1.9 MB file
    source = [str(data_dir / "corpus" / "pydocs-val.txt")]
    serial = shard_files(source, gpt2_tokenizer, tmp_path / "one", shard_tokens=150_000, val_fraction=0.05, workers=1,
                         show_progress=False)
    parallel = shard_files(source, gpt2_tokenizer, tmp_path / "two", shard_tokens=150_000, val_fraction=0.05, workers=2,
                           show_progress=False)
    assert [p.read_bytes() for p in serial.train + serial.val] == [p.read_bytes() for p in parallel.train + parallel.val]


def test_shards_from_fsspec_urls(tmp_path, monkeypatch):
    pytest.importorskip("fsspec")
    import fsspec

    from koi_tokenizer import expand_inputs

    monkeypatch.setenv("KOI_CACHE", str(tmp_path / "cache"))
    tokens = np.arange(5000, dtype=np.uint16)
    fs = fsspec.filesystem("memory")
    from koi_tokenizer.shards import encode_shard

    for k in range(2):
        with fs.open(f"/koi-test/data_train_{k:06d}.bin", "wb") as f:
            f.write(encode_shard(tokens + k))
    urls = expand_inputs(["memory://koi-test/data_train_*.bin"])
    assert [u.rsplit("/", 1)[-1] for u in urls] == ["data_train_000000.bin", "data_train_000001.bin"]
    np.testing.assert_array_equal(read_shard(urls[1]), tokens + 1)
    with fs.open("/koi-test/bad.bin", "wb") as f:
        f.write(b"\x00" * 1100)
    with pytest.raises(ShardError, match=r"memory://koi-test/bad\.bin: header\.magic"):
        read_shard("memory://koi-test/bad.bin")
