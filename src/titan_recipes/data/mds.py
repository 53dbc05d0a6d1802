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

Not in this slice: remote/S3 streams (TODO(mds-remote): download + cache eviction), ``non_iid_streams``
per DP rank, a validation loader, ``num_workers > 0``, read-speed benchmark. Those settings raise
ConfigError instead of being ignored.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
import types
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from ..config import ConfigError
from .common import DataError, GlobalOrderLoader, fingerprint

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
        decompress=decompress,
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


def iter_documents(path: Path) -> Iterator[str]:
    """The ``text`` field of each non-blank line of a JSONL (or .jsonl.gz) file, streamed."""
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{lineno}: not a JSON object with a 'text' field ({e})") from None
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: 'text' must be a string, got {type(text).__name__}")
            yield text


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
) -> MdsWriteSummary:
    """Tokenize JSONL documents and write packed samples of ``seq_len + 1`` tokens as MDS into ``out``.

    Documents get BOS and EOS and are packed across files in the order given; sample ``k`` is
    ``tokens[k*seq_len : k*seq_len + seq_len + 1]``. ``compression`` is None or ``"zstd"`` (or
    ``"zstd:<level>"``; any streaming compression works). ``size_limit`` is the uncompressed shard
    size (bytes or ``"64mb"``). ``out`` must be a local directory, empty or absent unless ``overwrite``.
    """
    from tqdm import tqdm
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from ..tokenizer import check_hf_assets_path

    st = import_streaming()
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("write_mds needs at least one input file")
    for path in inputs:
        if not path.is_file():
            raise DataError(f"Input file not found: {path}")
    out = Path(out)
    if "://" in str(out):
        raise ValueError(f"out must be a local directory in this version (TODO(mds-remote)), got {out}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"Output directory {out} exists and is not empty; pass overwrite=True (--overwrite).")
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
    with st.MDSWriter(
        columns=columns, out=str(out), compression=compression, size_limit=limit, hashes=[SHARD_HASH],
        exist_ok=overwrite,
    ) as writer:
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
    """One MDS stream as configured: a local directory and at most one weight."""

    name: str
    local: str
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    setting: str = ""
    """The config key it came from, for error messages (e.g. ``mosaic_dataloader.dataset.local``)."""


class MDSLoader(GlobalOrderLoader):
    """Micro-batches of MDS token samples in streaming's epoch order, cut globally by DP rank.

    Each epoch's order comes from streaming's own algorithm (weights -> per-shard sampling -> py1e
    shuffle with one canonical node), so it contains repeats when a stream is upsampled and leaves
    samples out when one is downsampled. ``num_samples`` is that epoch size, not the count on disk.
    """

    state_key = "mds"

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
            index = read_index(spec.local, spec.setting)
            index_hashes.append(hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest())
            stream = self._make_stream(spec)
            shards = self._load_shards(stream, spec)
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
        try:
            # streaming divides by the total choose, which is 0 for an empty epoch (refused below).
            with np.errstate(divide="ignore", invalid="ignore"):
                self.epoch_size = int(st.Stream.apply_weights(self.streams, self.samples_per_stream, None, shuffle_seed))
        except ValueError as e:
            raise ConfigError(f"mosaic_dataloader.dataset.streams: {e}") from None
        if self.epoch_size < 1:
            raise ConfigError(
                f"The stream weights give an empty epoch ({[s.name for s in self.specs]} choose "
                f"{[int(s.choose) for s in self.streams]}); set a positive proportion/repeat/choose."
            )
        self.choose_per_stream = [int(s.choose) for s in self.streams]
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
        )
        for spec, stream, n in zip(self.specs, self.streams, samples_per_stream):
            logger.info(
                "MDS stream %s (%s): %d samples on disk, %d per epoch (proportion %.4f, repeat %.3f)",
                spec.name, spec.local, n, int(stream.choose), float(stream.proportion), float(stream.repeat),
            )
        logger.info(
            "Dataset %s: %d stream(s), %d shards, %d samples of %d tokens per epoch, shuffle=%s "
            "(%s, seed %d, block %d, 1 canonical node), fingerprint %s",
            self.name, len(self.specs), len(self.shards), self.epoch_size, seq_len + 1, shuffle,
            shuffle_algo, shuffle_seed, shuffle_block_size, self._fingerprint,
        )

    # -- set-up ------------------------------------------------------------------------------------
    def _make_stream(self, spec: StreamSpec) -> Stream:
        try:
            stream = self._st.Stream(
                local=spec.local, proportion=spec.proportion, repeat=spec.repeat, choose=spec.choose
            )
        except ValueError as e:
            raise ConfigError(f"MDS stream '{spec.name}' ({spec.setting}): {e}") from None
        # The defaults StreamingDataset applies (no split, no hash validation on read, keep zips).
        stream.apply_default(
            {"split": None, "download_retry": 2, "download_timeout": 60.0, "validate_hash": None,
             "keep_zip": False}
        )
        return stream

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
                    f"{fixed - 1}), but training.seq_len = {self.seq_len} needs {self.seq_len + 1}. "
                    f"Convert the data again with --seq-len {self.seq_len}, or set training.seq_len = {fixed - 1}."
                )
            self._check_shard_files(shard, spec)
        return shards

    @staticmethod
    def _check_shard_files(shard: Any, spec: StreamSpec) -> None:
        """A shard is usable if its raw file, or its compressed file, is there with the indexed size."""
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
        rng = np.random.default_rng(self.shuffle_seed + epoch)
        units: list[int] = []
        ids: list[np.ndarray] = []
        for stream_id, stream in enumerate(self.streams):
            begin, end = self.shard_offset_per_stream[stream_id], self.shard_offset_per_stream[stream_id + 1]
            shard_ids = np.arange(begin, end)
            sizes = self.samples_per_shard[shard_ids]
            chosen = self._st.get_sampling(sizes, int(stream.choose), 1, self.shuffle_seed, epoch, self.shuffle)
            for shard_id, size, choose in zip(shard_ids, sizes, chosen):
                if not size:
                    continue
                full, part = divmod(int(choose), int(size))
                offset = self.sample_offset_per_shard[shard_id]
                units += [int(size)] * full + ([part] if part else [])
                ids += [offset + np.arange(size)] * full
                if part:
                    ids.append(np.sort(offset + rng.choice(size, part, False)))
        return np.asarray(units, np.int64), np.concatenate(ids).astype(np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        units, sample_ids = self.resample(epoch)
        if not self.shuffle:
            return sample_ids
        perm = self._st.get_shuffle(self.shuffle_algo, units, 1, self.shuffle_seed, epoch, self.shuffle_block_size)
        return sample_ids[perm]

    def stream_of(self, sample_id: int) -> int:
        """Index (in :attr:`specs`) of the stream a sample id belongs to."""
        shard_id, _ = self.spanner[sample_id]
        return self._shard_stream[shard_id]

    def _prepare(self, shard_id: int) -> None:
        """Decompress a compressed shard beside its zip file (streaming's Stream.prepare_shard), once.

        Ranks on one node may reach the same shard together. streaming writes ``<raw>.tmp`` and
        renames it, so two writers would share that temporary file. One file lock per stream
        directory (``DECOMPRESS_LOCK``) serialises them. The directory must be writable.
        """
        shard = self.shards[shard_id]
        spec = self.specs[self._shard_stream[shard_id]]
        raw = os.path.join(spec.local, shard.raw_data.basename)
        if not os.path.isfile(raw):
            from filelock import FileLock

            with FileLock(os.path.join(spec.local, DECOMPRESS_LOCK)):
                if not os.path.isfile(raw):
                    logger.debug("Decompressing MDS shard %s", os.path.join(spec.local, shard.zip_data.basename))
                    self.streams[self._shard_stream[shard_id]].prepare_shard(shard)
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
                f"MDS shard {path}, sample {row} has shape {tokens.shape}; training.seq_len = "
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
    for name, fields in dataset.streams.items():
        key = f"{prefix}.streams.{name}"
        if not isinstance(fields, dict):
            raise ConfigError(f"`{key}` must be a table of {list(STREAM_KEYS)}, got {fields!r}.")
        unknown = sorted(set(fields) - set(STREAM_KEYS))
        if unknown:
            raise ConfigError(f"Unknown key(s) {unknown} in `{key}`; valid keys: {list(STREAM_KEYS)}.")
        if fields.get("remote"):
            raise ConfigError(
                f"`{key}.remote` = {fields['remote']!r}: remote streams are not supported yet "
                f"(TODO(mds-remote)). Copy the data to local disk and set `{key}.local`."
            )
        local = fields.get("local")
        if not isinstance(local, str) or not local:
            raise ConfigError(f"`{key}.local` must be the path of an MDS directory, got {local!r}.")
        for weight, types_ in (("proportion", (int, float)), ("repeat", (int, float)), ("choose", (int,))):
            value = fields.get(weight)
            if value is not None and (isinstance(value, bool) or not isinstance(value, types_)):
                raise ConfigError(f"`{key}.{weight}` must be a number, got {type(value).__name__} {value!r}.")
        specs.append(
            StreamSpec(
                name=name, local=local, proportion=fields.get("proportion"), repeat=fields.get("repeat"),
                choose=fields.get("choose"), setting=f"{key}.local",
            )
        )
    return specs


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
    check_tokenizer_matches(specs, getattr(job_config.model, "hf_assets_path", None))
    return MDSLoader(
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
    )
