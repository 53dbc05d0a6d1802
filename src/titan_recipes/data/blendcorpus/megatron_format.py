"""Megatron-LM's indexed dataset format (``<prefix>.bin`` + ``<prefix>.idx``), written and read here.

Byte-compatible with ``megatron.core.datasets.indexed_dataset`` (IndexedDatasetBuilder / IndexedDataset,
checked both ways in tests/unit/data/test_megatron_format.py). Layout of the ``.idx`` file, little
endian::

    magic      9 bytes   b"MMIDIDX\\x00\\x00"
    version    uint64    1
    dtype      uint8     token dtype code (DTYPE_CODES)
    n_seq      uint64    number of sequences
    n_doc      uint64    number of entries of document_indices (documents + 1)
    lengths    int32[n_seq]   tokens per sequence
    pointers   int64[n_seq]   byte offset of each sequence in the .bin
    doc_index  int64[n_doc]   sequence index where each document starts, then n_seq

The ``.bin`` file is the token ids of all sequences back to back. Megatron's preprocess_data.py writes
one sequence per document (its EOD token appended), as :class:`MegatronWriter` does.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from pathlib import Path

import numpy as np

from ...errors import DataError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
DTYPE_CODES: dict[int, type] = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_CODE_OF = {np.dtype(t): c for c, t in DTYPE_CODES.items()}
_HEADER = struct.Struct("<9sQBQQ")


def token_dtype(vocab_size: int) -> type:
    """Megatron's choice (``DType.optimal_dtype``): uint16 below 65500 ids, else int32."""
    return np.uint16 if vocab_size is not None and vocab_size < 65500 else np.int32


def idx_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.idx")


def bin_path(prefix: str | Path) -> Path:
    return Path(f"{prefix}.bin")


