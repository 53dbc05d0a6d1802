"""Mosaic streaming (MDS) data: JSONL -> packed token samples in MDS shards, and a loader that reads them.

Select it with ``training.dataset = "mds"``; it is configured in ``[mosaic_dataloader]``
(:class:`titan_recipes.config.MosaicDataloader`)::

    [mosaic_dataloader.dataset]
    shuffle_seed = 9176
    [mosaic_dataloader.dataset.streams.books]
    local = "/data/mds/books"
    proportion = 0.3
    [mosaic_dataloader.dataset.streams.web]
    local = "/data/mds/web"
    proportion = 0.7

**Format.** :func:`write_mds` tokenizes documents (``text`` field of each JSONL line) with BOS and EOS,
concatenates them into one token stream and cuts windows ``tokens[k*L : k*L + L + 1]``
(``L = seq_len``, stride ``L``, exactly as :mod:`titan_recipes.data.text` does), written by
``streaming``'s own ``MDSWriter`` as column ``tokens`` = ``ndarray:int32:<L+1>``, with an ``xxh64``
hash per shard in ``index.json``. ``conversion.json`` beside ``index.json`` records how (tokenizer
hash, seq_len, inputs, counts).

**Order: design choice (b).** Samples are read with mosaicml-streaming's ``Stream`` (index parsing,
``MDSReader`` shard readers, zstd decompression) and mixed with streaming's own epoch algorithm
(``Stream.apply_weights`` for proportion/repeat/choose, ``get_sampling`` for partial repeats,
``get_shuffle`` with ``py1e``). With one canonical node this gives exactly the sample order a
single-process ``StreamingDataset`` yields (``tests/unit/data/test_mds.py`` checks it). That one
global order is cut into micro-batches by
:class:`~titan_recipes.data.common.GlobalOrderLoader` from torchtitan's ``dp_rank``/``dp_world_size``.
The state is ``consumed_samples`` + fingerprint, identical on every rank, so a resume with another DP
degree continues the same order.

``StreamingDataset`` itself (choice (a)) was tried first and rejected. Measured with 0.13.0 on one
machine, DP ranks presented to it as nodes through the environment variables:

* It partitions by the RANK/WORLD_SIZE/LOCAL_WORLD_SIZE environment variables, not by DP rank. TP/CP
  ranks of one DP group would have to share a rank (its ``replication`` argument only covers
  consecutive ranks, so not PP). Faking "one DP rank per node" on one machine makes every process a
  local leader, and they collide on shared memory:
  ``FileExistsError: [Errno 17] File exists: '/000021_locals'`` with 2 processes.
* Epochs are padded with repeated samples up to a multiple of ``num_canonical_nodes`` (100 samples,
  6 canonical nodes: 102 per epoch, 2 repeated). Ranks can finish an epoch at different steps after
  a resume with another world size (per-rank counts [14, 14, 12] after 2 -> 3 ranks). Some world
  sizes are refused outright ("Either canonical or physical nodes must be evenly divisible by the
  other" for 4 ranks with 6 canonical nodes).
* It never crosses an epoch inside one iterator. A micro-batch that spans epochs, and the resume
  state within it, would have to be stitched together outside it.
* Within one epoch a resume with another world size keeps the samples of each global step (ranks
  get them interleaved), but only with ``num_canonical_nodes`` fixed. Its default, the initial node
  count, makes the order depend on the first launch's size.
  It also needs ``dist`` (it calls ``init_process_group`` itself when WORLD_SIZE > 1) and leaves
  filelocks in ``/tmp``.

Checkpoint state (identical on every rank)::

    {"mds": {"consumed_samples": 4096, "fingerprint": "9f2c...", "num_samples": 1517}}

``num_samples`` is the epoch size after stream weighting. The fingerprint covers each stream's
``index.json`` (which has per-shard content hashes when written here), the stream weights and every
order setting. It does not cover paths or stream names, so data can move.

**Remote streams.** A stream with ``remote = "s3://bucket/prefix"`` uses ``local`` as its cache
(endpoint from ``S3_ENDPOINT_URL``, credentials as boto3 finds them; any scheme streaming's
``CloudDownloader`` knows works the same way, only S3 is tested). The loader downloads
``index.json`` (and ``conversion.json``, if there) when it is built, and each shard on demand, the
first time a rank reads one of its samples, with streaming's own ``Stream`` download code. Shards
are checked against their ``xxh64`` hash from ``index.json`` when it lists one for every shard. Each
file appears under its final name only when complete (boto3 and streaming write a temporary file and
rename it), and one file lock per ``local`` directory serialises downloads and decompression, so
ranks on one node can share ``local``. A cached ``index.json`` is trusted: point a new dataset at a
fresh ``local``. Nothing is evicted (no cache limit): ``local`` needs room for the whole stream.
Failures (unreachable endpoint, missing bucket/object, hash mismatch) raise DataError naming the
``remote`` setting and the endpoint. :func:`write_mds` writes to a remote ``out`` through
``MDSWriter``'s upload support.

**Non-IID streams per DP rank.** ``[mosaic_dataloader.dataset.non_iid_streams.dp_rank_<N>.<stream>]``
(or ``.default.<stream>``, for every rank without its own entry) replaces the one global order by one
order per data-parallel rank. Semantics, exactly:

* Rank ``r`` reads the streams listed in its entry (``dp_rank_r``, else ``default``; with neither, all
  base streams with their base weights). A listed stream inherits ``local``/``remote`` and, if the
  entry gives no weight, its weight from ``streams.<stream>``; a given ``proportion``/``repeat``/
  ``choose`` replaces the base weight.
* Disjointness: the samples of stream ``s`` (its sample ids, in index order) are cut into contiguous
  blocks of near-equal size, one per rank that reads ``s``, in rank order. A rank only ever reads its
  own blocks, so two ranks never read the same sample. Ranks that should overlap must say so in the
  config: list the same directory as two base streams.
* Rank ``r``'s epoch is streaming's algorithm applied to its blocks: ``Stream.apply_weights`` over the
  block sizes (so a proportion is a share of that rank's epoch, exact per epoch), ``get_sampling``
  over the shards clipped to the blocks, ``get_shuffle``, all with the rank seed
  ``sha256("<shuffle_seed>:dp_rank_<r>")`` (31 bits). Epoch sizes may differ between ranks; each rank
  wraps into its next epoch on its own.
* State: every rank has read ``consumed_samples / dp_world_size`` samples of its own order, so the
  state stays identical on every rank (plus every rank's epoch size and the DP degree) and resume is
  exact. The fingerprint covers every rank's plan. A resume with another DP degree is refused
  (DataError): it cannot keep each rank's plan.

**Validation.** ``validation.dataset = "mds"`` reads ``[mosaic_dataloader.validation_streams.<name>]``
(``local``, optional ``remote``) once per validation run, unshuffled, cut by DP rank
(:func:`build_mds_validation_loader`, :class:`MDSValidationLoader`).

Not in this slice: ``num_workers > 0``,
``predownload``, read-speed benchmark. Those settings raise ConfigError instead of being ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..config import ConfigError
from .common import DataError, GlobalOrderLoader, fingerprint, iter_jsonl_texts

if TYPE_CHECKING:
    from streaming.base.stream import Stream

logger = logging.getLogger(__name__)

TOKENS_COLUMN = "tokens"
TOKEN_DTYPE = "int32"
CONVERSION_FILE = "conversion.json"
"""Written by :func:`write_mds` beside streaming's ``index.json``; streaming ignores it."""
SHARD_HASH = "xxh64"
DECOMPRESS_LOCK = ".decompress.lock"
"""Lock file the loader creates in a compressed stream's directory while decompressing shards."""
STREAM_KEYS = ("local", "remote", "proportion", "repeat", "choose")
TESTED_STREAMING_VERSION = "0.13.0"


