"""The MDS data format shared by the writer and the loader: column, dtype, file names, hashes, index.json.

A dataset written here is a streaming MDS directory: ``index.json`` (streaming's, version 2) with one
column :data:`TOKENS_COLUMN` = ``ndarray:<TOKEN_DTYPE>:<seq_len + 1>`` and an :data:`SHARD_HASH` per
shard file, plus :data:`CONVERSION_FILE` beside it recording how it was made.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ...errors import DataError

TOKENS_COLUMN = "tokens"
TOKEN_DTYPE = "int32"
CONVERSION_FILE = "conversion.json"
"""Written by :func:`~titan_recipes.data.mds.writer.write_mds` beside streaming's ``index.json``; streaming ignores it."""
SHARD_HASH = "xxh64"


def read_index(directory: str | Path, setting: str | None = None) -> dict[str, Any]:
    """``index.json`` of an MDS directory, or DataError naming the file (and the setting, if given)."""
    path = Path(directory) / "index.json"
    where = f" (from {setting})" if setting else ""
    if not path.is_file():
        hint = "" if Path(directory).is_dir() else " The directory does not exist."
        raise DataError(
            f"MDS index not found: {path}{where}.{hint} Point it at a directory written by "
            f"scripts/mds_convert.py (or streaming's MDSWriter)."
        )
    try:
        index = json.loads(path.read_text())
        version, shards = index["version"], index["shards"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise DataError(
            f"MDS index {path}{where} is corrupt or not a streaming index ({type(e).__name__}: {e}). "
            f"Re-run the conversion (scripts/mds_convert.py --overwrite) or restore the file."
        ) from None
    if version != 2:
        raise DataError(f"MDS index {path}{where}: unsupported version {version!r} (streaming writes 2).")
    if not isinstance(shards, list):
        raise DataError(f"MDS index {path}{where} is corrupt: 'shards' is not a list.")
    return index


def fixed_sample_len(encoding: str) -> int | None:
    """Tokens per sample of a fixed-shape ndarray column encoding (``ndarray:int32:17`` -> 17), else None."""
    parts = encoding.split(":")
    if len(parts) == 3 and parts[2].isdigit():
        return int(parts[2])
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_sha256(tokenizer_dir: str | Path) -> str | None:
    """Hash of ``tokenizer.json`` in an HF assets directory (None if there is none)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    return sha256_file(path) if path.is_file() else None


def converter_windows_seq_len(directory: str | Path, fixed_len: int | None, where: str) -> int | None:
    """``L`` when ``directory`` holds windows written by scripts/mds_convert.py for seq_len ``L`` (its
    ``conversion.json`` says so and the token encoding's fixed length ``fixed_len`` is ``L + 1``):
    consecutive samples then overlap by one token. None otherwise. An unreadable ``conversion.json`` is
    a DataError naming ``where``: guessing would duplicate or drop tokens."""
    path = Path(directory) / CONVERSION_FILE
    if fixed_len is None or not path.is_file():
        return None
    try:
        seq_len = json.loads(path.read_text()).get("seq_len")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise DataError(
            f"{where}: {path} is unreadable ({type(e).__name__}: {e}); it says whether the samples are "
            f"overlapping windows. Restore it, or delete it if the data was not written by scripts/mds_convert.py."
        ) from None
    return seq_len if isinstance(seq_len, int) and seq_len + 1 == fixed_len else None
