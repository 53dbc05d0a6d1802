"""The manifest of a prepared directory (``prepare.json``) and the checks loaders make against it.

Kept free of datatrove and torch: the MDS and BlendCorpus loaders import it. :mod:`.finalize` writes
the manifest; see there for what it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import xxhash

from ..errors import DataError

MANIFEST = "prepare.json"
MASK = (1 << 128) - 1
"""Content hashes are summed modulo 2**128."""


def content_hash(buffer: bytes | memoryview) -> int:
    """xxh3-128 of one sample's bytes, as an int."""
    return xxhash.xxh3_128_intdigest(buffer)


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is corrupt ({e}). Rerun `titan-recipes prepare` into this directory to rewrite it.") from None


def check_prepared_mds(directory: str | Path, index_sha256: str, where: str) -> str | None:
    """The content fingerprint of a prepared MDS directory (None if it was not prepared), after checking
    that its ``index.json`` (sha256 of ``json.dumps(index, sort_keys=True)``) is the one the preparation wrote; DataError naming both files otherwise."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("kind") != "mds":
        return None
    digest = index_sha256
    if digest != manifest.get("index_sha256"):
        raise DataError(
            f"{Path(directory) / 'index.json'} (from {where}) is not the index that `titan-recipes prepare` wrote "
            f"({Path(directory) / MANIFEST} records sha256 {manifest.get('index_sha256')}, the file has {digest}): "
            f"the dataset was changed or rewritten by another tool after preparation. Rerun the preparation "
            f"(it resumes) or remove {MANIFEST} if the new index is intended."
        )
    return manifest["content_fingerprint"]


def check_prepared_blend(file_list: str | Path, prefix_digest: dict[str, str]) -> str | None:
    """Same for a BlendCorpus file list written by prepare: each prefix's document lengths must match."""
    manifest = read_manifest(Path(file_list).parent)
    if manifest is None or manifest.get("kind") != "blendcorpus" or Path(file_list).name != manifest.get("file_list"):
        return None
    for name, digest in prefix_digest.items():
        expected = manifest.get("prefix_digests", {}).get(name)
        if expected is not None and expected != digest:
            raise DataError(
                f"{Path(file_list).parent / name}.idx does not match {Path(file_list).parent / MANIFEST} (documents "
                f"changed after preparation). Rerun `titan-recipes prepare blendcorpus` for this directory."
            )
    return manifest["content_fingerprint"]
