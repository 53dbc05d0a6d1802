"""Writing MDS: documents -> packed token samples in streaming MDS shards (local or remote); stats."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..common import DataError, iter_jsonl_texts
from .compat import _remote_error, import_streaming

logger = logging.getLogger(__name__)

TOKENS_COLUMN = "tokens"
TOKEN_DTYPE = "int32"
CONVERSION_FILE = "conversion.json"
"""Written by :func:`write_mds` beside streaming's ``index.json``; streaming ignores it."""
SHARD_HASH = "xxh64"


# ---------------------------------------------------------------------------------------------------
# Conversion: JSONL -> MDS
# ---------------------------------------------------------------------------------------------------


iter_documents = iter_jsonl_texts
"""The ``text`` field of each non-blank line of a JSONL (or .jsonl.gz) file, streamed."""


@dataclass
class MdsWriteSummary:
    out: str
    documents: int
    tokens: int
    """Tokens of the packed stream (BOS and EOS included)."""
    samples: int
    tail_tokens: int
    """Tokens at the end of the stream not covered by any window (fewer than ``seq_len + 1`` left)."""
    shards: int
    seq_len: int


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tokenizer_sha256(tokenizer_dir: str | Path) -> str | None:
    """Hash of ``tokenizer.json`` in an HF assets directory (None if there is none)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    return _sha256_file(path) if path.is_file() else None


def write_mds(
    inputs: Sequence[str | Path],
    tokenizer_dir: str | Path,
    seq_len: int,
    out: str | Path,
    *,
    compression: str | None = None,
    size_limit: int | str = "64mb",
    overwrite: bool = False,
    progress: bool = True,
    local_cache: str | Path | None = None,
) -> MdsWriteSummary:
    """Tokenize JSONL documents and write packed samples of ``seq_len + 1`` tokens as MDS into ``out``.

    Documents get BOS and EOS and are packed across files in the order given; sample ``k`` is
    ``tokens[k*seq_len : k*seq_len + seq_len + 1]``. ``compression`` is None or ``"zstd"`` (or
    ``"zstd:<level>"``; any streaming compression works). ``size_limit`` is the uncompressed shard
    size (bytes or ``"64mb"``). ``out`` is a local directory, empty or absent unless ``overwrite``,
    or a remote directory such as ``"s3://bucket/prefix"`` (endpoint from ``S3_ENDPOINT_URL``,
    credentials as boto3 finds them). A remote ``out`` is written by streaming's ``MDSWriter`` with
    ``out=(local_cache, remote)``: shards are staged in ``local_cache`` (a fresh temporary directory
    when None, removed afterwards; kept when given) and uploaded as they are closed, ``index.json``
    after the last shard, then ``conversion.json``. A remote that already holds an ``index.json`` is
    refused unless ``overwrite``.
    """
    st = import_streaming()
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("write_mds needs at least one input file")
    for path in inputs:
        if not path.is_file():
            raise DataError(f"Input file not found: {path}")
    if isinstance(out, Path) and str(out).split("/")[0].endswith(":"):
        raise ValueError(f"out = Path('{out}') looks like a URL that Path collapsed; pass remote directories as str.")
    remote = str(out) if "://" in str(out) else None
    staging = None
    if remote is not None:
        remote = remote.rstrip("/")
        staging = tempfile.mkdtemp(prefix="mds_upload_") if local_cache is None else None
        out = Path(staging or local_cache)
        _check_remote_out(st, out, remote, overwrite)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"Output directory {out} exists and is not empty; pass overwrite=True (--overwrite).")
    try:
        return _write_mds(st, inputs, tokenizer_dir, seq_len, out, remote, compression, size_limit, overwrite, progress)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _check_remote_out(st, local: Path, remote: str, overwrite: bool) -> None:
    """Refuse an unreachable remote, or one that already holds a dataset (unless ``overwrite``)."""
    try:
        uploader = st.CloudUploader.get((str(local), remote), keep_local=True, exist_ok=True)
        existing = uploader.list_objects("index.json")
    except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
        raise DataError(_remote_error("list", remote, e)) from e
    if existing and not overwrite:
        raise FileExistsError(f"{remote}/index.json exists; pass overwrite=True (--overwrite) to replace the dataset.")


def _write_mds(st, inputs, tokenizer_dir, seq_len, out: Path, remote, compression, size_limit, overwrite, progress):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from tqdm import tqdm

    from ...tokenizer import check_hf_assets_path

    tokenizer_dir = check_hf_assets_path(str(tokenizer_dir))
    tokenizer = HuggingFaceTokenizer(str(tokenizer_dir))
    if tokenizer.bos_id is None or tokenizer.eos_id is None:
        logger.warning("Tokenizer %s has no BOS or EOS token; documents are packed without them.", tokenizer_dir)
    limit = st.bytes_to_int(size_limit)
    sample_len = seq_len + 1
    sample_bytes = sample_len * np.dtype(TOKEN_DTYPE).itemsize

    samples = documents = tokens = 0
    buf = np.empty(0, dtype=np.int32)
    columns = {TOKENS_COLUMN: f"ndarray:{TOKEN_DTYPE}:{sample_len}"}
    writer = st.MDSWriter(
        columns=columns, out=str(out) if remote is None else (str(out), remote), keep_local=True,
        compression=compression, size_limit=limit, hashes=[SHARD_HASH], exist_ok=overwrite,
    )
    with writer:
        # MDSWriter flushes before adding a sample that would overflow the shard, even when the shard
        # is empty: a limit below one sample writes an empty shard and then one sample per shard.
        per_shard = writer.extra_bytes_per_shard + writer.extra_bytes_per_sample + sample_bytes
        if limit < per_shard:
            raise ValueError(
                f"size_limit = {limit} bytes is smaller than one shard holding one sample of "
                f"{sample_len} tokens ({per_shard} bytes). Use a larger size_limit (default 64mb)."
            )
        bar = tqdm(desc=inputs[0].name, unit=" docs", disable=not progress, mininterval=1.0)
        for path in inputs:
            bar.set_description_str(path.name)
            for doc in iter_documents(path):
                ids = np.asarray(tokenizer.encode(doc, add_bos=True, add_eos=True), dtype=np.int32)
                documents += 1
                tokens += len(ids)
                buf = np.concatenate([buf, ids]) if len(buf) else ids
                n = (len(buf) - 1) // seq_len if len(buf) > seq_len else 0
                for k in range(n):
                    writer.write({TOKENS_COLUMN: buf[k * seq_len : k * seq_len + sample_len].copy()})
                if n:
                    buf = buf[n * seq_len :]
                    samples += n
                bar.update(1)
                if documents % 1000 == 0:
                    bar.set_postfix(samples=samples, tokens=tokens, refresh=False)
        bar.set_postfix(samples=samples, tokens=tokens)
        bar.close()
    if samples == 0:
        raise DataError(
            f"{len(inputs)} input file(s) gave {tokens} tokens, fewer than one sample of seq_len + 1 = "
            f"{sample_len}; {out} holds no samples. Use more text or a smaller --seq-len."
        )
    tail = len(buf) - 1
    index = json.loads((out / "index.json").read_text())
    summary = MdsWriteSummary(
        out=str(out), documents=documents, tokens=tokens, samples=samples, tail_tokens=tail,
        shards=len(index["shards"]), seq_len=seq_len,
    )
    conversion = {
        "writer": "titan_recipes.data.mds.write_mds",
        "streaming_version": st.version,
        "seq_len": seq_len,
        "column": TOKENS_COLUMN,
        "column_encoding": columns[TOKENS_COLUMN],
        "packing": "documents with BOS+EOS concatenated; sample k = tokens[k*seq_len : k*seq_len + seq_len + 1]",
        "tokenizer": {
            "path": str(tokenizer_dir),
            "tokenizer_json_sha256": tokenizer_sha256(tokenizer_dir),
            "vocab_size": tokenizer.get_vocab_size(),
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
        },
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in inputs],
        "compression": compression,
        "size_limit": limit,
        **{k: v for k, v in asdict(summary).items() if k not in ("out", "seq_len")},
    }
    (out / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2) + "\n")
    if remote is not None:
        try:
            writer.cloud_writer.upload_file(CONVERSION_FILE)
        except Exception as e:
            raise DataError(_remote_error("upload to", remote, e)) from e
        summary.out = remote
    logger.info(
        "Wrote %s: %d documents, %d tokens -> %d samples of %d tokens in %d shard(s) (%d tail tokens unused)",
        out, documents, tokens, samples, sample_len, summary.shards, tail,
    )
    return summary


# ---------------------------------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------------------------------


@dataclass
class MdsStats:
    path: str
    shards: int
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


def _fixed_sample_len(encoding: str) -> int | None:
    parts = encoding.split(":")
    if len(parts) == 3 and parts[2].isdigit():
        return int(parts[2])
    return None


def mds_stats(directory: str | Path) -> MdsStats:
    """Counts from an MDS directory's ``index.json`` (and ``conversion.json``, if present)."""
    directory = Path(directory)
    shards = read_index(directory)["shards"]
    raw = sum(s["raw_data"]["bytes"] for s in shards)
    zips = [s["zip_data"]["bytes"] for s in shards if s.get("zip_data")]
    compressions = {s.get("compression") for s in shards}
    tokens_per_sample = None
    for s in shards:
        if TOKENS_COLUMN in s.get("column_names", []):
            tokens_per_sample = _fixed_sample_len(s["column_encodings"][s["column_names"].index(TOKENS_COLUMN)])
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


