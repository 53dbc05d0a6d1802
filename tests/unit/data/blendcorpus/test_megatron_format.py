"""Our .bin/.idx writer and reader against megatron-core's IndexedDatasetBuilder / IndexedDataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from titan_recipes.errors import DataError
from titan_recipes.data.blendcorpus.megatron_format import MegatronShard, MegatronWriter, bin_path, idx_path

indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")

DOCS = [np.arange(5) + 3, np.array([7]), np.arange(300, 320), np.array([60000, 2, 1])]


def _write_ours(prefix, dtype=np.uint16):
    with MegatronWriter(prefix, dtype) as w:
        for d in DOCS:
            w.add_document(d)


def _write_megatron(prefix, dtype=np.uint16):
    b = indexed_dataset.IndexedDatasetBuilder(str(bin_path(prefix)), dtype=dtype)
    for d in DOCS:
        b.add_item(torch.from_numpy(d.astype(np.int64)))
        b.end_document()
    b.finalize(str(idx_path(prefix)))


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_byte_identical_to_megatron(tmp_path, dtype):
    _write_ours(tmp_path / "ours", dtype)
    _write_megatron(tmp_path / "ref", dtype)
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()


def test_megatron_reads_ours(tmp_path):
    _write_ours(tmp_path / "ours")
    ds = indexed_dataset.IndexedDataset(str(tmp_path / "ours"))
    assert len(ds) == len(DOCS)
    for i, d in enumerate(DOCS):
        np.testing.assert_array_equal(ds[i], d)
    np.testing.assert_array_equal(ds.document_indices, np.arange(len(DOCS) + 1))


def test_we_read_megatron(tmp_path):
    _write_megatron(tmp_path / "ref", np.int32)
    shard = MegatronShard(tmp_path / "ref")
    assert shard.dtype == np.int32 and len(shard) == len(DOCS)
    assert shard.num_tokens == sum(len(d) for d in DOCS)
    for i, d in enumerate(DOCS):
        np.testing.assert_array_equal(shard[i], d)


def test_missing_idx(tmp_path):
    _write_ours(tmp_path / "s")
    idx_path(tmp_path / "s").unlink()
    with pytest.raises(DataError, match=r"index file missing: .*s\.idx"):
        MegatronShard(tmp_path / "s")


def test_bad_magic(tmp_path):
    _write_ours(tmp_path / "s")
    p = idx_path(tmp_path / "s")
    p.write_bytes(b"NOTMAGIC!" + p.read_bytes()[9:])
    with pytest.raises(DataError, match=r"bad header, cannot read: .*s\.idx"):
        MegatronShard(tmp_path / "s")


def test_wrong_version(tmp_path):
    _write_ours(tmp_path / "s")
    p = idx_path(tmp_path / "s")
    raw = bytearray(p.read_bytes())
    raw[9] = 2
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"s\.idx: index version 2 is not supported"):
        MegatronShard(tmp_path / "s")


def test_truncated_bin_and_idx(tmp_path):
    _write_ours(tmp_path / "s")
    b = bin_path(tmp_path / "s")
    b.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"s\.bin is truncated"):
        MegatronShard(tmp_path / "s")
    _write_ours(tmp_path / "t")
    i = idx_path(tmp_path / "t")
    i.write_bytes(i.read_bytes()[:-8])
    with pytest.raises(DataError, match=r"t\.idx is truncated"):
        MegatronShard(tmp_path / "t")
