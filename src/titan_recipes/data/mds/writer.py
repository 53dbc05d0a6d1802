"""Writing MDS: documents -> packed token samples in streaming MDS shards (local or remote).

Inputs are read by :mod:`titan_recipes.data.mds.inputs`; the format (column, dtype, hashes) is
:mod:`titan_recipes.data.mds.format`; counts of a written directory are :mod:`titan_recipes.data.mds.stats`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import DataError
from .compat import remote_error, import_streaming
from .format import CONVERSION_FILE, SHARD_HASH, TOKEN_DTYPE, TOKENS_COLUMN, tokenizer_sha256
from .inputs import Documents, HubDataset, Input, input_kind

logger = logging.getLogger(__name__)


def check_compression(st, compression: str | None) -> str | None:
    """``compression`` if streaming supports it (``None``/``"none"`` -> None), else ValueError listing them."""
    if compression in (None, "", "none"):
        return None
    from streaming.base.compression import get_compressions  # importable once import_streaming() ran

    supported = get_compressions()
    if compression not in supported:
        families: dict[str, list[int]] = {}
        for name in supported:
            family, _, level = name.partition(":")
            families.setdefault(family, [])
            if level:
                families[family].append(int(level))
        listing = ", ".join(f"{f}[:{min(ls)}-{max(ls)}]" if ls else f for f, ls in sorted(families.items()))
        raise ValueError(
            f"compression = {compression!r} is not supported by mosaicml-streaming {st.version}. Use none or "
            f"one of: {listing} (a family alone takes streaming's default level)."
        )
    return compression



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


def write_mds(
    inputs: Sequence[Input],
    tokenizer_dir: str | Path,
    seq_len: int,
    out: str | Path,
    *,
    compression: str | None = None,
    size_limit: int | str = "64mb",
    overwrite: bool = False,
    progress: bool = True,
    local_cache: str | Path | None = None,
    text_field: str = "text",
    split: str | None = None,
    documents: tuple[int | None, int | None] | None = None,
    upload_threads: int | None = None,
) -> MdsWriteSummary:
    """Tokenize documents and write packed samples of ``seq_len + 1`` tokens as MDS into ``out``.

    ``inputs`` are JSONL (``.jsonl``/``.jsonl.gz``), Parquet, ``.txt``/``.txt.gz`` (documents split on
    blank lines), directories written by ``datasets``' ``save_to_disk`` (``split`` picks the split of
    a ``DatasetDict``) or :class:`HubDataset` (streamed from the hub); ``text_field`` names the JSONL
    key / column. ``documents = (start, end)`` keeps only documents ``[start:end]`` of all inputs
    together (Python slice bounds; a negative bound costs one extra pass to count the documents).

    Documents get BOS and EOS and are packed across inputs in the order given; sample ``k`` is
    ``tokens[k*seq_len : k*seq_len + seq_len + 1]``. ``compression`` is None (or ``"none"``) or one
    of streaming's compressions, ``br``, ``bz2``, ``gz``, ``snappy``, ``zstd``, optionally with
    ``:<level>`` (checked up front). The output is byte-for-byte deterministic for the same inputs
    and settings, except with ``gz``: Python's gzip writes the current time into every shard.
    ``size_limit`` is the uncompressed shard size (bytes or ``"64mb"``). ``out`` is a local directory,
    empty or absent unless ``overwrite``, or a remote directory such as ``"s3://bucket/prefix"``
    (endpoint from ``S3_ENDPOINT_URL``, credentials as boto3 finds them; the other schemes streaming's
    uploader knows, gs://, oci://, azure://, dbfs:/..., work the same way but only S3 is tested). A remote ``out`` is
    written by streaming's ``MDSWriter`` with ``out=(local_cache, remote)``: shards are staged in
    ``local_cache`` (a fresh temporary directory when None, removed afterwards; kept when given) and
    uploaded by ``upload_threads`` threads (``MDSWriter``'s ``max_workers``; None: Python's default) as
    they are closed, ``index.json`` after the last shard, then ``conversion.json``. A remote that
    already holds an ``index.json`` is refused unless ``overwrite``.
    """
    st = import_streaming()
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    compression = check_compression(st, compression)
    if upload_threads is not None and upload_threads < 1:
        raise ValueError(f"upload_threads must be >= 1, got {upload_threads}")
    inputs = [src if isinstance(src, HubDataset) else Path(src) for src in inputs]
    if not inputs:
        raise ValueError("write_mds needs at least one input")
    for src in inputs:
        if isinstance(src, Path):
            input_kind(src)  # DataError for a missing or unknown input, before anything is written
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
    docs = Documents(inputs, text_field, split, documents)
    try:
        return _write_mds(st, docs, tokenizer_dir, seq_len, out, remote, compression, size_limit, overwrite,
                          progress, upload_threads)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)



def _check_remote_out(st, local: Path, remote: str, overwrite: bool) -> None:
    """Refuse an unreachable remote, or one that already holds a dataset (unless ``overwrite``)."""
    try:
        uploader = st.CloudUploader.get((str(local), remote), keep_local=True, exist_ok=True)
        existing = uploader.list_objects("index.json")
    except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
        raise DataError(remote_error("list", remote, e)) from e
    if existing and not overwrite:
        raise FileExistsError(f"{remote}/index.json exists; pass overwrite=True (--overwrite) to replace the dataset.")


def _write_mds(st, docs: Documents, tokenizer_dir, seq_len, out: Path, remote, compression, size_limit, overwrite,
               progress, upload_threads):
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
        **({"max_workers": upload_threads} if upload_threads is not None else {}),
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
        shown = docs.current
        bar = tqdm(desc=shown, unit=" docs", disable=not progress, mininterval=1.0)
        for doc in docs:
            if shown != docs.current:
                shown = docs.current
                bar.set_description_str(shown)
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
            f"{len(docs.inputs)} input(s) gave {tokens} tokens, fewer than one sample of seq_len + 1 = "
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
        "inputs": docs.describe(),
        "text_field": docs.text_field,
        "documents_range": list(docs.range) if docs.range is not None else None,
        "compression": compression,
        "size_limit": limit,
        **{k: v for k, v in asdict(summary).items() if k not in ("out", "seq_len")},
    }
    (out / CONVERSION_FILE).write_text(json.dumps(conversion, indent=2) + "\n")
    if remote is not None:
        try:
            writer.cloud_writer.upload_file(CONVERSION_FILE)
        except Exception as e:
            raise DataError(remote_error("upload to", remote, e)) from e
        summary.out = remote
    logger.debug(  # the summary is returned; scripts/mds_convert.py prints it (INFO here printed it twice)
        "Wrote %s: %d documents, %d tokens -> %d samples of %d tokens in %d shard(s) (%d tail tokens unused)",
        out, documents, tokens, samples, sample_len, summary.shards, tail,
    )
    return summary