# ---------------------------------------------------------------------------------------------------
# Importing mosaicml-streaming without its package __init__
# ---------------------------------------------------------------------------------------------------


def import_streaming() -> types.SimpleNamespace:
    """mosaicml-streaming's MDS pieces, imported without running ``streaming/__init__.py``.

    Why: ``streaming/__init__.py`` imports ``streaming.multimodal``/``vision``/``text``, and
    ``streaming/base/__init__.py`` imports ``streaming.base.dataloader``. Both pull in transformers
    and torchvision, which MDS never needs. transformers is not in our lock, and torchvision does not
    import beside torch 2.13 CPU (FACTS.md). The submodules used here (``stream``, ``format.mds``,
    ``spanner``, ``shuffle``, ``sampling``, ``world``) do not need those imports. So when ``streaming``
    is not imported yet, this registers empty package modules for ``streaming`` and ``streaming.base``
    whose ``__path__`` points at the installed package, and imports the submodules from there.

    Side effect (opt-in: only callers of this function trigger it): in this process
    ``streaming.StreamingDataset`` and the other top-level names are absent. Import them from their
    submodules (``from streaming.base.dataset import StreamingDataset``). A ``streaming`` that is
    already imported is used as is.
    """
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "mosaicml-streaming is not installed; the MDS loader and converter need it. Install "
                f"the pinned version without its dependencies: pip install --no-deps "
                f"mosaicml-streaming=={TESTED_STREAMING_VERSION} (see env/cpu.lock)."
            )
        root = spec.submodule_search_locations[0]
        for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
            if name in sys.modules:
                continue
            module = types.ModuleType(name, f"{name}, imported by titan_recipes.data.mds without its __init__")
            module.__path__ = [path]
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            module.__spec__.submodule_search_locations = [path]
            module.__getattr__ = _stub_getattr(name)
            sys.modules[name] = module
    from streaming._version import __version__
    from streaming.base.compression import decompress
    from streaming.base.format.mds.writer import MDSWriter
    from streaming.base.sampling import get_sampling
    from streaming.base.shuffle import get_shuffle
    from streaming.base.spanner import Spanner
    from streaming.base.storage.upload import CloudUploader
    from streaming.base.stream import Stream
    from streaming.base.util import bytes_to_int
    from streaming.base.world import World

    if __version__ != TESTED_STREAMING_VERSION:
        logger.warning(
            "mosaicml-streaming %s is installed; titan_recipes.data.mds was tested with %s and uses "
            "its Stream, MDSReader, get_sampling and get_shuffle internals.",
            __version__, TESTED_STREAMING_VERSION,
        )
    return types.SimpleNamespace(
        version=__version__, Stream=Stream, MDSWriter=MDSWriter, Spanner=Spanner, World=World,
        get_sampling=get_sampling, get_shuffle=get_shuffle, bytes_to_int=bytes_to_int,
        decompress=decompress, CloudUploader=CloudUploader,
    )


def _remote_error(action: str, remote: str, error: BaseException, setting: str | None = None) -> str:
    """One message for every failed remote operation: what, where (remote + endpoint), why, what to check."""
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    where = f"{setting} = '{remote}'" if setting else remote
    return (
        f"Cannot {action} {where} (S3_ENDPOINT_URL = {endpoint!r}"
        f"{'' if endpoint else ', i.e. the AWS default'}): {type(error).__name__}: {error}. Check that the "
        f"endpoint is reachable, the bucket and prefix exist, and credentials are set (AWS_ACCESS_KEY_ID/"
        f"AWS_SECRET_ACCESS_KEY or an AWS profile)."
    )


