"""Reading documents from text files: plain, ``.gz`` or ``.zst``; JSONL with a ``text`` field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from ..errors import DataError


def open_text(path: Path):
    """A UTF-8 text file for reading; ``.gz`` is decompressed as it is read, ``.zst`` in memory at once
    (the pinned ``zstd`` module has no streaming reader)."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    if path.name.endswith(".zst"):
        import io

        import zstd

        return io.StringIO(zstd.decompress(path.read_bytes()).decode("utf-8"))
    return open(path, encoding="utf-8")


def iter_jsonl_texts(path: Path, field: str = "text") -> Iterator[str]:
    """The ``field`` (default ``text``) of each non-blank line of a JSONL (.jsonl, .jsonl.gz or
    .jsonl.zst) file, streamed. A line that is not a JSON object with a string ``field`` is a DataError
    naming ``file:line``."""
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(
                    f"{path}:{lineno}: not a JSON object with a '{field}' field ({type(e).__name__}: {e})"
                ) from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: '{field}' must be a string, got {type(text).__name__}")
            yield text