class MegatronWriter:
    """Write one ``.bin``/``.idx`` pair; ``add_document`` per document, then ``finalize`` (or ``with``)."""

    def __init__(self, prefix: str | Path, dtype: type = np.uint16):
        if np.dtype(dtype) not in _CODE_OF:
            raise ValueError(f"dtype {dtype} is not a Megatron token dtype ({sorted(map(str, _CODE_OF))})")
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self._bin = open(bin_path(prefix), "wb")
        self.lengths: list[int] = []
        self.num_tokens = 0

    def add_document(self, ids) -> None:
        arr = np.asarray(ids)
        if arr.size and (arr.min() < np.iinfo(self.dtype).min or arr.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"{bin_path(self.prefix)}: token ids out of range for {self.dtype}")
        self._bin.write(arr.astype(self.dtype).tobytes(order="C"))
        self.lengths.append(int(arr.size))
        self.num_tokens += int(arr.size)

    def finalize(self) -> None:
        self._bin.close()
        lengths = np.asarray(self.lengths, dtype=np.int32)
        pointers = np.zeros(len(lengths), dtype=np.int64)
        if len(lengths):
            pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64)) * self.dtype.itemsize
        doc_index = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(idx_path(self.prefix), "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, _CODE_OF[self.dtype], len(lengths), len(doc_index)))
            f.write(lengths.tobytes(order="C"))
            f.write(pointers.tobytes(order="C"))
            f.write(doc_index.tobytes(order="C"))

    def __enter__(self) -> "MegatronWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self._bin.close()


class MegatronShard:
    """Read-only view of one ``.bin``/``.idx`` pair; validated on open, errors name the file.

    ``len(shard)`` is the number of sequences (one per document as written by Megatron and by
    :class:`MegatronWriter`); ``shard[i]`` is sequence ``i``'s tokens (a memory-mapped array).
    """

    def __init__(self, prefix: str | Path):
        self.prefix = Path(prefix)
        idx, bin_ = idx_path(prefix), bin_path(prefix)
        # Plain os calls and a lazy mmap (``_map``), not pathlib and np.memmap at open: a file list of
        # thousands of prefixes opens every shard at start-up, and their per-call overhead was most of it.
        try:
            with open(idx, "rb") as f:
                raw = f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise DataError(f"Megatron index file missing: {idx} (expected beside {bin_}). Re-run the tokenizer "
                            f"(scripts/blendcorpus.py tokenize) or fix the path prefix in the file list.") from None
        try:
            bin_stat = os.stat(bin_)
        except (FileNotFoundError, NotADirectoryError):
            bin_stat = None
        if bin_stat is None or not stat.S_ISREG(bin_stat.st_mode):
            raise DataError(f"Megatron data file missing: {bin_} (its index {idx} exists).")
        if len(raw) < _HEADER.size:
            raise DataError(f"bad header, cannot read: {idx} is {len(raw)} bytes, shorter than the header.")
        magic, version, code, n_seq, n_doc = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise DataError(f"bad header, cannot read: {idx} starts with {magic!r}, not the Megatron magic {MAGIC!r}.")
        if version != VERSION:
            raise DataError(f"{idx}: index version {version} is not supported (only {VERSION}).")
        if code not in DTYPE_CODES:
            raise DataError(f"{idx}: unknown token dtype code {code} (known: {sorted(DTYPE_CODES)}).")
        self.dtype = np.dtype(DTYPE_CODES[code])
        need = _HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
        if len(raw) < need:
            raise DataError(f"{idx} is truncated: {len(raw)} bytes, the header announces {n_seq} sequences and "
                            f"{n_doc} document indices ({need} bytes).")
        off = _HEADER.size
        self.sequence_lengths = np.frombuffer(raw, np.int32, n_seq, off)
        self.sequence_pointers = np.frombuffer(raw, np.int64, n_seq, off + 4 * n_seq)
        self.document_indices = np.frombuffer(raw, np.int64, n_doc, off + 12 * n_seq)
        fix = (f"Re-run the tokenizer for this prefix (scripts/blendcorpus.py tokenize, or Megatron's "
               f"preprocess_data.py) so that {bin_.name} and {idx.name} are written together.")
        lengths = self.sequence_lengths.astype(np.int64)
        if n_seq and lengths.min() < 0:
            raise DataError(f"{idx} is corrupt: sequence {int(np.argmin(lengths))} has length {int(lengths.min())}. {fix}")
        # Megatron writes the sequences back to back: each pointer is the byte sum of the lengths before it.
        pointers = np.concatenate([[0], np.cumsum(lengths[:-1])]) * self.dtype.itemsize if n_seq else lengths
        if not np.array_equal(self.sequence_pointers, pointers):
            j = int(np.flatnonzero(self.sequence_pointers != pointers)[0])
            raise DataError(f"{idx} is corrupt: sequence {j} starts at byte {int(self.sequence_pointers[j])} of "
                            f"{bin_}, but the lengths before it put it at byte {int(pointers[j])}. {fix}")
        expected = int(lengths.sum()) * self.dtype.itemsize
        actual = bin_stat.st_size
        if actual < expected:
            raise DataError(f"{bin_} is truncated: {actual} bytes, its index {idx} needs {expected} "
                            f"({n_seq} sequences of {self.dtype} tokens). {fix}")
        if actual > expected:
            raise DataError(f"{bin_} has {actual} bytes, but its index {idx} describes {expected} "
                            f"({n_seq} sequences of {self.dtype} tokens): the two files do not belong together. {fix}")
        self.bin_path = bin_
        self._bin: np.ndarray | None = None
        """The tokens, memory-mapped on the first read (see ``_map``): a shard that is never read costs
        no mapping, and a pickled shard (spawned workers) maps its file again instead of copying it."""
        self._mmap: mmap.mmap | None = None
        """Its ``size()`` is the file's current size: reading a page past the end of a memory-mapped
        file that shrank kills the process with SIGBUS, so ``__getitem__`` checks first."""

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    @property
    def num_tokens(self) -> int:
        return int(self.sequence_lengths.astype(np.int64).sum())

    def _map(self) -> np.ndarray:
        with open(self.bin_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size:  # mmap refuses an empty file; a shard of no tokens, or one truncated since it was opened
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        count = size // self.dtype.itemsize
        self._bin = np.frombuffer(self._mmap, self.dtype, count) if self._mmap is not None else np.zeros(0, self.dtype)
        return self._bin

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bin": None, "_mmap": None}

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.sequence_pointers[i]) // self.dtype.itemsize
        stop = start + int(self.sequence_lengths[i])
        tokens = self._bin if self._bin is not None else self._map()
        size = self._mmap.size() if self._mmap is not None else tokens.nbytes  # one fstat
        if size < stop * self.dtype.itemsize:
            raise DataError(
                f"{self.bin_path} shrank while in use: {size} bytes now, sequence {i} ends at byte "
                f"{stop * self.dtype.itemsize}. Another process truncated or rewrote it (e.g. a tokenize run "
                f"into the same prefix). Restore the file, then launch again to resume from the last checkpoint."
            )
        return tokens[start:stop]