def _stub_getattr(package: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(
            f"{package}.{attr}: titan_recipes.data.mds imported mosaicml-streaming without running "
            f"{package}/__init__.py (it needs transformers/torchvision). Import it from its submodule, "
            f"e.g. `from streaming.base.dataset import StreamingDataset`."
        )

    return __getattr__


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
    from tqdm import tqdm
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from ..tokenizer import check_hf_assets_path

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


# ---------------------------------------------------------------------------------------------------
# The loader
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamSpec:
    """One MDS stream as configured: a local directory (the cache, when ``remote`` is set) and at most
    one weight."""

    name: str
    local: str
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    setting: str = ""
    """The config key it came from, for error messages (e.g. ``mosaic_dataloader.dataset.local``)."""
    remote: str | None = None
    """Remote directory (``s3://bucket/prefix``) that ``local`` caches; None: ``local`` is the data."""

    @property
    def remote_setting(self) -> str:
        return self.setting.removesuffix(".local") + ".remote"


class MDSLoader(GlobalOrderLoader):
    """Micro-batches of MDS token samples in streaming's epoch order, cut globally by DP rank.

    Each epoch's order comes from streaming's own algorithm (weights -> per-shard sampling -> py1e
    shuffle with one canonical node), so it contains repeats when a stream is upsampled and leaves
    samples out when one is downsampled. ``num_samples`` is that epoch size, not the count on disk.
    """

    state_key = "mds"
    seq_len_key = "training.seq_len"
    """The setting ``seq_len`` comes from, for error messages."""

    def __init__(
        self,
        *,
        streams: Sequence[StreamSpec],
        seq_len: int,
        local_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        shuffle: bool = True,
        shuffle_seed: int = 9176,
        shuffle_algo: str = "py1e",
        shuffle_block_size: int = 1 << 18,
        name: str = "mds",
        rank_streams: dict[int | str, Sequence[StreamSpec]] | None = None,
    ):
        super().__init__(
            name=name, local_batch_size=local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size
        )
        if not streams:
            raise ConfigError("The MDS loader needs at least one stream.")
        if shuffle_seed < 0:
            raise ConfigError(f"mosaic_dataloader.dataset.shuffle_seed must be >= 0, got {shuffle_seed}.")
        if shuffle_block_size < 1:
            raise ConfigError(
                f"mosaic_dataloader.dataset.shuffle_block_size must be positive, got {shuffle_block_size}."
            )
        self._st = st = import_streaming()
        from streaming.base.shuffle import algos as shuffle_algos

        if shuffle_algo not in shuffle_algos:
            raise ConfigError(
                f"mosaic_dataloader.dataset.shuffle_algo = '{shuffle_algo}' is not one of streaming's "
                f"shuffle algorithms {sorted(shuffle_algos)}."
            )
        self.seq_len = seq_len
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.shuffle_algo = shuffle_algo
        self.shuffle_block_size = shuffle_block_size
        self.specs = list(streams)

        self.streams: list[Stream] = []
        self.shards: list[Any] = []
        self._shard_stream: list[int] = []
        index_hashes = []
        samples_per_stream = []
        for i, spec in enumerate(self.specs):
            stream = self._make_stream(spec)
            if spec.remote:
                self._fetch_index(stream, spec)
            index = read_index(spec.local, spec.setting)
            index_hashes.append(hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest())
            shards = self._load_shards(stream, spec)
            if spec.remote:
                stream.validate_hash = _common_hash(shards)
            samples = sum(shard.samples for shard in shards)
            if not samples:
                raise DataError(
                    f"MDS stream '{spec.name}' ({spec.setting} = '{spec.local}') has no samples: "
                    f"{os.path.join(spec.local, 'index.json')} lists {len(shards)} empty shard(s)."
                )
            self.streams.append(stream)
            self.shards += shards
            self._shard_stream += [i] * len(shards)
            samples_per_stream.append(samples)
        self.samples_per_stream = np.asarray(samples_per_stream, np.int64)
        self.samples_per_shard = np.asarray([s.samples for s in self.shards], np.int64)
        self.sample_offset_per_shard = np.cumsum(self.samples_per_shard) - self.samples_per_shard
        self.shard_offset_per_stream = np.cumsum([0] + [self._shard_stream.count(i) for i in range(len(self.specs))])
        self.spanner = st.Spanner(self.samples_per_shard)
        self._ready = np.zeros(len(self.shards), dtype=bool)
        self.non_iid = rank_streams is not None
        non_iid_parts = None
        if not self.non_iid:
            self.order_seed = shuffle_seed
            self.epoch_size, self.choose_per_stream = self._weigh(
                self.streams, self.samples_per_stream, shuffle_seed, "mosaic_dataloader.dataset.streams"
            )
            # IID: every shard is one piece (zero-sample shards too: get_sampling sees them, as in streaming).
            self.pieces_per_stream = [
                [(int(self.sample_offset_per_shard[k]), int(self.samples_per_shard[k]))
                 for k in range(self.shard_offset_per_stream[i], self.shard_offset_per_stream[i + 1])]
                for i in range(len(self.specs))
            ]
        else:
            plans = self._non_iid_plans(rank_streams)
            self.order_seed, self.epoch_size, self.choose_per_stream, blocks = plans[dp_rank]
            self.epoch_size_per_rank = [plan[1] for plan in plans]
            self.pieces_per_stream = [self._clip_pieces(i, block) for i, block in enumerate(blocks)]
            non_iid_parts = {
                "dp_world_size": dp_world_size,
                "ranks": [{"seed": s, "choose": c, "blocks": b} for s, _, c, b in plans],
            }
        self._fingerprint = fingerprint(
            streams=[
                {"index": h, "proportion": s.proportion, "repeat": s.repeat, "choose": s.choose}
                for h, s in zip(index_hashes, self.specs)
            ],
            seq_len=seq_len,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            shuffle_algo=shuffle_algo,
            shuffle_block_size=shuffle_block_size,
            canonical_nodes=1,
            **({"non_iid": non_iid_parts} if non_iid_parts else {}),
        )
        for spec, choose, n in zip(self.specs, self.choose_per_stream, samples_per_stream):
            logger.info(
                "MDS stream %s (%s): %d samples on disk, %d per epoch%s",
                spec.name, spec.local, n, choose, f" on dp_rank {dp_rank} (non-IID)" if self.non_iid else "",
            )
        logger.info(
            "Dataset %s: %d stream(s), %d shards, %d samples of %d tokens per epoch, shuffle=%s "
            "(%s, seed %d, block %d, 1 canonical node), fingerprint %s",
            self.name, len(self.specs), len(self.shards), self.epoch_size, seq_len + 1, shuffle,
            shuffle_algo, shuffle_seed, shuffle_block_size, self._fingerprint,
        )

    # -- set-up ------------------------------------------------------------------------------------
    def _weigh(self, streams: list[Stream], samples: np.ndarray, seed: int, where: str) -> tuple[int, list[int]]:
        """streaming's ``Stream.apply_weights``: the epoch size and each stream's samples per epoch."""
        try:
            # streaming divides by the total choose, which is 0 for an empty epoch (refused below).
            with np.errstate(divide="ignore", invalid="ignore"):
                epoch_size = int(self._st.Stream.apply_weights(streams, samples, None, seed))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if epoch_size < 1:
            raise ConfigError(
                f"The stream weights give an empty epoch ({where}: choose "
                f"{[int(s.choose) for s in streams]}); set a positive proportion/repeat/choose."
            )
        return epoch_size, [int(s.choose) for s in streams]

    def _non_iid_plans(self, rank_streams: dict[int | str, Sequence[StreamSpec]]) -> list[tuple]:
        """Per DP rank: (order seed, epoch size, choose per base stream, sample block per base stream).

        Computed for every rank on every rank (cheap: no data is read), so every rank validates the
        whole configuration and the fingerprint covers all ranks' plans.
        """
        names = [spec.name for spec in self.specs]
        world = self.dp_world_size
        for key in rank_streams:
            if key != "default" and not (isinstance(key, int) and 0 <= key < world):
                raise ConfigError(
                    f"mosaic_dataloader.dataset.non_iid_streams.dp_rank_{key}: there are only {world} "
                    f"data-parallel ranks (dp_rank_0 .. dp_rank_{world - 1})."
                )
        per_rank = [list(rank_streams.get(r, rank_streams.get("default", self.specs))) for r in range(world)]
        readers = [[r for r in range(world) if any(s.name == name for s in per_rank[r])] for name in names]
        offsets = np.concatenate([[0], np.cumsum(self.samples_per_stream)])
        for name, ranks in zip(names, readers):
            if not ranks:
                logger.warning("MDS stream %s is read by no data-parallel rank (non_iid_streams).", name)
        plans = []
        for r, specs in enumerate(per_rank):
            blocks: list[tuple[int, int] | None] = [None] * len(names)
            for spec in specs:
                i = names.index(spec.name)
                n, k, j = int(self.samples_per_stream[i]), len(readers[i]), readers[i].index(r)
                start, end = offsets[i] + n * j // k, offsets[i] + n * (j + 1) // k
                if end <= start:
                    raise DataError(
                        f"MDS stream '{spec.name}' has {n} samples, split over the {k} data-parallel ranks "
                        f"that read it (non_iid_streams): dp_rank {r} gets none. Let fewer ranks read it."
                    )
                blocks[i] = (int(start), int(end))
            seed = int(hashlib.sha256(f"{self.shuffle_seed}:dp_rank_{r}".encode()).hexdigest()[:8], 16) >> 1
            streams = [self._make_stream(spec) for spec in specs]
            samples = np.asarray([blocks[names.index(s.name)][1] - blocks[names.index(s.name)][0] for s in specs], np.int64)
            epoch, chosen = self._weigh(streams, samples, seed, f"mosaic_dataloader.dataset.non_iid_streams (dp_rank {r})")
            choose = [0] * len(names)
            for spec, c in zip(specs, chosen):
                choose[names.index(spec.name)] = c
            plans.append((seed, epoch, choose, blocks))
        return plans

    def _clip_pieces(self, stream_id: int, block: tuple[int, int] | None) -> list[tuple[int, int]]:
        """The stream's shards cut to the sample range ``block`` = [start, end) (non-zero pieces only)."""
        if block is None:
            return []
        pieces = []
        for k in range(self.shard_offset_per_stream[stream_id], self.shard_offset_per_stream[stream_id + 1]):
            lo = max(block[0], int(self.sample_offset_per_shard[k]))
            hi = min(block[1], int(self.sample_offset_per_shard[k] + self.samples_per_shard[k]))
            if hi > lo:
                pieces.append((lo, hi - lo))
        return pieces

    def _make_stream(self, spec: StreamSpec) -> Stream:
        try:
            stream = self._st.Stream(
                remote=spec.remote, local=spec.local, proportion=spec.proportion, repeat=spec.repeat,
                choose=spec.choose,
            )
        except ValueError as e:
            raise ConfigError(f"MDS stream '{spec.name}' ({spec.setting}): {e}") from None
        # The defaults StreamingDataset applies (no split, no hash validation on read, keep zips).
        stream.apply_default(
            {"split": None, "download_retry": 2, "download_timeout": 60.0, "validate_hash": None,
             "keep_zip": False}
        )
        return stream

    @staticmethod
    def _fetch_index(stream: Stream, spec: StreamSpec) -> None:
        """Download ``index.json`` of a remote stream into ``local`` unless it is cached there.

        A cached ``index.json`` is used as is (as streaming does): a new dataset at the same remote
        needs a fresh ``local``. Under the stream directory's lock, the file is downloaded to
        ``index.json.tmp`` and renamed, so another rank never reads a partial index.
        """
        from filelock import FileLock

        path = os.path.join(spec.local, "index.json")
        if os.path.isfile(path):
            logger.info("MDS stream %s: using the cached %s of %s", spec.name, path, spec.remote)
            return
        os.makedirs(spec.local, exist_ok=True)
        with FileLock(os.path.join(spec.local, DECOMPRESS_LOCK)):
            if os.path.isfile(path):
                return
            tmp = path + ".tmp"
            if os.path.exists(tmp):  # left by an interrupted run; streaming would keep it as is
                os.remove(tmp)
            try:
                stream._download_file("index.json", "index.json.tmp")
            except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
                raise DataError(_remote_error("download index.json of", spec.remote, e, spec.remote_setting)) from e
            os.replace(tmp, path)
            try:  # optional: lets check_tokenizer_matches see how the data was tokenized
                stream._download_file(CONVERSION_FILE, CONVERSION_FILE + ".tmp")
                os.replace(os.path.join(spec.local, CONVERSION_FILE + ".tmp"), os.path.join(spec.local, CONVERSION_FILE))
            except Exception as e:
                logger.info("MDS stream %s: no %s at %s (%s)", spec.name, CONVERSION_FILE, spec.remote, type(e).__name__)
        logger.info("MDS stream %s: downloaded %s/index.json into %s", spec.name, spec.remote, spec.local)

    def _load_shards(self, stream: Stream, spec: StreamSpec) -> list[Any]:
        index_path = os.path.join(spec.local, "index.json")
        try:
            shards = stream.get_shards(self._st.World(1, 1, 1, 0), allow_unsafe_types=False)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"MDS index {index_path} ({spec.setting}) describes shards streaming cannot read "
                f"({type(e).__name__}: {e})."
            ) from None
        for shard_id, shard in enumerate(shards):
            if getattr(shard, "column_names", None) is None or TOKENS_COLUMN not in shard.column_names:
                raise DataError(
                    f"MDS shard {shard_id} of {index_path} has no '{TOKENS_COLUMN}' column (format "
                    f"{type(shard).__name__}, columns {getattr(shard, 'column_names', None)}); this "
                    f"loader reads token samples written by scripts/mds_convert.py."
                )
            encoding = shard.column_encodings[shard.column_names.index(TOKENS_COLUMN)]
            if not encoding.startswith("ndarray"):
                raise DataError(
                    f"MDS shard {shard_id} of {index_path}: column '{TOKENS_COLUMN}' is '{encoding}'; "
                    f"only ndarray token columns are supported (bytes columns carry no dtype)."
                )
            fixed = _fixed_sample_len(encoding)
            if fixed is not None and fixed != self.seq_len + 1:
                raise DataError(
                    f"MDS stream '{spec.name}' ({spec.local}) holds samples of {fixed} tokens (seq_len "
                    f"{fixed - 1}), but {self.seq_len_key} = {self.seq_len} needs {self.seq_len + 1}. "
                    f"Convert the data again with --seq-len {self.seq_len}, or set {self.seq_len_key} = {fixed - 1}."
                )
            self._check_shard_files(shard, spec)
        return shards

    @staticmethod
    def _check_shard_files(shard: Any, spec: StreamSpec) -> None:
        """A shard is usable if its raw file, or its compressed file, is there with the indexed size.

        For a remote stream, a missing file is fine (downloaded on first use); a cached file with
        the wrong size is not."""
        problems = []
        for info in (shard.raw_data, shard.zip_data):
            if info is None:
                continue
            path = os.path.join(spec.local, info.basename)
            if not os.path.isfile(path):
                problems.append(f"missing {path}")
                continue
            size = os.path.getsize(path)
            if size != info.bytes:
                raise DataError(
                    f"MDS shard {path} has {size} bytes but index.json says {info.bytes}: it is "
                    f"truncated or was modified ({spec.setting} = '{spec.local}'). Re-run the conversion."
                )
            return
        if spec.remote:
            return
        raise DataError(
            f"MDS shard file missing: {' and '.join(problems)} (listed in "
            f"{os.path.join(spec.local, 'index.json')}, {spec.setting} = '{spec.local}'). Restore it "
            f"or re-run the conversion; the loader does not skip shards."
        )

    # -- GlobalOrderLoader -------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.epoch_size

    @property
    def data_fingerprint(self) -> str:
        return self._fingerprint

    def resample(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Shuffle units and sample ids of one epoch: ``StreamingDataset.resample_streams`` (0.13.0).

        Each shard contributes ``choose`` samples (streaming's ``get_sampling``): whole repeats of the
        shard, then a seeded random subset for the fractional part.
        """
        rng = np.random.default_rng(self.order_seed + epoch)
        units: list[int] = []
        ids: list[np.ndarray] = []
        for stream_choose, pieces in zip(self.choose_per_stream, self.pieces_per_stream):
            if not pieces:
                continue
            sizes = np.asarray([size for _, size in pieces], np.int64)
            chosen = self._st.get_sampling(sizes, stream_choose, 1, self.order_seed, epoch, self.shuffle)
            for (offset, size), choose in zip(pieces, chosen):
                if not size:
                    continue
                full, part = divmod(int(choose), int(size))
                units += [int(size)] * full + ([part] if part else [])
                ids += [offset + np.arange(size)] * full
                if part:
                    ids.append(np.sort(offset + rng.choice(size, part, False)))
        return np.asarray(units, np.int64), np.concatenate(ids).astype(np.int64)

    def rank_indices(self, consumed: int) -> range:
        """IID: this rank's block of the global batch. Non-IID: the next ``local_batch_size`` positions
        of this rank's own order (every rank has read ``consumed / dp_world_size`` samples)."""
        if not self.non_iid:
            return super().rank_indices(consumed)
        start = consumed // self.dp_world_size
        return range(start, start + self.local_batch_size)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.non_iid:  # kept identical on every rank: every rank's epoch size, and the DP degree
            state[self.state_key].update(num_samples=list(self.epoch_size_per_rank), dp_world_size=self.dp_world_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict and self.non_iid and self.state_key in state_dict:
            saved = state_dict[self.state_key].get("dp_world_size")
            if saved != self.dp_world_size:
                raise DataError(
                    f"Dataset {self.name}: mosaic_dataloader.dataset.non_iid_streams gives each data-parallel "
                    f"rank its own sample plan, so it resumes only with the DP degree it was saved with "
                    f"({saved if saved is not None else 'a checkpoint without non_iid_streams'}); this run has "
                    f"{self.dp_world_size}. Resume with the same DP degree, or set "
                    f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data deliberately."
                )
        super().load_state_dict(state_dict)

    def epoch_order(self, epoch: int) -> np.ndarray:
        units, sample_ids = self.resample(epoch)
        if not self.shuffle:
            return sample_ids
        perm = self._st.get_shuffle(self.shuffle_algo, units, 1, self.order_seed, epoch, self.shuffle_block_size)
        return sample_ids[perm]

    def stream_of(self, sample_id: int) -> int:
        """Index (in :attr:`specs`) of the stream a sample id belongs to."""
        shard_id, _ = self.spanner[sample_id]
        return self._shard_stream[shard_id]

    def _prepare(self, shard_id: int) -> None:
        """Download and/or decompress a shard (streaming's ``Stream.prepare_shard``), once.

        Remote streams download on demand: a shard is fetched the first time this rank reads one of
        its samples (into ``local``, where other ranks and later runs find it). Its ``xxh64`` hash
        from ``index.json`` is checked when the index has one for every shard; a file that fails is
        deleted and the read raises DataError.

        Ranks on one node may reach the same shard together. streaming writes ``<raw>.tmp`` and
        renames it, so two writers would share that temporary file. One file lock per stream
        directory (``DECOMPRESS_LOCK``) serialises downloads and decompression. The directory must
        be writable.
        """
        shard = self.shards[shard_id]
        spec = self.specs[self._shard_stream[shard_id]]
        raw = os.path.join(spec.local, shard.raw_data.basename)
        if not os.path.isfile(raw):
            from filelock import FileLock

            with FileLock(os.path.join(spec.local, DECOMPRESS_LOCK)):
                if not os.path.isfile(raw):
                    logger.debug("Preparing MDS shard %s of stream %s", shard.raw_data.basename, spec.name)
                    try:
                        self.streams[self._shard_stream[shard_id]].prepare_shard(shard)
                    except Exception as e:  # download (boto3), checksum (ValueError), decompression
                        for info in (shard.raw_data, shard.zip_data):
                            if spec.remote and info is not None and os.path.isfile(os.path.join(spec.local, info.basename)):
                                os.remove(os.path.join(spec.local, info.basename))
                        if not spec.remote:
                            raise DataError(f"MDS shard {raw}: cannot prepare it ({type(e).__name__}: {e}).") from e
                        raise DataError(
                            _remote_error(f"fetch shard {shard.raw_data.basename} of", spec.remote, e, spec.remote_setting)
                        ) from e
        self._ready[shard_id] = True

    def sample(self, index: int) -> np.ndarray:
        shard_id, row = self.spanner[index]
        if not self._ready[shard_id]:
            self._prepare(shard_id)
        shard = self.shards[shard_id]
        path = os.path.join(self.specs[self._shard_stream[shard_id]].local, shard.raw_data.basename)
        try:
            tokens = shard[row][TOKENS_COLUMN]
        except FileNotFoundError:
            raise DataError(f"MDS shard file disappeared while training: {path}") from None
        except (ValueError, IndexError, TypeError) as e:
            raise DataError(f"MDS shard {path}, sample {row}: cannot decode ({type(e).__name__}: {e}).") from None
        if tokens.shape != (self.seq_len + 1,):
            raise DataError(
                f"MDS shard {path}, sample {row} has shape {tokens.shape}; {self.seq_len_key} = "
                f"{self.seq_len} needs ({self.seq_len + 1},). Convert the data with --seq-len {self.seq_len}."
            )
        return tokens


# ---------------------------------------------------------------------------------------------------
# From the job config
# ---------------------------------------------------------------------------------------------------


def stream_specs(dataset) -> list[StreamSpec]:
    """StreamSpecs from ``[mosaic_dataloader.dataset]``: its ``streams`` table, or its ``local`` path."""
    prefix = "mosaic_dataloader.dataset"
    if bool(dataset.local) == bool(dataset.streams):
        raise ConfigError(
            f"Set exactly one of {prefix}.local (one MDS directory) and {prefix}.streams.<name> (a "
            f"mixture); got local = {dataset.local!r} and streams = {sorted(dataset.streams)}."
        )
    if dataset.local:
        return [StreamSpec(name="default", local=dataset.local, setting=f"{prefix}.local")]
    specs = []
    specs = [
        _parse_stream(name, fields, f"{prefix}.streams.{name}", STREAM_KEYS) for name, fields in dataset.streams.items()
    ]
    return specs


NON_IID_KEYS = ("proportion", "repeat", "choose")


def non_iid_rank_streams(dataset, specs: Sequence[StreamSpec]) -> dict[int | str, list[StreamSpec]] | None:
    """``[mosaic_dataloader.dataset.non_iid_streams.<dp_rank_N | default>.<stream>]`` -> StreamSpecs per
    rank key (an int N, or ``"default"``); None when the table is empty (IID). Each entry names base
    streams and may override their weights; everything else is inherited from the base stream."""
    prefix = "mosaic_dataloader.dataset.non_iid_streams"
    if not dataset.non_iid_streams:
        return None
    if not dataset.streams:
        raise ConfigError(f"{prefix} needs mosaic_dataloader.dataset.streams.<name> to refer to.")
    base = {spec.name: spec for spec in specs}
    out: dict[int | str, list[StreamSpec]] = {}
    for rank_key, table in dataset.non_iid_streams.items():
        match = re.fullmatch(r"dp_rank_(\d+)", rank_key)
        if rank_key != "default" and not match:
            raise ConfigError(f"`{prefix}.{rank_key}`: keys are dp_rank_<N> or default, got '{rank_key}'.")
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"`{prefix}.{rank_key}` must be a non-empty table of stream names ({sorted(base)}).")
        rank_specs = []
        for name, fields in table.items():
            key = f"{prefix}.{rank_key}.{name}"
            if name not in base:
                raise ConfigError(f"`{key}`: no stream '{name}' in mosaic_dataloader.dataset.streams ({sorted(base)}).")
            if not isinstance(fields, dict):
                raise ConfigError(f"`{key}` must be a table of {list(NON_IID_KEYS)}, got {fields!r}.")
            unknown = sorted(set(fields) - set(NON_IID_KEYS))
            if unknown:
                raise ConfigError(
                    f"Unknown key(s) {unknown} in `{key}`; a rank may override only {list(NON_IID_KEYS)} "
                    f"(local/remote are the base stream's)."
                )
            for weight, value in fields.items():
                if isinstance(value, bool) or not isinstance(value, (int,) if weight == "choose" else (int, float)):
                    raise ConfigError(f"`{key}.{weight}` must be a number, got {type(value).__name__} {value!r}.")
            # An override of one weight replaces the base stream's weight (they are alternatives).
            weights = {w: getattr(base[name], w) for w in NON_IID_KEYS} if not fields else dict.fromkeys(NON_IID_KEYS)
            weights.update(fields)
            rank_specs.append(dataclasses.replace(base[name], setting=base[name].setting, **weights))
        out["default" if rank_key == "default" else int(match.group(1))] = rank_specs
    return out


def _common_hash(shards: Sequence[Any]) -> str | None:
    """``SHARD_HASH`` if ``index.json`` has it for every shard file (then downloads are checked)."""
    for shard in shards:
        for raw_info, zip_info in shard.file_pairs:
            for info in (raw_info, zip_info):
                if info is not None and SHARD_HASH not in (info.hashes or {}):
                    logger.warning("MDS index has no %s hash for %s: downloads are not verified.", SHARD_HASH, info.basename)
                    return None
    return SHARD_HASH


def _parse_stream(name: str, fields: Any, key: str, allowed: Sequence[str]) -> StreamSpec:
    """One ``[<key>]`` stream table -> StreamSpec, with errors naming ``key``."""
    if not isinstance(fields, dict):
        raise ConfigError(f"`{key}` must be a table of {list(allowed)}, got {fields!r}.")
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in `{key}`; valid keys: {list(allowed)}.")
    remote = fields.get("remote")
    if remote is not None and (not isinstance(remote, str) or "://" not in remote):
        raise ConfigError(f"`{key}.remote` must be a URL such as 's3://bucket/prefix', got {remote!r}.")
    local = fields.get("local")
    if not isinstance(local, str) or not local:
        raise ConfigError(
            f"`{key}.local` must be the path of an MDS directory (the download cache when "
            f"`{key}.remote` is set), got {local!r}."
        )
    for weight, types_ in (("proportion", (int, float)), ("repeat", (int, float)), ("choose", (int,))):
        value = fields.get(weight)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types_)):
            raise ConfigError(f"`{key}.{weight}` must be a number, got {type(value).__name__} {value!r}.")
    return StreamSpec(
        name=name, local=local, proportion=fields.get("proportion"), repeat=fields.get("repeat"),
        choose=fields.get("choose"), setting=f"{key}.local", remote=remote or None,
    )


