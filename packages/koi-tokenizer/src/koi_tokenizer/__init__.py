"""koi-tokenizer: GPT-2-exact byte-level BPE, BPE training, and llm.c token shards.

    from koi_tokenizer import Tokenizer
    tok = Tokenizer.from_gpt2_files("vocab.json", "merges.txt")
    ids = tok.encode("Hello world"); text = tok.decode(ids)
"""

from importlib import metadata

from .atomic import atomic_write_bytes
from .errors import DisallowedSpecialTokenError, ShardError, TokenizerFileError
from .reference import ReferenceBPE
from .sharding import ShardResult, is_val_document, shard_documents, shard_files
from .shards import read_shard, write_shard
from .sources import expand_inputs, is_url, read_text, split_documents
from .tokenizer import EOT_TOKEN, Tokenizer
from .training import train_bpe

try:
    __version__ = metadata.version("koi-tokenizer")  # the one place it is written is pyproject.toml
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [
    "EOT_TOKEN",
    "DisallowedSpecialTokenError",
    "ReferenceBPE",
    "ShardError",
    "ShardResult",
    "Tokenizer",
    "TokenizerFileError",
    "atomic_write_bytes",
    "expand_inputs",
    "is_url",
    "read_shard",
    "read_text",
    "split_documents",
    "is_val_document",
    "shard_documents",
    "shard_files",
    "train_bpe",
    "write_shard",
]
