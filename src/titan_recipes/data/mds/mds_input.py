"""An existing MDS dataset as a converter input: its layout, and its samples as texts or token arrays.

``scripts/mds_convert.py`` accepts an MDS directory (local, or remote such as ``s3://bucket/prefix``)
besides JSONL/Parquet/text files, so a user with an llm-foundry dataset can re-tokenize it or re-pack
it to another ``seq_len``. The layouts accepted (:data:`~.layouts.ACCEPTED_LAYOUTS`) are the ones llm-foundry's
converters and our own writer produce:

* ``text: str``: each sample's text is one document (re-tokenized by the writer);
* ``tokens: ndarray:<int dtype>[:<shape>]``: samples of any length, concatenated into one token stream;
* ``tokens: bytes``: token ids as raw bytes of ``token_encoding_type`` (llm-foundry's key, default int64);
* our own output (``ndarray:int32:<L+1>`` windows with stride ``L``, ``conversion.json`` recording
  ``seq_len = L``): consecutive windows share one token, so each window after the first contributes
  its last ``L`` tokens only and the stream is rebuilt without duplicates.

Every shard is checked against ``index.json`` before it is decoded: its size, and its ``xxh64`` when the
index lists one (our converter always writes it; streaming's ``MDSWriter`` only with ``hashes=["xxh64"]``).
A remote input's cached shard that fails the check is downloaded again once; without a hash, a cached
shard of the right size is trusted, as streaming trusts it.

Samples are read in index order (shard order, row order) with streaming's own reader: ``Stream.get_shards``
lists the shards, ``MDSReader.decode_sample`` decodes a sample. A shard is read whole into memory once
(not one ``open`` per sample as ``shard[row]`` does); a single fixed-shape ndarray column is decoded
with one ``np.frombuffer``. The loader has its own reader of these layouts (``layouts.py``); this one
is kept self-contained on purpose (converter only, no loader state).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ...errors import DataError
from ..integrity import check_token_ids
from .compat import remote_error
from .layouts import Layout, detect_layout
from .format import CONVERSION_FILE, converter_windows_seq_len, read_index, sha256_file

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class MdsInput:
    """An MDS dataset given as a converter input.

    ``location`` is a local directory holding ``index.json`` or a remote directory (``s3://...``,
    endpoint from ``S3_ENDPOINT_URL``; the other schemes of streaming's downloader untested). A
    remote one is downloaded shard by shard into a cache directory (see :func:`open_mds_input`)."""

    location: str
    token_encoding_type: str = "int64"
    """dtype of the ids in a ``tokens: bytes`` column (llm-foundry's ``token_encoding_type``)."""

    @property
    def remote(self) -> str | None:
        return self.location.rstrip("/") if "://" in self.location else None

    def __str__(self) -> str:
        return self.location


def is_mds_input(source: Any) -> bool:
    """True for a remote URL or a local directory holding ``index.json``."""
    if isinstance(source, MdsInput):
        return True
    if not isinstance(source, (str, Path)):
        return False
    return "://" in str(source) or (Path(source) / "index.json").is_file()


def cache_dir_for(cache_root: str | Path, remote: str) -> Path:
    """Where a remote input is cached under ``--input-cache``: one sub-directory per URL (stable names)."""
    return Path(cache_root) / re.sub(r"[^A-Za-z0-9._-]+", "_", remote).strip("_")


class OpenedMds:
    """An :class:`MdsInput` whose index is read: :attr:`layout` is ``"text"`` or ``"tokens"``.

    ``local`` is the directory holding ``index.json`` (the cache of a remote input); with ``evict``,
    each downloaded shard is deleted once read (a temporary cache)."""

    def __init__(self, st: Any, source: MdsInput, local: Path, evict: bool = False):
        self.source, self.local, self.evict = source, Path(local), evict
        remote = source.remote
        # streaming's Stream does the downloads (and decompression) of a remote input; hashes are checked
        # here on the raw bytes (_checked), for local and remote inputs alike.
        self.stream = st.Stream(remote=remote, local=str(local))
        self.stream.apply_default({"split": None, "download_retry": 2, "download_timeout": 60.0,
                                   "validate_hash": None, "keep_zip": False})
        if remote is not None:
            self._download_metadata(remote)
        self.index_path = self.local / "index.json"
        read_index(self.local, str(source))  # DataError for a missing or corrupt index
        self.index_sha256 = sha256_file(self.index_path)
        try:
            self.shards = self.stream.get_shards(st.World(1, 1, 1, 0), allow_unsafe_types=False)
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"MDS input {source}: {self.index_path} describes shards streaming cannot read "
                f"({type(e).__name__}: {e}). Only MDS shards of safe column types can be converted."
            ) from None
        self.num_samples = sum(shard.samples for shard in self.shards)
        self.layout_spec = self._layout()
        self.layout, self.column, self.encoding = self.layout_spec.kind, self.layout_spec.column, self.layout_spec.encoding
        self.dtype: np.dtype | None = self.layout_spec.dtype
        self.window_seq_len = None if self.layout != "tokens" else converter_windows_seq_len(
            self.local, self.layout_spec.fixed_len, f"MDS input {source}")
        """``L`` when the samples are our own windows of ``L + 1`` tokens with stride ``L``, else None."""

    def __str__(self) -> str:
        return str(self.source)

    def _download_metadata(self, remote: str) -> None:
        """Fetch ``index.json`` (always: a cached one may belong to another dataset) and, if there is
        one, ``conversion.json`` into the cache."""
        self.local.mkdir(parents=True, exist_ok=True)
        for name in ("index.json", CONVERSION_FILE):
            tmp = name + ".tmp"
            try:
                self.stream._download_file(name, tmp)
            except Exception as e:  # boto3/botocore raise many types; all mean the same to the user
                if name == CONVERSION_FILE:
                    (self.local / name).unlink(missing_ok=True)
                    logger.info("MDS input %s has no %s (%s)", remote, name, type(e).__name__)
                    continue
                raise DataError(remote_error(f"download {name} of", remote, e, "--input-remote")) from e
            os.replace(self.local / tmp, self.local / name)
        logger.info("MDS input %s: index.json downloaded into %s", remote, self.local)

    def _columns(self) -> list[str]:
        shard = self.shards[0] if self.shards else None
        names = getattr(shard, "column_names", None) or []
        encodings = getattr(shard, "column_encodings", None) or []
        return [f"{n}:{e}" for n, e in zip(names, encodings)]

    def _layout(self) -> Layout:
        """The layout of shard 0 (:func:`~.layouts.detect_layout`, the loader's rules), the same in every shard."""
        if not self.shards:
            raise DataError(f"MDS input {self.source}: {self.index_path} lists no shards.")
        layouts = []
        for shard_id, shard in enumerate(self.shards):
            layout = detect_layout(getattr(shard, "column_names", None), getattr(shard, "column_encodings", None),
                                   where=f"MDS input {self.source} ({self.index_path}, shard {shard_id})",
                                   token_encoding_type=self.source.token_encoding_type,
                                   token_setting="--token-encoding-type")
            if layouts and layout != layouts[0]:
                raise DataError(
                    f"MDS input {self.source}: shard {shard_id} ({shard.raw_data.basename}) is {layout.describe()}, "
                    f"shard 0 is {layouts[0].describe()}: every shard must hold the same column."
                )
            layouts.append(layout)
        return layouts[0]

    def describe(self) -> dict[str, Any]:
        """What ``conversion.json`` records about this input."""
        out: dict[str, Any] = {
            "mds": str(self.source), "layout": self.layout, "column": f"{self.column}:{self.encoding}",
            "index_json_sha256": self.index_sha256, "samples": self.num_samples,
        }
        if self.encoding == "bytes":
            out["token_encoding_type"] = str(self.dtype)
        if self.window_seq_len is not None:
            out["overlapping_windows_of_seq_len"] = self.window_seq_len
        return out

    # ---------------------------------------------------------------- reading samples

    def _shard_bytes(self, shard_id: int) -> bytes:
        """The raw (uncompressed) bytes of a shard, checked against ``index.json`` (size, xxh64 if listed).

        Local input: the raw file, or the compressed file decompressed in memory (the input directory
        is never written). Remote input: the cached raw file, else a download (streaming's
        ``prepare_shard``: fetch, decompress) into the cache; a cached file that does not match the
        index (left by another dataset at the same URL) is downloaded again once."""
        shard = self.shards[shard_id]
        raw = self.local / shard.raw_data.basename
        if self.source.remote is None:
            zip_info = shard.zip_data
            if raw.is_file() or zip_info is None:
                if not raw.is_file():
                    raise DataError(f"MDS input {self.source}: shard file missing: {raw} (in {self.index_path}).")
                return self._checked(raw.read_bytes(), shard.raw_data, raw)
            path = self.local / zip_info.basename
            if not path.is_file():
                raise DataError(f"MDS input {self.source}: shard file missing: {path} (listed in {self.index_path}).")
            from streaming.base.compression import decompress

            data = self._checked(path.read_bytes(), zip_info, path)
            return self._checked(decompress(shard.compression, data), shard.raw_data, raw)
        cached = raw.is_file()
        if not cached:
            self._fetch(shard)
        try:
            data = self._checked(raw.read_bytes(), shard.raw_data, raw)
        except DataError:
            if not cached:
                raise
            logger.warning("MDS input %s: cached %s does not match index.json; downloading it again.", self.source, raw)
            self._drop(shard)
            self._fetch(shard)
            data = self._checked(raw.read_bytes(), shard.raw_data, raw)
        if self.evict:
            self._drop(shard)
        return data

    def _drop(self, shard: Any) -> None:
        for info in (shard.raw_data, shard.zip_data):
            if info is not None:
                (self.local / info.basename).unlink(missing_ok=True)

    def _fetch(self, shard: Any) -> None:
        try:
            self.stream.prepare_shard(shard)
        except Exception as e:  # download (boto3), decompression
            self._drop(shard)  # never leave a broken file in the cache
            raise DataError(remote_error(f"fetch shard {shard.raw_data.basename} of", self.source.remote, e,
                                         "--input-remote")) from e

    def _checked(self, data: bytes, info: Any, path: Path) -> bytes:
        if len(data) != info.bytes:
            raise DataError(
                f"MDS input {self.source}: {path} has {len(data)} bytes but {self.index_path} says "
                f"{info.bytes}: truncated or modified. Restore it, or write the dataset again."
            )
        if "xxh64" in (info.hashes or {}):
            from streaming.base.hashing import get_hash

            if get_hash("xxh64", data) != info.hashes["xxh64"]:
                raise DataError(
                    f"MDS input {self.source}: {path} does not match its xxh64 hash in {self.index_path}: "
                    f"corrupt or modified. Restore it, or write the dataset again."
                )
        return data

    def _rows(self, shard_id: int) -> tuple[bytes, np.ndarray]:
        data = self._shard_bytes(shard_id)
        n = int(np.frombuffer(data, np.uint32, count=1)[0])
        return data, np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)

    def iter_texts(self) -> Iterator[str]:
        """Each sample's text, in index order."""
        for shard_id, shard in enumerate(self.shards):
            data, offsets = self._rows(shard_id)
            for row in range(len(offsets) - 1):
                text = shard.decode_sample(data[offsets[row] : offsets[row + 1]])[self.column]
                yield text

    def _decode_tokens(self, shard: Any, data: bytes, offsets: np.ndarray) -> list[np.ndarray]:
        """The token arrays of one shard's samples (one ``np.frombuffer`` for a lone fixed-size column)."""
        n = len(offsets) - 1
        size = shard.column_sizes[0] if len(shard.column_names) == 1 else None
        if size and self.dtype is not None and offsets[n] - offsets[0] == n * size:
            flat = np.frombuffer(data, self.dtype, count=n * size // self.dtype.itemsize, offset=int(offsets[0]))
            return list(flat.reshape(n, -1)) if n else []
        out = []
        for row in range(n):
            sample = shard.decode_sample(data[offsets[row] : offsets[row + 1]])
            value = self.layout_spec.tokens(sample, f"MDS input {self.source}: shard {shard.raw_data.basename}, sample {row}")
            out.append(value.reshape(-1))
        return out

    def iter_tokens(self, vocab_size: int | None) -> Iterator[tuple[np.ndarray, int]]:
        """(token stream piece as int32, number of samples in it), one per shard, in index order.

        Ids are checked against ``vocab_size`` (DataError naming the shard and sample). Our own
        overlapping windows lose their first token after the first window; that token must equal the
        previous window's last (else DataError: ``conversion.json`` does not describe the data)."""
        previous_last: int | None = None
        for shard_id, shard in enumerate(self.shards):
            data, offsets = self._rows(shard_id)
            samples = self._decode_tokens(shard, data, offsets)
            flat = np.concatenate(samples) if samples else np.empty(0, np.int64)
            if vocab_size is not None and len(flat) and (flat.min() < 0 or flat.max() >= vocab_size):
                for row, tokens in enumerate(samples):  # find the sample to name
                    where = f"MDS input {self.source}: shard {shard_id} ({shard.raw_data.basename}), sample {row}"
                    check_token_ids(tokens, vocab_size, where, "Convert with the tokenizer the data was made "
                                    "with (--tokenizer), or check --token-encoding-type.")
            if self.window_seq_len is not None and samples:
                windows = np.stack(samples)
                firsts = windows[:, 0]
                lasts = np.concatenate([[firsts[0] if previous_last is None else previous_last], windows[:-1, -1]])
                if not np.array_equal(firsts, lasts):
                    row = int(np.flatnonzero(firsts != lasts)[0])
                    raise DataError(
                        f"MDS input {self.source}: shard {shard_id}, sample {row} does not start with the last "
                        f"token of the sample before it, yet {CONVERSION_FILE} (seq_len {self.window_seq_len}) "
                        f"says the samples are overlapping windows. Remove or fix {CONVERSION_FILE}."
                    )
                start = 0 if previous_last is None else 1
                piece = np.concatenate([windows[0, start:], windows[1:, 1:].reshape(-1)])
                previous_last = int(windows[-1, -1])
            else:
                piece = flat
            yield piece.astype(np.int32), len(samples)


def open_mds_input(st: Any, source: MdsInput, cache_root: str | Path | None, evict: bool = False) -> OpenedMds:
    """Read the index of ``source`` (downloading it into ``cache_root/<url>`` when remote)."""
    if source.remote is None:
        local = Path(source.location)
        if not (local / "index.json").is_file():
            read_index(local, str(source))  # the DataError naming the missing file
        return OpenedMds(st, source, local)
    if cache_root is None:
        raise ValueError(f"MDS input {source} is remote: give a cache directory (--input-cache)")
    return OpenedMds(st, source, cache_dir_for(cache_root, source.remote), evict=evict)
