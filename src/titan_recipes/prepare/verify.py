"""``titan-recipes prepare verify DIR``: the content fingerprint recomputed from the data on disk.

It reads every sample (MDS: every window through streaming's reader; BlendCorpus: every document of
every prefix in the file list) and sums their content hashes as the tasks did (:mod:`.tasks`), so two
preparations of the same inputs can be compared, and a dataset can be checked against its
``prepare.json`` after a copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .manifest import MASK, content_hash, read_manifest


def mds_fingerprint(directory: Path) -> str:
    """Compressed shards are decompressed into a temporary directory: verifying leaves the dataset as it was."""
    import json
    import tempfile

    from ..data.mds.compat import import_streaming

    import_streaming()
    from streaming.base.compression import decompress
    from streaming.base.format import reader_from_json

    index = json.loads((directory / "index.json").read_text())
    total = 0
    with tempfile.TemporaryDirectory(prefix="prepare_verify_") as tmp:
        for info in index["shards"]:
            root = directory
            raw = directory / info["raw_data"]["basename"]
            if not raw.is_file() and info.get("zip_data"):
                root = Path(tmp)
                raw = root / info["raw_data"]["basename"]
                raw.parent.mkdir(parents=True, exist_ok=True)
                raw.write_bytes(decompress(info["compression"], (directory / info["zip_data"]["basename"]).read_bytes()))
            reader = reader_from_json(str(root), None, info)
            for k in range(reader.samples):
                total += content_hash(np.ascontiguousarray(reader[k]["tokens"], dtype=np.int32).tobytes())
            if root != directory:
                raw.unlink()
    return f"{total & MASK:032x}"


def blend_fingerprint(directory: Path, manifest: dict) -> str:
    from ..data.blendcorpus.megatron_format import MegatronShard

    total = 0
    for task in manifest["tasks"]:
        for name in task["outputs"]:
            shard = MegatronShard(str(directory / name))
            for k in range(len(shard)):
                total += content_hash(np.ascontiguousarray(shard[k]).tobytes())
    return f"{total & MASK:032x}"


def verify(directory: str | Path) -> tuple[str, str]:
    """(recorded, recomputed) content fingerprints of a prepared directory."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise DataError(f"{directory} has no prepare.json: it was not written by `titan-recipes prepare`, or the "
                        f"preparation has not finished (rerun the same command).")
    if manifest["kind"] == "mds":
        return manifest["content_fingerprint"], mds_fingerprint(directory)
    if manifest["kind"] == "blendcorpus":
        return manifest["content_fingerprint"], blend_fingerprint(directory, manifest)
    from .mixture_fingerprint import index_fingerprint

    return manifest["content_fingerprint"], index_fingerprint(directory / manifest["index_dir"], manifest["dataset"])
