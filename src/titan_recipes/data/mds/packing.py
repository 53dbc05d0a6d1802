"""Samples of any length -> ``seq_len + 1`` windows: the token count of every sample, and the packed stream.

**Which samples are windows as they are.** When every sample of every stream holds exactly
``seq_len + 1`` tokens (what ``scripts/mds_convert.py`` writes for this ``seq_len``, or llm-foundry's
``--concat_tokens seq_len+1``), each sample is one training window, in streaming's epoch order:
nothing is packed and nothing is tokenized (:class:`~titan_recipes.data.mds.loader.MDSLoader` reads
them as it always did).

**Everything else is packed** (samples of any other length, including exactly ``seq_len`` tokens as
``--concat_tokens seq_len`` writes them, and ``text`` samples): the samples are documents. Each epoch
orders them with streaming's algorithm, exactly as it orders windows (weights, sampling, shuffle,
IID or non-IID per DP rank); the documents of epoch 0, then epoch 1, ... are read as ONE token stream
``S`` (a text document is ``BOS + tokens + EOS``), and global window ``g`` is
``S[g * seq_len : g * seq_len + seq_len + 1]`` (stride ``seq_len``, as the text loader and the
converter cut). Windows cross document and epoch boundaries, so no token is dropped or padded, and a
document longer than a window spans several. Windows written by ``scripts/mds_convert.py`` for
another ``seq_len`` overlap by one token; in a packed stream they count as their first ``L`` tokens
(``conversion.json`` says so), which is the original token stream less its final token.

**What stays exact.** Window ``g`` depends only on the data, the order settings and (text) the
tokenizer, never on the DP degree or the number of workers: the state is still ``consumed_samples``
(windows), so resume is exact and DP-elastic, and workers read any micro-batch on their own.

**Cost.** Packing needs every sample's token count before the first step (:class:`SampleLengths`):
for a token layout, one decode of every sample; for text, one tokenization of every document. They
are cached beside the shards (``<local>/.titan_lengths/``, or ``~/.cache/titan_recipes/mds_lengths/``
when ``local`` is read-only), keyed by the shard's bytes and hashes, its layout and the tokenizer, so a
later run starts at once. Ranks sharing ``local`` split the pass shard by shard (a lock per shard).
A remote stream's shards are all downloaded by it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...errors import DataError
from .layouts import tokenizer_fingerprint

logger = logging.getLogger(__name__)

LENGTHS_DIR = ".titan_lengths"
"""Cache of per-sample token counts, in a stream's ``local`` directory."""


def _cache_dir(local: str) -> Path:
    """``<local>/.titan_lengths`` when writable, else a per-user cache named after ``local``."""
    preferred = Path(local) / LENGTHS_DIR
    try:
        preferred.mkdir(exist_ok=True)
        probe = preferred / f".probe.{os.getpid()}"
        probe.touch()
        probe.unlink()
        return preferred
    except OSError:
        tag = hashlib.sha256(os.path.abspath(local).encode()).hexdigest()[:16]
        fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "titan_recipes" / "mds_lengths" / tag
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


