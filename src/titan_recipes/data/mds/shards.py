"""The shards of an MDS stream mixture: index and shard readers, remote download, hash checks, decompression.

:class:`ShardSet` opens every stream's ``index.json`` with streaming's ``Stream`` (downloading it for a
remote stream, :func:`fetch_index`), checks the shards against what the loader reads (a ``tokens``
layout of :mod:`~titan_recipes.data.mds.layouts`), numbers all samples of all streams ``0 .. total - 1`` in stream
and shard order, prepares a shard (download and/or decompress, under :data:`DECOMPRESS_LOCK`) on its
first use and reads token samples with their integrity checks. :class:`Predownload` runs that
preparation ahead of the reads in a background thread (``dataset.predownload``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ...errors import ConfigError, DataError
from ...prepare.manifest import check_prepared_mds
from ..integrity import VALIDATE_HASH_HINT, check_mds_shard, check_token_ids
from .compat import remote_error
from .format import CONVERSION_FILE, SHARD_HASH, converter_windows_seq_len, read_index
from .layouts import Layout, detect_layout
from .streams import StreamSpec

if TYPE_CHECKING:
    from streaming.base.stream import Stream

logger = logging.getLogger(__name__)

DECOMPRESS_LOCK = ".decompress.lock"
"""Lock file the loader creates in a compressed stream's directory while decompressing shards."""


