"""Writing MDS: documents -> packed token samples in streaming MDS shards (local or remote); stats.

Inputs (:func:`iter_input_documents`): JSONL (``.jsonl``/``.jsonl.gz``), Parquet (``.parquet``, read
by record batch), a Hugging Face dataset directory written by ``save_to_disk``, plain text
(``.txt``/``.txt.gz``, documents split on blank lines as :func:`titan_recipes.data.text.read_documents`
does), and a streamed Hugging Face hub dataset (:class:`HubDataset`, needs network access).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

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

TEXT_SEPARATOR = "\n\n"
"""Plain-text inputs are split into documents here, as ``text_data.document_separator`` defaults to."""
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write; one marks a directory."""
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face hub dataset read with ``datasets.load_dataset(name, config, split=split,
    streaming=True)``: documents arrive over the network as they are converted, nothing is cached
    whole. Needs network access to the hub (untested in this repository's CI, which has none)."""

    name: str
    split: str = "train"
    config: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.name}" + (f"/{self.config}" if self.config else "") + f"[{self.split}]"


Input = Union[str, Path, HubDataset]


def input_kind(path: Path) -> str:
    """``jsonl``, ``parquet``, ``hf_disk`` or ``txt`` for an input path; DataError for anything else."""
    if path.is_dir():
        if any((path / m).is_file() for m in HF_DISK_MARKERS):
            return "hf_disk"
        raise DataError(
            f"Input directory {path} is not a Hugging Face dataset saved with save_to_disk (it has none "
            f"of {', '.join(HF_DISK_MARKERS)})."
        )
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "jsonl"
    if path.name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "txt"
    raise DataError(
        f"Input {path}: unknown kind. Accepted: .jsonl / .jsonl.gz, .parquet, .txt / .txt.gz (documents "
        f"separated by blank lines), or a directory written by datasets' save_to_disk."
    )


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {names}); choose one with --text-field.")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            column = batch.column(0)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise DataError(f"{path}: column '{text_field}' is {column.type}, not a string column (row {row}).")
            for text in column.to_pylist():
                if text is None:
                    raise DataError(f"{path}: row {row}: '{text_field}' is null")
                yield text
                row += 1
    except pa.ArrowException as e:
        raise DataError(f"{path}: cannot read Parquet row group near row {row} ({type(e).__name__}: {e})") from None


def _iter_hf(dataset: Any, where: str, text_field: str) -> Iterator[str]:
    names = dataset.column_names
    if names is not None and text_field not in names:
        raise DataError(f"{where}: no column '{text_field}' (columns: {names}); choose one with --text-field.")
    for row, example in enumerate(dataset.select_columns([text_field]) if names is not None else dataset):
        text = example.get(text_field) if isinstance(example, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{where}: row {row}: '{text_field}' must be a string, got {type(text).__name__}")
        yield text


def _load_hf_disk(path: Path, split: str | None) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors, ...
        raise DataError(f"{path}: cannot load the saved Hugging Face dataset ({type(e).__name__}: {e})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise DataError(
                f"{path} is a DatasetDict with splits {sorted(loaded)}; choose one with --split "
                f"(got {split!r})."
            )
        return loaded[split]
    return loaded


def iter_input_documents(source: Input, text_field: str = "text", split: str | None = None) -> Iterator[str]:
    """The documents of one input, in file order, streamed (plain text is read whole).

    ``text_field`` names the JSONL key / Parquet or HF column; ``split`` picks the split of a saved
    ``DatasetDict``. Bad rows are DataErrors naming the file and the line (JSONL, 1-based) or row
    (Parquet, HF: 0-based).
    """
    if isinstance(source, HubDataset):
        import datasets

        dataset = datasets.load_dataset(source.name, source.config, split=source.split, streaming=True)
        yield from _iter_hf(dataset, str(source), text_field)
        return
    path = Path(source)
    kind = input_kind(path)
    if kind == "jsonl":
        yield from iter_jsonl_texts(path, text_field)
    elif kind == "parquet":
        yield from _iter_parquet(path, text_field)
    elif kind == "hf_disk":
        yield from _iter_hf(_load_hf_disk(path, split), str(path), text_field)
    else:
        from ..text import read_documents

        yield from read_documents(path, TEXT_SEPARATOR)


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


def parse_document_range(text: str) -> tuple[int | None, int | None]:
    """``"START:END"`` (Python slice bounds, either may be empty or negative) -> (start, end)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(start) if start.strip() else None, int(end) if end.strip() else None)
    except ValueError:
        raise ValueError(f"documents range must look like START:END (e.g. 0:-200 or -200:), got {text!r}") from None


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
    docs = _Documents(inputs, text_field, split, documents)
    try:
        return _write_mds(st, docs, tokenizer_dir, seq_len, out, remote, compression, size_limit, overwrite,
                          progress, upload_threads)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


class _Documents:
    """The documents of all inputs in order, cut to ``documents = (start, end)``; reports the current input."""

    def __init__(self, inputs, text_field, split, documents):
        self.inputs, self.text_field, self.split = inputs, text_field, split
        self.range = documents
        self.current = str(inputs[0])

    def _all(self) -> Iterator[str]:
        for src in self.inputs:
            self.current = src.name if isinstance(src, Path) else str(src)
            yield from iter_input_documents(src, self.text_field, self.split)

    def __iter__(self) -> Iterator[str]:
        if self.range is None:
            yield from self._all()
            return
        start, end = self.range
        if (start is not None and start < 0) or (end is not None and end < 0):
            total = sum(1 for _ in self._all())
            start, end, _ = slice(start, end).indices(total)
        start = start or 0
        for i, doc in enumerate(self._all()):
            if end is not None and i >= end:
                break
            if i >= start:
                yield doc

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for src in self.inputs:
            if isinstance(src, HubDataset):
                out.append({"hf_dataset": src.name, "config": src.config, "split": src.split})
            elif src.is_dir():
                size = sum(f.stat().st_size for f in sorted(src.rglob("*")) if f.is_file())
                out.append({"path": str(src), "bytes": size, "split": self.split})
            else:
                out.append({"path": str(src), "bytes": src.stat().st_size})
        return out


def _check_remote_out(st, local: Path, remote: str, overwrite: bool) -> None:
    """Refuse an unreachable remote, or one that already holds a dataset (unless ``overwrite``)."""
    try:
        uploader = st.CloudUploader.get((str(local), remote), keep_local=True, exist_ok=True)
        existing = uploader.list_objects("index.json")
    except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
        raise DataError(_remote_error("list", remote, e)) from e
    if existing and not overwrite:
        raise FileExistsError(f"{remote}/index.json exists; pass overwrite=True (--overwrite) to replace the dataset.")


def _write_mds(st, docs: _Documents, tokenizer_dir, seq_len, out: Path, remote, compression, size_limit, overwrite,
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
            raise DataError(_remote_error("upload to", remote, e)) from e
        summary.out = remote
    logger.debug(  # the summary is returned; scripts/mds_convert.py prints it (INFO here printed it twice)
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
        raise DataError(_remote_error("download index.json of", remote, e)) from e
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
