"""Checks that corrupt data on disk is an error naming the file, never silently trained on.

What each format can detect (issue 14):

* **MDS** (:func:`check_mds_shard`, on a shard's first use in each process): the raw shard's size
  against ``index.json``, its header (sample count, offset table: monotone, starting after the table,
  ending at the file size, one fixed sample size for fixed-size columns) and, with the stream's
  ``validate_hash`` set, the whole file's hash against ``index.json`` (``scripts/mds_convert.py``
  records ``xxh64``; compressed shards are also checked before decompression). Without a hash, a
  changed byte inside the token payload keeps the file's structure and can only be caught when it
  makes a token id negative or >= the tokenizer's vocabulary (:func:`check_token_ids`); a change
  that leaves the id in range is undetectable, so set ``validate_hash = "xxh64"`` on streams whose
  storage you do not trust.
* **Megatron .bin/.idx** (:class:`titan_recipes.data.blendcorpus.megatron_format.MegatronShard`): the ``.bin``
  size against the ``.idx`` (truncated or extended), the pointer table against the lengths, and token
  ids against the vocabulary. The format has no checksum; an in-range changed id is undetectable.
* **Mixture** (:mod:`titan_recipes.data.mixture.index`): each registered file's size and mtime are
  recorded at registration and compared when a document is read; the DuckDB index must exist.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import DataError

VALIDATE_HASH_HINT = (
    "A changed byte that keeps a token id in range cannot be detected without a hash: set "
    "validate_hash = \"xxh64\" on the MDS stream to check every shard against index.json."
)


def check_token_ids(tokens: np.ndarray, vocab_size: int | None, where: str, fix: str) -> None:
    """DataError when a token id read from disk is negative or >= ``vocab_size`` (None: unchecked).

    Such an id cannot come from the tokenizer: the file is corrupt or was tokenized with another
    vocabulary. Unchecked, it indexes past the embedding (IndexError on CPU, a device-side assert on
    GPU) or, below the model's larger vocabulary, trains on garbage."""
    if vocab_size is None or not len(tokens):
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = np.flatnonzero((tokens < 0) | (tokens >= vocab_size))
        raise DataError(
            f"{where}: token id {int(tokens[bad[0]])} at position {int(bad[0])} ({len(bad)} id(s) outside "
            f"0..{vocab_size - 1}; the tokenizer has {vocab_size} tokens). The data is corrupt or was "
            f"tokenized with another tokenizer. {fix}"
        )


def check_mds_shard(raw_path: str, shard: Any, validate_hash: str | None, setting: str, remote: str | None = None) -> None:
    """Check one local raw MDS shard file (``streaming``'s MDSReader ``shard``) before its samples are read.

    Layout (streaming's MDS format, version 2; ``MDSWriter.encode_joint_shard``): uint32 ``n``; uint32
    offsets ``[n + 1]``, the byte position of each sample and then the end of the file; the writer's
    config as JSON; the samples. ``setting`` names the stream's config key in messages; ``remote`` is
    set when ``raw_path`` is a cached download. Raises DataError naming the file, what differs and the
    fix. Cost: the header only (a few KB), or the whole file with ``validate_hash``."""
    if remote:
        fix = (f"It is the cached copy of a shard of {remote}: delete it (and its compressed file, if any) and "
               f"launch again to download it anew; if the remote copy is corrupt too, convert the data again.")
    else:
        fix = (f"Restore the file or re-run the conversion (scripts/mds_convert.py) into {setting}; the "
               f"loader does not skip shards.")
    info = shard.raw_data
    try:
        size = os.path.getsize(raw_path)
        with open(raw_path, "rb") as f:
            head = f.read(4)
            n = int(np.frombuffer(head, np.uint32)[0]) if len(head) == 4 else -1
            offsets = np.frombuffer(f.read(4 * (shard.samples + 1)), np.uint32).astype(np.int64)
            table_end = 4 * (shard.samples + 2)
            config = f.read(int(offsets[0]) - table_end) if len(offsets) and table_end <= offsets[0] <= size else b""
    except FileNotFoundError:
        raise DataError(f"MDS shard file disappeared while training: {raw_path}. {fix}") from None
    if size != info.bytes:
        raise DataError(f"MDS shard {raw_path} has {size} bytes but index.json says {info.bytes}: it is "
                        f"truncated or was modified. {fix}")
    if n != shard.samples:
        raise DataError(f"MDS shard {raw_path} is corrupt: its header says {n} samples, index.json says "
                        f"{shard.samples}. {fix}")
    problem = None
    if len(offsets) != shard.samples + 1:
        problem = f"its offset table is cut short ({len(offsets)} of {shard.samples + 1} entries)"
    elif not table_end <= offsets[0] <= size or offsets[-1] != size:
        problem = (f"its offsets run from {offsets[0]} to {offsets[-1]}, but the samples lie between the header "
                   f"(offset table and config, from byte 0 to at least {table_end}) and the end of the file ({size})")
    elif not _is_json(config):
        problem = (f"its header (the writer's config, bytes {table_end}..{offsets[0]}, where the first sample's "
                   f"offset puts its end) is not JSON")
    elif np.any(np.diff(offsets) < 0):
        problem = f"its offsets decrease at sample {int(np.flatnonzero(np.diff(offsets) < 0)[0])}"
    elif all(shard.column_sizes):
        sample_bytes = int(sum(shard.column_sizes))
        wrong = np.flatnonzero(np.diff(offsets) != sample_bytes)
        if len(wrong):
            problem = (f"sample {int(wrong[0])} spans {int(np.diff(offsets)[wrong[0]])} bytes, but every sample "
                       f"of columns {shard.column_encodings} has {sample_bytes}")
    if problem:
        raise DataError(f"MDS shard {raw_path} is corrupt: {problem}. {fix}")
    if validate_hash:
        _check_hash(raw_path, info, validate_hash, setting, fix)


def _is_json(data: bytes) -> bool:
    import json

    try:
        json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def _check_hash(path: str, info: Any, algo: str, setting: str, fix: str) -> None:
    from .mds.compat import import_streaming

    import_streaming()  # registers streaming without its heavy __init__ (compat.py)
    from streaming.base.hashing import get_hash

    expected = (info.hashes or {}).get(algo)
    if expected is None:
        raise DataError(
            f"validate_hash = '{algo}' is set for {setting}, but index.json has no {algo} hash for {path} "
            f"(it has {sorted(info.hashes or {})}). Use one of those, convert the data again with hashes "
            f"(scripts/mds_convert.py records xxh64), or remove validate_hash."
        )
    with open(path, "rb") as f:
        actual = get_hash(algo, f.read())
    if actual != expected:
        raise DataError(
            f"MDS shard {path} fails its {algo} check (validate_hash): index.json says {expected}, the file "
            f"hashes to {actual}. The file was modified or corrupted after conversion. {fix}"
        )