def make_stream(st: Any, spec: StreamSpec) -> Stream:
    """streaming's ``Stream`` for ``spec`` (``st``: :func:`~.compat.import_streaming`), with StreamingDataset's defaults."""
    try:
        stream = st.Stream(
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


def fetch_index(stream: Stream, spec: StreamSpec) -> None:
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
            raise DataError(remote_error("download index.json of", spec.remote, e, spec.remote_setting)) from e
        os.replace(tmp, path)
        try:  # optional: lets check_tokenizer_matches see how the data was tokenized
            stream._download_file(CONVERSION_FILE, CONVERSION_FILE + ".tmp")
            os.replace(os.path.join(spec.local, CONVERSION_FILE + ".tmp"), os.path.join(spec.local, CONVERSION_FILE))
        except Exception as e:
            logger.info("MDS stream %s: no %s at %s (%s)", spec.name, CONVERSION_FILE, spec.remote, type(e).__name__)
    logger.info("MDS stream %s: downloaded %s/index.json into %s", spec.name, spec.remote, spec.local)


def common_hash(shards: Sequence[Any]) -> str | None:
    """``SHARD_HASH`` if ``index.json`` has it for every shard file (then downloads are checked)."""
    for shard in shards:
        for raw_info, zip_info in shard.file_pairs:
            for info in (raw_info, zip_info):
                if info is not None and SHARD_HASH not in (info.hashes or {}):
                    logger.warning("MDS index has no %s hash for %s: downloads are not verified.", SHARD_HASH, info.basename)
                    return None
    return SHARD_HASH


class ShardSet:
    """Every shard of the streams ``specs``, with samples numbered globally in stream and shard order.

    ``seq_len`` is the training window (``seq_len + 1`` tokens); ``seq_len_key`` names the setting it
    comes from in error messages. ``token_encoding_type`` is the dtype of ``bytes`` token columns. Index files are read (and, for remote streams, fetched)
    here; shard files are prepared on first use (:meth:`prepare`).
    """

    def __init__(self, st: Any, specs: Sequence[StreamSpec], seq_len: int, seq_len_key: str,
                 token_encoding_type: str = "int64"):
        self.specs = list(specs)
        self.seq_len = seq_len
        self.seq_len_key = seq_len_key
        self.token_encoding_type = token_encoding_type
        self.layouts: list[Layout] = []
        """Each stream's layout (:func:`~.layouts.detect_layout`)."""
        self.window_len: list[int | None] = []
        """Per stream: ``L + 1`` when it holds windows written by scripts/mds_convert.py for seq_len ``L``
        (consecutive samples overlap by one token), else None."""
        self.streams: list[Stream] = []
        self.shards: list[Any] = []
        self.shard_stream: list[int] = []
        """Index (in ``specs``) of each shard's stream."""
        self.index_hashes: list[str] = []
        """sha256 of each stream's ``index.json`` (for the data fingerprint)."""
        samples_per_stream = []
        for i, spec in enumerate(self.specs):
            stream = make_stream(st, spec)
            if spec.remote:
                fetch_index(stream, spec)
            index = read_index(spec.local, spec.setting)
            self.index_hashes.append(hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest())
            # A directory written by `titan-recipes prepare mds` must still hold the index it wrote.
            check_prepared_mds(spec.local, self.index_hashes[-1], f"MDS stream '{spec.name}' ({spec.setting})")
            shards, layout = self._load_shards(st, stream, spec)
            self.layouts.append(layout)
            seq_len = None if layout.kind != "tokens" else converter_windows_seq_len(
                spec.local, layout.fixed_len, f"MDS stream '{spec.name}' ({spec.setting})")
            self.window_len.append(None if seq_len is None else seq_len + 1)
            # Downloads are hash-checked whenever index.json has hashes; local shards with validate_hash
            # (streaming never checks a local raw shard: integrity.check_mds_shard does, in prepare).
            stream.validate_hash = spec.validate_hash or (common_hash(shards) if spec.remote else None)
            samples = sum(shard.samples for shard in shards)
            if not samples:
                raise DataError(
                    f"MDS stream '{spec.name}' ({spec.setting} = '{spec.local}') has no samples: "
                    f"{os.path.join(spec.local, 'index.json')} lists {len(shards)} empty shard(s)."
                )
            self.streams.append(stream)
            self.shards += shards
            self.shard_stream += [i] * len(shards)
            samples_per_stream.append(samples)
        self.samples_per_stream = np.asarray(samples_per_stream, np.int64)
        self.samples_per_shard = np.asarray([s.samples for s in self.shards], np.int64)
        self.sample_offset_per_shard = np.cumsum(self.samples_per_shard) - self.samples_per_shard
        self.shard_offset_per_stream = np.cumsum([0] + [self.shard_stream.count(i) for i in range(len(self.specs))])
        self.spanner = st.Spanner(self.samples_per_shard)
        """Global sample id -> (shard id, row in the shard)."""
        self.ready = np.zeros(len(self.shards), dtype=bool)
        """Shards prepared and checked in this process."""

    def _load_shards(self, st: Any, stream: Stream, spec: StreamSpec) -> list[Any]:
        index_path = os.path.join(spec.local, "index.json")
        try:
            shards = stream.get_shards(st.World(1, 1, 1, 0), allow_unsafe_types=False)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"MDS index {index_path} ({spec.setting}) describes shards streaming cannot read "
                f"({type(e).__name__}: {e})."
            ) from None
        layout = None
        for shard_id, shard in enumerate(shards):
            where = f"MDS shard {shard_id} of {index_path} ({spec.setting})"
            found = detect_layout(getattr(shard, "column_names", None), getattr(shard, "column_encodings", None),
                                  where=where, token_encoding_type=self.token_encoding_type)
            if layout is not None and found != layout:
                raise DataError(
                    f"{where} is {found.describe()}, but the stream's first shard is {layout.describe()}: one "
                    f"stream must have one layout. Split it into two streams."
                )
            layout = found
            self._check_shard_files(shard, spec)
        return shards, layout

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

    def stream_of(self, sample_id: int) -> int:
        """Index (in :attr:`specs`) of the stream a sample id belongs to."""
        shard_id, _ = self.spanner[sample_id]
        return self.shard_stream[shard_id]

    def prepare(self, shard_id: int) -> None:
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
        spec = self.specs[self.shard_stream[shard_id]]
        raw = os.path.join(spec.local, shard.raw_data.basename)
        if not os.path.isfile(raw):
            from filelock import FileLock

            with FileLock(os.path.join(spec.local, DECOMPRESS_LOCK)):
                if not os.path.isfile(raw):
                    logger.debug("Preparing MDS shard %s of stream %s", shard.raw_data.basename, spec.name)
                    try:
                        self.streams[self.shard_stream[shard_id]].prepare_shard(shard)
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
                            remote_error(f"fetch shard {shard.raw_data.basename} of", spec.remote, e, spec.remote_setting)
                        ) from e
        check_mds_shard(raw, shard, spec.validate_hash, f"{spec.setting} = '{spec.local}'", spec.remote)  # header, size, hash
        self.ready[shard_id] = True

    def fixed_len_of_shard(self, shard_id: int) -> int | None:
        """Tokens per sample of a shard when its encoding fixes them, else None (a count needs a read)."""
        return self.layouts[self.shard_stream[shard_id]].fixed_len

    def _row(self, index: int) -> tuple[dict[str, Any], str, int]:
        """The decoded sample ``index`` (its shard prepared first), the shard's path and the row."""
        shard_id, row = self.spanner[index]
        if not self.ready[shard_id]:
            self.prepare(shard_id)
        shard = self.shards[shard_id]
        path = os.path.join(self.specs[self.shard_stream[shard_id]].local, shard.raw_data.basename)
        try:
            return shard[row], path, row
        except FileNotFoundError:
            raise DataError(f"MDS shard file disappeared while training: {path}") from None
        except (ValueError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise DataError(f"MDS shard {path}, sample {row}: cannot decode ({type(e).__name__}: {e}).") from None

    def read_tokens(self, index: int, vocab_size: int | None = None) -> np.ndarray:
        """Token ids of sample ``index`` of a token layout, as written (any length); ids checked against
        ``vocab_size`` (None: unchecked)."""
        sample, path, row = self._row(index)
        stream = self.shard_stream[self.spanner[index][0]]
        tokens = self.layouts[stream].tokens(sample, f"MDS shard {path}, sample {row}")
        spec = self.specs[stream]
        check_token_ids(tokens, vocab_size, f"MDS shard {path}, sample {row}", "Restore the shard or re-run "
                        "the conversion (scripts/mds_convert.py). " + ("" if spec.validate_hash else VALIDATE_HASH_HINT))
        return tokens

    def read_text(self, index: int) -> str:
        """The text of sample ``index`` of a text layout."""
        sample, path, row = self._row(index)
        text = sample[self.layouts[self.shard_stream[self.spanner[index][0]]].column]
        if not isinstance(text, str):
            raise DataError(f"MDS shard {path}, sample {row}: the text column holds {type(text).__name__}, not str.")
        return text

    def read(self, index: int, vocab_size: int | None) -> np.ndarray:
        """Tokens of sample ``index`` read as one training window (``seq_len + 1`` tokens), checked."""
        tokens = self.read_tokens(index, vocab_size)
        if tokens.shape != (self.seq_len + 1,):
            shard_id, row = self.spanner[index]
            path = os.path.join(self.specs[self.shard_stream[shard_id]].local, self.shards[shard_id].raw_data.basename)
            raise DataError(
                f"MDS shard {path}, sample {row} has {len(tokens)} tokens, but the other samples of its shard "
                f"hold {self.seq_len_key} + 1 = {self.seq_len + 1}; a shard whose samples were counted before "
                f"has changed. Delete its token-count cache ({LENGTHS_HINT}) or restore the shard."
            )
        return tokens


LENGTHS_HINT = "the .titan_lengths directory beside index.json"


class Predownload:
    """``dataset.predownload``: a background thread that prepares (:meth:`ShardSet.prepare`) the shards
    of this rank's next samples while training runs, so reads find them ready. Failures there are
    logged and left to the read, which raises the DataError. The thread never crosses into a worker
    process (workers find the prepared shards in ``local``)."""

    def __init__(self, shards: ShardSet, name: str):
        self.shards = shards
        self.name = name
        self._pool: Any = None  # made on first use
        self._from = 0
        self.pending: dict[int, Any] = {}
        """Shard id -> future of the shards queued and not yet collected."""

    def ahead(self, consumed: int, end: int, step: int, shard_ids: Callable[[int], Iterable[int]]) -> None:
        """Collect finished preparations and queue the shards of the micro-batches that start at
        ``consumed, consumed + step, ... < end`` (``shard_ids(start)``: the shards of the one at ``start``)."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.name}-predownload")
            self._from = consumed
        for shard_id, future in list(self.pending.items()):
            if future.done():
                del self.pending[shard_id]
                if future.exception() is not None:
                    logger.warning("Predownload of MDS shard %d failed (%s); it will be retried when read.",
                                   shard_id, future.exception())
        for start in range(max(self._from, consumed), end, step):
            for shard_id in shard_ids(start):
                if not self.shards.ready[shard_id] and shard_id not in self.pending:
                    self.pending[shard_id] = self._pool.submit(self.shards.prepare, shard_id)
        self._from = max(self._from, end)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # a thread pool cannot cross into a worker process
        state.update(_pool=None, pending={})
        return state
