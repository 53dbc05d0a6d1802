"""Writing MDS: documents (or an MDS dataset's tokens) -> packed token samples in streaming MDS shards.

Inputs are read by :mod:`titan_recipes.data.mds.inputs` (documents) and
:mod:`titan_recipes.data.mds.mds_input` (existing MDS datasets: a ``text`` column is tokenized like
any document input, a ``tokens`` column is re-packed without tokenizing); the format (column, dtype,
hashes) is :mod:`titan_recipes.data.mds.format`; counts of a written directory are
:mod:`titan_recipes.data.mds.stats`.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import DataError
from .compat import remote_error, import_streaming
from .format import CONVERSION_FILE, SHARD_HASH, TOKEN_DTYPE, TOKENS_COLUMN, tokenizer_sha256
from .inputs import Documents, HubDataset, Input, input_kind
from .mds_input import MdsInput, OpenedMds, is_mds_input, open_mds_input

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
    """Documents tokenized (samples of an MDS text input count one each); 0 when tokens were re-packed."""
    tokens: int
    """Tokens of the packed stream (BOS and EOS included)."""
    samples: int
    tail_tokens: int
    """Tokens at the end of the stream not covered by any window (fewer than ``seq_len + 1`` left)."""
    shards: int
    seq_len: int
    input_samples: int = 0
    """Samples read from MDS token inputs and re-packed (0 for document inputs)."""


ENCODE_BATCH = 1000
"""Documents tokenized per ``encode_batch`` call: the fast tokenizer runs the batch in Rust threads."""


def as_input(source: Input, token_encoding_type: str = "int64") -> Input:
    """A converter input with its kind resolved: a URL or a directory holding ``index.json`` becomes an
    :class:`MdsInput`; other strings become Paths (checked later by :func:`input_kind`)."""
    if isinstance(source, (HubDataset, MdsInput)):
        return source
    if is_mds_input(source):
        return MdsInput(str(source), token_encoding_type)
    return Path(source)


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
    input_cache: str | Path | None = None,
    token_encoding_type: str = "int64",
) -> MdsWriteSummary:
    """Tokenize documents (or re-pack an MDS dataset's tokens) into samples of ``seq_len + 1`` tokens as MDS in ``out``.

    ``inputs`` are JSONL (``.jsonl``/``.jsonl.gz``), Parquet, ``.txt``/``.txt.gz`` (documents split on
    blank lines), directories written by ``datasets``' ``save_to_disk`` (``split`` picks the split of
    a ``DatasetDict``), :class:`HubDataset` (streamed from the hub), or MDS datasets (a directory with
    ``index.json`` or a remote URL such as ``"s3://bucket/prefix"``, see below); ``text_field`` names
    the JSONL key / column. ``documents = (start, end)`` keeps only documents ``[start:end]`` of all inputs
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

    MDS inputs (:mod:`~titan_recipes.data.mds.mds_input`): a ``text: str`` column is a document input
    (one document per sample, index order; mixes with the other document inputs). A ``tokens`` column
    (ndarray of an integer dtype, or ``bytes`` of ``token_encoding_type``) is re-packed without
    tokenizing: the samples' tokens concatenated in index order (our own overlapping windows joined
    without their shared token) are cut into windows as above; token inputs cannot be mixed with
    document inputs or take ``documents``; ids >= the tokenizer's vocabulary are a DataError. A remote
    MDS input is downloaded into ``input_cache/<url>`` (kept), or into a temporary directory removed
    afterwards (each shard deleted once read) when ``input_cache`` is None.
    """
    st = import_streaming()
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    compression = check_compression(st, compression)
    if upload_threads is not None and upload_threads < 1:
        raise ValueError(f"upload_threads must be >= 1, got {upload_threads}")
    inputs = [as_input(src, token_encoding_type) for src in inputs]
    if not inputs:
        raise ValueError("write_mds needs at least one input")
    for src in inputs:
        if isinstance(src, Path):
            input_kind(src)  # DataError for a missing or unknown input, before anything is written
    if isinstance(out, Path) and str(out).split("/")[0].endswith(":"):
        raise ValueError(f"out = Path('{out}') looks like a URL that Path collapsed; pass remote directories as str.")
    remote = str(out) if "://" in str(out) else None
    staging = input_tmp = None
    try:
        if remote is not None:
            remote = remote.rstrip("/")
            staging = tempfile.mkdtemp(prefix="mds_upload_") if local_cache is None else None
            out = Path(staging or local_cache)
            _check_remote_out(st, out, remote, overwrite)
        out = Path(out)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise FileExistsError(f"Output directory {out} exists and is not empty; pass overwrite=True (--overwrite).")
        if input_cache is None and any(isinstance(src, MdsInput) and src.remote for src in inputs):
            input_tmp = tempfile.mkdtemp(prefix="mds_input_")
        opened = [
            open_mds_input(st, src, input_cache or input_tmp, evict=input_tmp is not None)
            if isinstance(src, MdsInput) else src
            for src in inputs
        ]
        token_inputs = [src for src in opened if isinstance(src, OpenedMds) and src.layout == "tokens"]
        if token_inputs:
            if len(token_inputs) != len(opened):
                raise ValueError(
                    f"MDS token input(s) {[str(t.source) for t in token_inputs]} are re-packed, not tokenized: "
                    f"they cannot be mixed with document inputs. Convert them separately."
                )
            if documents is not None:
                raise ValueError("documents (--documents) selects documents; MDS token inputs have none.")
        source = token_inputs or Documents(opened, text_field, split, documents)
        return _write_mds(st, source, tokenizer_dir, seq_len, out, remote, compression, size_limit, overwrite,
                          progress, upload_threads)
    finally:
        for tmp in (staging, input_tmp):
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


def _check_remote_out(st, local: Path, remote: str, overwrite: bool) -> None:
    """Refuse an unreachable remote, or one that already holds a dataset (unless ``overwrite``)."""
    try:
        uploader = st.CloudUploader.get((str(local), remote), keep_local=True, exist_ok=True)
        existing = uploader.list_objects("index.json")
    except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
        raise DataError(remote_error("list", remote, e)) from e
    if existing and not overwrite:
        raise FileExistsError(f"{remote}/index.json exists; pass overwrite=True (--overwrite) to replace the dataset.")


class _Packer:
    """Cuts a token stream, given piece by piece, into samples of ``seq_len + 1`` with stride ``seq_len``."""

    def __init__(self, writer: Any, seq_len: int):
        self.writer, self.seq_len = writer, seq_len
        self.buf = np.empty(0, dtype=np.int32)
        self.samples = self.tokens = 0

    def add(self, ids: np.ndarray) -> None:
        seq_len, sample_len = self.seq_len, self.seq_len + 1
        self.tokens += len(ids)
        buf = np.concatenate([self.buf, ids]) if len(self.buf) else ids
        n = (len(buf) - 1) // seq_len if len(buf) > seq_len else 0
        for k in range(n):
            self.writer.write({TOKENS_COLUMN: buf[k * seq_len : k * seq_len + sample_len].copy()})
        if n:
            buf = buf[n * seq_len :]
            self.samples += n
        self.buf = buf


def encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """``tokenizer.encode(text, add_bos=True, add_eos=True)`` of each text, in one batch call when possible.

    A tokenizer with its own ``encode_batch(texts, add_bos=, add_eos=)`` is used as is. torchtitan's
    ``HuggingFaceTokenizer`` has none: its ``tokenizers.Tokenizer`` batch-encodes (in Rust threads) and
    BOS/EOS are added as its ``encode`` adds them (unless the tokenizer's template already does).
    Same ids as one ``encode`` per text (the converter tests compare them with per-document encoding)."""
    own = getattr(tokenizer, "encode_batch", None)
    if callable(own):
        return own(texts, add_bos=True, add_eos=True)
    inner = getattr(tokenizer, "tokenizer", None)
    if not hasattr(inner, "encode_batch") or not hasattr(tokenizer, "hf_adds_bos"):
        return [tokenizer.encode(text, add_bos=True, add_eos=True) for text in texts]
    bos = tokenizer.bos_id if not tokenizer.hf_adds_bos else None
    eos = tokenizer.eos_id if not tokenizer.hf_adds_eos else None
    out = []
    for encoding in inner.encode_batch(texts):
        ids = encoding.ids
        out.append(([bos] if bos is not None else []) + ids + ([eos] if eos is not None else []))
    return out


def _tokenize_into(packer: _Packer, docs: Documents, tokenizer: Any, bar: Any) -> int:
    documents = 0
    shown = docs.current
    it = iter(docs)
    while block := list(islice(it, ENCODE_BATCH)):
        for ids in encode_batch(tokenizer, block):
            packer.add(np.asarray(ids, dtype=np.int32))
        documents += len(block)
        if shown != docs.current:
            shown = docs.current
            bar.set_description_str(shown)
        bar.update(len(block))
        bar.set_postfix(samples=packer.samples, tokens=packer.tokens, refresh=False)
    return documents


def _repack_into(packer: _Packer, inputs: list[OpenedMds], vocab_size: int, bar: Any) -> int:
    samples = 0
    for src in inputs:
        bar.set_description_str(str(src.source))
        for piece, count in src.iter_tokens(vocab_size):
            packer.add(piece)
            samples += count
            bar.update(count)
            bar.set_postfix(samples=packer.samples, tokens=packer.tokens, refresh=False)
    return samples


def _write_mds(st, source: Documents | list[OpenedMds], tokenizer_dir, seq_len, out: Path, remote, compression,
               size_limit, overwrite, progress, upload_threads):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer
    from tqdm import tqdm

    from ...tokenizer import check_hf_assets_path

    tokenizer_dir = check_hf_assets_path(str(tokenizer_dir))
    tokenizer = HuggingFaceTokenizer(str(tokenizer_dir))
    repack = isinstance(source, list)
    if not repack and (tokenizer.bos_id is None or tokenizer.eos_id is None):
        logger.warning("Tokenizer %s has no BOS or EOS token; documents are packed without them.", tokenizer_dir)
    limit = st.bytes_to_int(size_limit)
    sample_len = seq_len + 1
    sample_bytes = sample_len * np.dtype(TOKEN_DTYPE).itemsize

    documents = input_samples = 0
    columns = {TOKENS_COLUMN: f"ndarray:{TOKEN_DTYPE}:{sample_len}"}
    writer = st.MDSWriter(
        columns=columns, out=str(out) if remote is None else (str(out), remote), keep_local=True,
        compression=compression, size_limit=limit, hashes=[SHARD_HASH], exist_ok=overwrite,
        **({"max_workers": upload_threads} if upload_threads is not None else {}),
    )
    # Not ``with writer``: MDSWriter's __exit__ writes (and uploads) index.json even when the conversion
    # failed, leaving a partial dataset that reads as a complete one. On an error, the pending uploads are
    # cancelled and no index.json is written.
    try:
        # MDSWriter flushes before adding a sample that would overflow the shard, even when the shard
        # is empty: a limit below one sample writes an empty shard and then one sample per shard.
        per_shard = writer.extra_bytes_per_shard + writer.extra_bytes_per_sample + sample_bytes
        if limit < per_shard:
            raise ValueError(
                f"size_limit = {limit} bytes is smaller than one shard holding one sample of "
                f"{sample_len} tokens ({per_shard} bytes). Use a larger size_limit (default 64mb)."
            )
        packer = _Packer(writer, seq_len)
        if repack:
            bar = tqdm(total=sum(src.num_samples for src in source), unit=" samples", disable=not progress,
                       mininterval=1.0)
            input_samples = _repack_into(packer, source, tokenizer.get_vocab_size(), bar)
        else:
            bar = tqdm(desc=source.current, unit=" docs", disable=not progress, mininterval=1.0)
            documents = _tokenize_into(packer, source, tokenizer, bar)
        bar.set_postfix(samples=packer.samples, tokens=packer.tokens)
        bar.close()
    except BaseException:
        writer.cancel_future_jobs()
        raise
    writer.finish()
    samples, tokens = packer.samples, packer.tokens
    if samples == 0:
        raise DataError(
            f"{len(source if repack else source.inputs)} input(s) gave {tokens} tokens, fewer than one sample of "
            f"seq_len + 1 = {sample_len}; {out} holds no samples. Use more text or a smaller --seq-len."
        )
    tail = len(packer.buf) - 1
    index = json.loads((out / "index.json").read_text())
    summary = MdsWriteSummary(
        out=str(out), documents=documents, tokens=tokens, samples=samples, tail_tokens=tail,
        shards=len(index["shards"]), seq_len=seq_len, input_samples=input_samples,
    )
    conversion = {
        "writer": "titan_recipes.data.mds.write_mds",
        "streaming_version": st.version,
        "seq_len": seq_len,
        "column": TOKENS_COLUMN,
        "column_encoding": columns[TOKENS_COLUMN],
        "packing": (
            "the MDS inputs' token samples concatenated in index order (overlapping windows of a previous "
            "conversion joined without their shared first token), not re-tokenized; "
            if repack else "documents with BOS+EOS concatenated; "
        ) + "sample k = tokens[k*seq_len : k*seq_len + seq_len + 1]",
        "tokenizer": {
            "path": str(tokenizer_dir),
            "tokenizer_json_sha256": tokenizer_sha256(tokenizer_dir),
            "vocab_size": tokenizer.get_vocab_size(),
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
        },
        "inputs": [src.describe() for src in source] if repack else source.describe(),
        "text_field": None if repack else source.text_field,
        "documents_range": list(source.range) if not repack and source.range is not None else None,
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
        "Wrote %s: %d documents / %d input samples, %d tokens -> %d samples of %d tokens in %d shard(s) "
        "(%d tail tokens unused)", out, documents, input_samples, tokens, samples, sample_len, summary.shards, tail,
    )
    return summary
