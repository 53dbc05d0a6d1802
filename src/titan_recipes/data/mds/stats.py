"""Counting an MDS directory (local or remote) from its ``index.json`` and ``conversion.json``: :func:`mds_stats`."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import DataError
from .compat import remote_error, import_streaming
from .format import CONVERSION_FILE, TOKENS_COLUMN, fixed_sample_len, read_index

logger = logging.getLogger(__name__)


@dataclass
class MdsStats:
    path: str
    shards: int
    """Shard files (objects besides index.json and conversion.json): one per shard, raw or compressed."""
    samples: int
    raw_bytes: int
    """Uncompressed shard bytes (what a reader needs on disk after decompression)."""
    zip_bytes: int | None
    """Compressed shard bytes; None when the shards are not compressed."""
    compression: str | None
    tokens_per_sample: int | None
    """None when the column has no fixed shape and there is no conversion.json."""

    @property
    def tokens(self) -> int | None:
        """Tokens stored (``samples * tokens_per_sample``; windows overlap by one token)."""
        return None if self.tokens_per_sample is None else self.samples * self.tokens_per_sample


def mds_stats(directory: str | Path) -> MdsStats:
    """Counts from an MDS directory's ``index.json`` (and ``conversion.json``, if present).

    ``directory`` is local, or remote (``"s3://bucket/prefix"``, endpoint from ``S3_ENDPOINT_URL``;
    any scheme streaming's ``CloudDownloader`` knows): then only ``index.json`` (and
    ``conversion.json``, if there) are downloaded, into a temporary directory removed afterwards.
    """
    if "://" in str(directory):
        remote = str(directory).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="mds_stats_") as tmp:
            _download_metadata(remote, Path(tmp))
            stats = _local_stats(Path(tmp))
        stats.path = remote
        return stats
    return _local_stats(Path(directory))


def _download_metadata(remote: str, local: Path) -> None:
    """``index.json`` (required) and ``conversion.json`` (optional) of ``remote`` into ``local``."""
    import_streaming()
    from streaming.base.storage.download import CloudDownloader

    try:
        CloudDownloader.direct_download(f"{remote}/index.json", str(local / "index.json"))
    except Exception as e:  # boto3/botocore and the other clients raise many types
        raise DataError(remote_error("download index.json of", remote, e)) from e
    try:
        CloudDownloader.direct_download(f"{remote}/{CONVERSION_FILE}", str(local / CONVERSION_FILE))
    except Exception as e:
        logger.info("No %s at %s (%s)", CONVERSION_FILE, remote, type(e).__name__)


def _local_stats(directory: Path) -> MdsStats:
    shards = read_index(directory)["shards"]
    raw = sum(s["raw_data"]["bytes"] for s in shards)
    zips = [s["zip_data"]["bytes"] for s in shards if s.get("zip_data")]
    compressions = {s.get("compression") for s in shards}
    tokens_per_sample = None
    for s in shards:
        if TOKENS_COLUMN in s.get("column_names", []):
            tokens_per_sample = fixed_sample_len(s["column_encodings"][s["column_names"].index(TOKENS_COLUMN)])
            break
    conversion = directory / CONVERSION_FILE
    if tokens_per_sample is None and conversion.is_file():
        tokens_per_sample = json.loads(conversion.read_text())["seq_len"] + 1
    return MdsStats(
        path=str(directory),
        shards=len(shards),
        samples=sum(s["samples"] for s in shards),
        raw_bytes=raw,
        zip_bytes=sum(zips) if zips else None,
        compression=",".join(sorted(str(c) for c in compressions)) if compressions != {None} else None,
        tokens_per_sample=tokens_per_sample,
    )
