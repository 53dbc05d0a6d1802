"""Reading MDS: the training loader (IID and non-IID stream mixtures) and the validation loader."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...config import ConfigError
from ...tokenizer import tokenizer_path
from ..common import DataError, FinitePass, GlobalOrderLoader, Workers, fingerprint, training_workers
from ..integrity import VALIDATE_HASH_HINT, check_mds_shard, check_token_ids
from .compat import _remote_error, import_streaming
from .writer import (
    CONVERSION_FILE,
    SHARD_HASH,
    TOKENS_COLUMN,
    _fixed_sample_len,
    read_index,
    tokenizer_sha256,
)

if TYPE_CHECKING:
    from streaming.base.stream import Stream

logger = logging.getLogger(__name__)

DECOMPRESS_LOCK = ".decompress.lock"
"""Lock file the loader creates in a compressed stream's directory while decompressing shards."""
STREAM_KEYS = (
    "local", "remote", "split", "proportion", "repeat", "choose", "download_retry", "download_timeout",
    "validate_hash", "keep_zip",
)
"""streaming's ``Stream`` fields, accepted in ``[mosaic_dataloader.dataset.streams.<name>]``."""


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
    download_retry: int | None = None
    """Download attempts per file (streaming's default 2; streaming names it retry but counts attempts)."""
    download_timeout: float | None = None
    """Seconds allowed per shard download (streaming's default 60)."""
    validate_hash: str | None = None
    """Hash algorithm (one of streaming's) checked on every shard: a downloaded or compressed one before
    it is decompressed, and every raw shard file on its first use in each process (local data too:
    integrity.check_mds_shard). None: downloads are checked with xxh64 when the index lists it for every
    shard; local shards get only the structural checks."""
    keep_zip: bool | None = None
    """Keep a remote stream's compressed shards in ``local`` after decompressing (default False)."""

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
        workers: Workers | None = None,
        predownload: int = -1,
    ):
        super().__init__(
            name=name, local_batch_size=local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            workers=workers,
        )
        if predownload < -1:
            raise ConfigError(f"mosaic_dataloader.dataset.predownload must be -1 (off) or >= 0, got {predownload}.")
        self.predownload = max(predownload, 0)
        self._ahead: Any = None  # the predownload thread pool, made on first use (never pickled to workers)
        self._ahead_pending: dict[int, Any] = {}
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
            # Downloads are hash-checked whenever index.json has hashes; local shards with validate_hash
            # (streaming never checks a local raw shard: integrity.check_mds_shard does, in _prepare).
            stream.validate_hash = spec.validate_hash or (_common_hash(shards) if spec.remote else None)
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
                choose=spec.choose, download_retry=spec.download_retry, download_timeout=spec.download_timeout,
                keep_zip=spec.keep_zip,
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
                            raise DataError(
                                f"MDS shard {raw}: cannot prepare it ({type(e).__name__}: {e}). Its compressed file "
                                f"is corrupt or does not match index.json: restore it or re-run the conversion "
                                f"(scripts/mds_convert.py)."
                            ) from e
                        raise DataError(
                            _remote_error(f"fetch shard {shard.raw_data.basename} of", spec.remote, e, spec.remote_setting)
                        ) from e
        check_mds_shard(raw, shard, spec.validate_hash, f"{spec.setting} = '{spec.local}'", spec.remote)  # header, size, hash
        self._ready[shard_id] = True

    def before_batch(self, consumed: int) -> None:
        """``predownload``: queue the shards of this rank's next ``predownload`` samples for a
        background thread that downloads/decompresses them (``_prepare``), so reads find them ready.
        Failures there are logged and left to the read, which raises the DataError."""
        if not self.predownload:
            return
        if self._ahead is None:
            from concurrent.futures import ThreadPoolExecutor

            self._ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-predownload")
            self._ahead_from = consumed
        for shard_id, future in list(self._ahead_pending.items()):
            if future.done():
                del self._ahead_pending[shard_id]
                if future.exception() is not None:
                    logger.warning("Predownload of MDS shard %d failed (%s); it will be retried when read.",
                                   shard_id, future.exception())
        step = self.local_batch_size * self.dp_world_size
        batches_ahead = -(-self.predownload // self.local_batch_size)
        end = consumed + batches_ahead * step
        for start in range(max(self._ahead_from, consumed), end, step):
            for g in self.rank_indices(start):
                shard_id, _ = self.spanner[self.global_index_to_sample(g)]
                if not self._ready[shard_id] and shard_id not in self._ahead_pending:
                    self._ahead_pending[shard_id] = self._ahead.submit(self._prepare, shard_id)
        self._ahead_from = max(self._ahead_from, end)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # a thread pool cannot cross into a worker process
        state.update(_ahead=None, _ahead_pending={})
        return state

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
        spec = self.specs[self._shard_stream[shard_id]]
        check_token_ids(tokens, self.vocab_size, f"MDS shard {path}, sample {row}", "Restore the shard or re-run "
                        "the conversion (scripts/mds_convert.py). " + ("" if spec.validate_hash else VALIDATE_HASH_HINT))
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
    retry = fields.get("download_retry")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 1):
        # streaming 0.13 passes it to retry(num_attempts=...), which refuses 0.
        raise ConfigError(f"`{key}.download_retry` must be an integer >= 1 (streaming uses it as the number of "
                          f"download attempts), got {retry!r}.")
    for key_, types_, what in (("download_timeout", (int, float), "a number of seconds > 0"),
                               ("keep_zip", (bool,), "true or false"), ("split", (str,), "a subdirectory name")):
        value = fields.get(key_)
        if value is not None and (not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_)):
            raise ConfigError(f"`{key}.{key_}` must be {what}, got {type(value).__name__} {value!r}.")
    validate_hash = fields.get("validate_hash")
    if validate_hash is not None:
        import_streaming()
        from streaming.base.hashing import get_hashes

        if validate_hash not in get_hashes():
            raise ConfigError(
                f"`{key}.validate_hash` = {validate_hash!r} is not one of streaming's hashes {sorted(get_hashes())}."
            )
    split = fields.get("split")
    if split:  # streaming reads <local>/<split> and <remote>/<split>; resolved here once
        local = os.path.join(local, split)
        remote = remote.rstrip("/") + "/" + split if remote else remote
    return StreamSpec(
        name=name, local=local, proportion=fields.get("proportion"), repeat=fields.get("repeat"),
        choose=fields.get("choose"), setting=f"{key}.local", remote=remote or None,
        download_retry=fields.get("download_retry"), download_timeout=fields.get("download_timeout"),
        validate_hash=validate_hash, keep_zip=fields.get("keep_zip"),
    )


