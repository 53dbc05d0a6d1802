"""The pieces of a BlendCorpus blend: the weighted file list, the train/valid/test split of each
shard, Megatron's greedy weighted interleaving, and one shard's documents packed into samples."""

from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from ...errors import ConfigError, DataError
from .megatron_format import MegatronShard

logger = logging.getLogger(__name__)


SPLIT_NAMES = {0: "train", 1: "valid", 2: "test"}


@dataclass(frozen=True)
class FileListEntry:
    weight: float
    prefix: str
    corpus: str


def parse_file_list(path: str | Path) -> list[FileListEntry]:
    """Rows of a BlendCorpus file list; relative prefixes resolve from the list's directory."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"BlendCorpus file list not found: {path} (training.dataset_path / blendcorpus.data_file_list).")
    entries = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected '<weight> <path-prefix> <corpus>', got {len(parts)} fields: {line!r}")
        try:
            weight = float(parts[0])
        except ValueError:
            raise DataError(f"{path}:{lineno}: weight {parts[0]!r} is not a number") from None
        if not weight > 0 or not np.isfinite(weight):
            raise DataError(f"{path}:{lineno}: weight must be positive and finite, got {parts[0]} (remove the line to drop the shard)")
        prefix = Path(parts[1])
        if not prefix.is_absolute():
            prefix = path.parent / prefix
        entries.append(FileListEntry(weight, str(prefix), parts[2]))
    if not entries:
        raise DataError(f"{path}: the file list has no shards.")
    return entries


def parse_split(split: str) -> tuple[float, float, float]:
    try:
        parts = [float(p) for p in split.replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
        raise ConfigError(f"blendcorpus.split = '{split}' must be three non-negative numbers like '98,1,1' (train, valid, test).")
    total = sum(parts)
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def split_bounds(num_docs: int, split: tuple[float, float, float]) -> list[int]:
    """Megatron's ``get_split_indices``: document boundaries [0, train_end, valid_end, num_docs]."""
    bounds = [0]
    for w in split:
        bounds.append(bounds[-1] + int(round(w * float(num_docs))))
    diff = bounds[-1] - num_docs
    return [bounds[0]] + [b - diff for b in bounds[1:]]


FAST_BLEND_MIN_SIZE = 1
"""From this many steps on, :func:`greedy_blend` uses megatron-core's compiled ``build_blending_indices``
when it is installed (same result, tested). 1: always; a test raises it to check the fallback."""

_MAX_COMPILED_DATASETS = 2**15
"""``build_blending_indices`` writes dataset ids as int16."""


@functools.cache
def _compiled_blend():
    """megatron-core's ``helpers_cpp.build_blending_indices``, or None when megatron-core is absent.

    Loaded from its file rather than by ``import megatron.core.datasets``: that import pulls in
    megatron.core's model parallel code (~3 s), longer than the whole build it would speed up. The
    extension itself needs only numpy (pybind11)."""
    name = "megatron.core.datasets.helpers_cpp"
    if name in sys.modules:
        return sys.modules[name].build_blending_indices
    spec = importlib.util.find_spec("megatron")  # a namespace package: importing it runs no code
    for root in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(root) / "core" / "datasets" / f"helpers_cpp{suffix}"
            if path.is_file():
                ext = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(ext)
                try:
                    ext.loader.exec_module(module)
                except ImportError as e:  # built for another Python or numpy: the loop gives the same blend
                    logger.info("BlendCorpus: megatron-core's %s does not load (%s); blending in Python.", path, e)
                    return None
                return module.build_blending_indices
    return None


def greedy_blend(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Megatron's ``build_blending_indices``: (dataset index, sample index within it) per step.

    At step ``n`` it picks the first dataset with the largest ``weight * max(n, 1) - count``; each
    step depends on all the previous ones, so the fallback without megatron-core is a loop."""
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    size = int(size)
    if len(weights) == 1 or size == 0:
        return np.zeros(size, np.int64), np.arange(size, dtype=np.int64)
    build = _compiled_blend() if size >= FAST_BLEND_MIN_SIZE and len(weights) < _MAX_COMPILED_DATASETS else None
    if build is not None:
        dataset_index = np.zeros(size, dtype=np.int16)
        sample_index = np.zeros(size, dtype=np.int64)
        build(dataset_index, sample_index, weights, len(weights), size, False)
        return dataset_index.astype(np.int64), sample_index
    return _greedy_blend_loop(weights, size)


def _greedy_blend_loop(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The same steps without megatron-core, bit for bit: Python floats and numpy float64 are IEEE
    doubles like the C++ code's, and both the strict ``>`` and ``argmax`` keep the first dataset on
    ties. No closed form gives this order (a dataset's pick times depend on every other's), so it
    stays a loop: over Python lists for a few datasets (~0.3 us + 0.1 us per dataset per step), a
    numpy ``argmax`` per step (~4 us) for many."""
    dataset_index = np.empty(size, dtype=np.int64)
    sample_index = np.empty(size, dtype=np.int64)
    if len(weights) > 32:
        counts = np.zeros(len(weights), dtype=np.int64)
        for n in range(size):
            i = int(np.argmax(weights * max(n, 1.0) - counts))
            dataset_index[n] = i
            sample_index[n] = counts[i]
            counts[i] += 1
        return dataset_index, sample_index
    w = weights.tolist()
    counts_list = [0] * len(w)
    others = range(1, len(w))
    picks, drawn = [0] * size, [0] * size
    for n in range(size):
        x = float(max(n, 1))
        best, err = 0, w[0] * x - counts_list[0]
        for i in others:
            e = w[i] * x - counts_list[i]
            if e > err:
                best, err = i, e
        picks[n] = best
        drawn[n] = counts_list[best]
        counts_list[best] += 1
    dataset_index[:] = picks
    sample_index[:] = drawn
    return dataset_index, sample_index


class PackedShard:
    """The train documents of one shard as one packed token stream, cut into samples of ``L + 1``."""

    def __init__(self, prefix: str, seq_len: int, split, append_eod: bool, eod: int, split_index: int = 0):
        self.shard = MegatronShard(prefix)
        self.prefix = prefix
        self.first_doc, self.end_doc = split_bounds(len(self.shard), split)[split_index : split_index + 2]
        lengths = self.shard.sequence_lengths[self.first_doc : self.end_doc].astype(np.int64) + int(append_eod)
        self.doc_starts = np.concatenate([[0], np.cumsum(lengths)])
        self.num_tokens = int(self.doc_starts[-1])
        self.seq_len = seq_len
        self.append_eod = append_eod
        self.eod = eod
        self.num_samples = max(0, (self.num_tokens - 1) // seq_len)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        out = []
        d = int(np.searchsorted(self.doc_starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            doc = self.shard[self.first_doc + d].astype(np.int64)
            if self.append_eod:
                doc = np.append(doc, self.eod)
            lo = pos - int(self.doc_starts[d])
            piece = doc[lo : lo + (stop - pos)]
            out.append(piece)
            pos += len(piece)
            d += 1
        return np.concatenate(out)

    def sample(self, k: int) -> np.ndarray:
        return self.tokens(k * self.seq_len, k * self.seq_len + self.seq_len + 1)

    def digest(self) -> str:
        return shard_digest(self.shard)


def shard_digest(shard: MegatronShard) -> str:
    """Hash of a shard's document lengths and token dtype (its .idx content, cheaply): the data
    fingerprint's part for the shard, and what ``titan-recipes prepare`` records per prefix."""
    h = xxhash.xxh3_64(shard.sequence_lengths.tobytes())
    h.update(str(shard.dtype).encode())
    return h.hexdigest()