class SampleLengths:
    """Tokens per sample of every sample of a :class:`~.shards.ShardSet` (indexed by global sample id).

    ``tokenizer`` is needed for text streams (None otherwise). The counts of a shard are computed once
    (decode or tokenize every sample) and cached in a ``.npy`` file keyed by the shard and what shapes
    its counts; see the module docstring."""

    def __init__(self, shards: Any, tokenizer: Any = None, progress: bool = True):
        self.shards = shards
        self.tokenizer_fp = None
        if any(layout.kind == "text" for layout in shards.layouts):
            if tokenizer is None:
                raise DataError("MDS text samples need the run's tokenizer to be packed; none was given.")
            self.tokenizer_fp = tokenizer_fingerprint(tokenizer)
        self.tokenizer = tokenizer
        n = len(shards.shards)
        per_shard: list[np.ndarray | None] = [None] * n
        todo = []
        for k in range(n):
            fixed = shards.fixed_len_of_shard(k)
            if fixed is not None:
                per_shard[k] = np.full(int(shards.samples_per_shard[k]), fixed, np.int64)
            else:
                todo.append(k)
        if todo:
            per_shard = self._measure(per_shard, todo, progress)
        self.lengths = np.concatenate(per_shard).astype(np.int32) if per_shard else np.zeros(0, np.int32)
        """Tokens per sample (int32: one document of 2**31 tokens is beyond any MDS shard)."""

    def _key(self, k: int) -> str:
        shard = self.shards.shards[k]
        layout = self.shards.layouts[self.shards.shard_stream[k]]
        info = shard.raw_data
        parts = {"shard": info.basename, "bytes": info.bytes, "hashes": info.hashes or {}, "samples": shard.samples,
                 "layout": layout.describe(), "tokenizer": self.tokenizer_fp if layout.kind == "text" else None}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]

    def _measure(self, per_shard: list, todo: list[int], progress: bool) -> list:
        from filelock import FileLock, Timeout

        rank, world = int(os.environ.get("RANK", 0)), max(int(os.environ.get("WORLD_SIZE", 1)), 1)
        start = rank * len(todo) // world  # ranks sharing local start at different shards
        todo = todo[start:] + todo[:start]
        paths, dirs = {}, {}
        for k in todo:
            spec = self.shards.specs[self.shards.shard_stream[k]]
            if spec.local not in dirs:  # one writability probe per stream, not per shard
                dirs[spec.local] = _cache_dir(spec.local)
            paths[k] = dirs[spec.local] / f"{self.shards.shards[k].raw_data.basename}.{self._key(k)}.npy"
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc="MDS: counting tokens per sample (cached)", unit="shard", mininterval=5)
        deferred = []
        for k in todo:
            if paths[k].is_file():
                per_shard[k] = self._load(paths[k], k)
            else:
                try:
                    with FileLock(str(paths[k]) + ".lock", timeout=0):
                        per_shard[k] = self._load(paths[k], k) if paths[k].is_file() else self._compute(k, paths[k])
                except Timeout:  # another rank counts it
                    deferred.append(k)
                    continue
            if bar is not None:
                bar.update(1)
        for k in deferred:
            with FileLock(str(paths[k]) + ".lock"):
                per_shard[k] = self._load(paths[k], k) if paths[k].is_file() else self._compute(k, paths[k])
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return per_shard

    def _load(self, path: Path, k: int) -> np.ndarray:
        try:
            lengths = np.load(path)
        except (OSError, ValueError) as e:
            logger.warning("Token-count cache %s is unreadable (%s); counting again.", path, e)
            return self._compute(k, path)
        if lengths.shape != (int(self.shards.samples_per_shard[k]),):
            return self._compute(k, path)
        return lengths.astype(np.int64)

    def _compute(self, k: int, path: Path) -> np.ndarray:
        first = int(self.shards.sample_offset_per_shard[k])
        ids = range(first, first + int(self.shards.samples_per_shard[k]))
        layout = self.shards.layouts[self.shards.shard_stream[k]]
        if layout.kind == "text":
            from .layouts import encode_documents

            lengths = np.empty(len(ids), np.int64)
            block = 1024
            for i in range(0, len(ids), block):
                texts = [self.shards.read_text(j) for j in ids[i:i + block]]
                lengths[i:i + len(texts)] = [len(t) for t in encode_documents(self.tokenizer, texts)]
        else:
            lengths = np.asarray([len(self.shards.read_tokens(j)) for j in ids], np.int64)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                np.save(f, lengths)
            os.replace(tmp, path)
        except OSError as e:  # a full or read-only disk costs a recount next time, nothing else
            logger.warning("Cannot cache token counts in %s (%s).", path, e)
            tmp.unlink(missing_ok=True)
        return lengths


class PackedStream:
    """The infinite token stream of a packed MDS loader and the documents under any token range of it.

    ``lengths[sample_id]`` is each sample's token count (:class:`SampleLengths`); ``epoch_order(e)`` the
    sample ids of epoch ``e`` (streaming's order). Epoch ``e`` starts at token ``starts[e]`` of the
    stream. The order and cumulative counts of the epoch used last are kept (16 bytes per document,
    plus 4 per sample on disk for ``lengths``: about 2 GB per rank at 100M documents); a window that
    crosses into the next epoch recomputes one order, once per epoch."""

    def __init__(self, lengths: np.ndarray, epoch_order: Callable[[int], np.ndarray]):
        self.lengths = lengths
        self.epoch_order = epoch_order
        self.starts = [0]
        """Token position where each epoch computed so far starts (one more entry than epochs)."""
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def epoch(self, e: int) -> tuple[np.ndarray, np.ndarray]:
        """(sample ids, cumulative token counts with a leading 0) of epoch ``e``."""
        if e not in self._epochs:
            order = np.asarray(self.epoch_order(e), np.int64)
            cum = np.concatenate([[0], np.cumsum(self.lengths[order], dtype=np.int64)])
            self._epochs[e] = (order, cum)
            while len(self._epochs) > 1:
                self._epochs.popitem(last=False)
        return self._epochs[e]

    def tokens_in_epoch(self, e: int) -> int:
        return int(self.epoch(e)[1][-1])

    def epoch_of(self, t: int) -> int:
        """The epoch that holds stream position ``t``."""
        while self.starts[-1] <= t:
            total = self.tokens_in_epoch(len(self.starts) - 1)
            if total == 0:
                raise DataError("An epoch of the MDS streams holds no tokens (every sample is empty).")
            self.starts.append(self.starts[-1] + total)
        return int(np.searchsorted(self.starts, t, side="right")) - 1

    def pieces(self, t0: int, t1: int) -> list[tuple[int, int, int]]:
        """``(sample_id, start, stop)`` token slices of the documents that make up ``S[t0:t1]``, in order."""
        out = []
        while t0 < t1:
            e = self.epoch_of(t0)
            order, cum = self.epoch(e)
            base = self.starts[e]
            i = int(np.searchsorted(cum, t0 - base, side="right")) - 1
            while t0 < t1 and i < len(order):
                lo, hi = base + int(cum[i]), base + int(cum[i + 1])
                stop = min(t1, hi)
                if stop > t0:
                    out.append((int(order[i]), t0 - lo, stop - lo))
                t0 = max(t0, stop)
                i += 1
        return out