def check_tokenizer_matches(
    specs: Sequence[StreamSpec], hf_assets_path: str | None, setting: str = "model.hf_assets_path"
) -> None:
    """Refuse data tokenized with another tokenizer than the one at ``hf_assets_path`` (when recorded)."""
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
                f"{setting} = '{hf_assets_path}' has another tokenizer.json "
                f"({configured[:12]}...). Training would read the ids as other tokens. Point "
                f"{setting} at the conversion's tokenizer or convert the data again."
            )


def build_mds_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> MDSLoader:
    """``training.dataset = "mds"``: the loader configured by ``[mosaic_dataloader]``."""
    cfg = job_config.mosaic_dataloader
    workers = Workers(
        num_workers=cfg.num_workers, prefetch_factor=None if cfg.prefetch_factor == -1 else cfg.prefetch_factor,
        pin_memory=cfg.pin_memory, persistent_workers=cfg.persistent_workers, setting="mosaic_dataloader",
    )
    if training_workers(job_config) != Workers():
        raise ConfigError(
            "training.dataset = 'mds' takes its worker settings from [mosaic_dataloader] (num_workers, "
            "prefetch_factor, pin_memory, persistent_workers), not [training.dataloader]; move them there."
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
        workers=workers,
        predownload=cfg.dataset.predownload,
    )
    # After the loader: it downloads a remote stream's index.json and conversion.json into local.
    check_tokenizer_matches(specs, *tokenizer_path(job_config))
    return loader


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------

VALIDATION_KEYS = tuple(k for k in STREAM_KEYS if k not in ("proportion", "repeat", "choose"))


class MDSValidationLoader(FinitePass, MDSLoader):
    """A finite pass over validation MDS streams: every sample once, in index order, no shuffling.

    Streams are concatenated in config order; the pass is :class:`~titan_recipes.data.common.FinitePass`
    (equal batch counts on every rank, restarts at sample 0, no checkpoint state).
    """

    state_key = "mds_validation"
    seq_len_key = "validation.seq_len"

    def __init__(self, **kwargs):
        super().__init__(shuffle=False, **kwargs)
        self.init_finite_pass(
            "Validation data", "Use more validation data or a smaller validation.local_batch_size."
        )


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
    check_tokenizer_matches(specs, *tokenizer_path(job_config))
    return loader