def check_tokenizer_matches(specs: Sequence[StreamSpec], hf_assets_path: str | None) -> None:
    """Refuse data tokenized with another tokenizer than ``model.hf_assets_path`` (when recorded)."""
    if not hf_assets_path:
        return
    configured = tokenizer_sha256(hf_assets_path)
    if configured is None:
        return
    for spec in specs:
        conversion = Path(spec.local) / CONVERSION_FILE
        if not conversion.is_file():
            continue
        recorded = json.loads(conversion.read_text()).get("tokenizer", {})
        if recorded.get("tokenizer_json_sha256") not in (None, configured):
            raise DataError(
                f"MDS stream '{spec.name}' ({spec.local}) was tokenized with {recorded.get('path')} "
                f"(tokenizer.json sha256 {recorded['tokenizer_json_sha256'][:12]}...), but "
                f"model.hf_assets_path = '{hf_assets_path}' has another tokenizer.json "
                f"({configured[:12]}...). Training would read the ids as other tokens. Point "
                f"model.hf_assets_path at the conversion's tokenizer or convert the data again."
            )


def build_mds_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> MDSLoader:
    """``training.dataset = "mds"``: the loader configured by ``[mosaic_dataloader]``."""
    cfg = job_config.mosaic_dataloader
    if cfg.num_workers != 0:
        raise ConfigError(
            f"mosaic_dataloader.num_workers = {cfg.num_workers}: only 0 is supported yet (samples are "
            f"read in the training process). Set it to 0."
        )
    if cfg.dataset.predownload != -1:
        raise ConfigError(
            f"mosaic_dataloader.dataset.predownload = {cfg.dataset.predownload}: prefetching is not "
            f"implemented yet (local shards are read on demand, TODO(mds-remote)). Leave it at -1."
        )
    specs = stream_specs(cfg.dataset)
    rank_streams = non_iid_rank_streams(cfg.dataset, specs)
    loader = MDSLoader(
        streams=specs,
        seq_len=job_config.training.seq_len,
        local_batch_size=job_config.training.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        shuffle=cfg.dataset.shuffle,
        shuffle_seed=cfg.dataset.shuffle_seed,
        shuffle_algo=cfg.dataset.shuffle_algo,
        shuffle_block_size=cfg.dataset.shuffle_block_size,
        name=job_config.training.dataset,
        rank_streams=rank_streams,
    )
    # After the loader: it downloads a remote stream's index.json and conversion.json into local.
    check_tokenizer_matches(specs, getattr(job_config.model, "hf_assets_path", None))
    return loader


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------

VALIDATION_KEYS = ("local", "remote")


class MDSValidationLoader(MDSLoader):
    """A finite pass over validation MDS streams: every sample once, in index order, no shuffling.

    Streams are concatenated in config order. Each ``next()`` is one micro-batch: the ranks together
    take ``dp_world_size * local_batch_size`` consecutive samples, rank ``r`` the ``r``-th block (as
    in training). Every pass yields ``num_samples // (dp_world_size * local_batch_size)`` batches on
    every rank, so all ranks stop together (torchtitan's ``validation.steps = -1`` would hang on
    uneven counts); the remainder is left out, and logged. Each ``iter()`` starts again at sample 0,
    so every validation run sees the same samples. No checkpoint state.
    """

    state_key = "mds_validation"
    seq_len_key = "validation.seq_len"

    def __init__(self, **kwargs):
        super().__init__(shuffle=False, **kwargs)
        global_batch = self.local_batch_size * self.dp_world_size
        self.steps = self.num_samples // global_batch
        if self.steps == 0:
            raise DataError(
                f"Validation data has {self.num_samples} samples, fewer than one global batch of "
                f"{global_batch} (validation.local_batch_size {self.local_batch_size} x {self.dp_world_size} "
                f"DP ranks). Use more validation data or a smaller validation.local_batch_size."
            )
        left = self.num_samples - self.steps * global_batch
        if left:
            logger.warning(
                "Validation: %d batches of %d samples per pass; the last %d of %d samples are not used "
                "(every rank must run the same number of batches).", self.steps, global_batch, left, self.num_samples,
            )

    def __iter__(self) -> Iterator[tuple[dict[str, Any], Any]]:
        import torch

        for step in range(self.steps):
            consumed = step * self.local_batch_size * self.dp_world_size
            rows = [self.sample(self.global_index_to_sample(g)) for g in self.rank_indices(consumed)]
            batch = torch.from_numpy(np.stack(rows).astype(np.int64))
            yield {"input": batch[:, :-1]}, batch[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def build_mds_validation_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> MDSValidationLoader:
    """``validation.dataset = "mds"``: a finite, unshuffled, DP-partitioned pass over
    ``[mosaic_dataloader.validation_streams.<name>]`` (``local``, optional ``remote``), with
    ``validation.seq_len`` and ``validation.local_batch_size``. For torchtitan's Validator
    (``build_validator_fn``); see :class:`MDSValidationLoader`."""
    validation = job_config.validation
    prefix = "mosaic_dataloader.validation_streams"
    if validation.dataset != "mds":
        raise ConfigError(f"build_mds_validation_loader needs validation.dataset = 'mds', got '{validation.dataset}'.")
    streams = job_config.mosaic_dataloader.validation_streams
    if not streams:
        raise ConfigError(
            f"validation.dataset = 'mds' needs at least one [{prefix}.<name>] table with `local` (and "
            f"optionally `remote`)."
        )
    specs = [_parse_stream(name, fields, f"{prefix}.{name}", VALIDATION_KEYS) for name, fields in streams.items()]
    loader = MDSValidationLoader(
        streams=specs,
        seq_len=validation.seq_len,
        local_batch_size=validation.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        name="mds_validation",
    )
    check_tokenizer_matches(specs, getattr(job_config.model, "hf_assets_path", None))
    return loader
