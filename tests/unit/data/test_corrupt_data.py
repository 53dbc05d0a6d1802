"""Corrupt data is an error naming the file and the fix, never trained on (issue 14).

Data is written by the real writers: MDS by ``write_mds`` (streaming's ``MDSWriter``, xxh64 hashes in
index.json), Megatron .bin/.idx by megatron-core's ``IndexedDatasetBuilder``, the mixture index by
``SampleIndex.register_dataset``. Then one byte is flipped, a file truncated, edited or deleted, and
the loader (or index) that training uses reads it. What stays undetectable is listed in
``titan_recipes.data.integrity``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import take, write_jsonl
from configs import job_config

from titan_recipes.data.blendcorpus.config import BlendCorpus
from titan_recipes.data.mds.config import MosaicDataloader, MosaicDataset
from titan_recipes.data.registry import build_dataloader
from titan_recipes.errors import DataError
from titan_recipes.data.blendcorpus.megatron_format import MegatronShard, bin_path, idx_path
from titan_recipes.data.mds import StreamSpec, MDSLoader, write_mds
from titan_recipes.data.mixture import SampleIndex

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"
VOCAB = 2048


def flip(path: Path, position: int, mask: int = 0x01) -> None:
    """XOR one byte of ``path`` in place (same size; the mtime changes, as any write's would)."""
    data = bytearray(path.read_bytes())
    data[position] ^= mask
    path.write_bytes(bytes(data))


# -- MDS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mds_src(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("mds_corrupt")
    jsonl = write_jsonl(root / "corpus.jsonl", corpus.docs)
    write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "plain", size_limit="2kb", progress=False)
    write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "zstd", size_limit="2kb", compression="zstd", progress=False)
    return root


def first_shard(directory: Path) -> tuple[Path, dict]:
    shard = json.loads((directory / "index.json").read_text())["shards"][0]
    return directory / shard["raw_data"]["basename"], shard


def payload_start(raw: Path) -> int:
    """Byte where sample 0's tokens (int32, little endian) begin: after ``n`` and ``n + 1`` offsets."""
    return int(np.frombuffer(raw.read_bytes()[4:8], np.uint32)[0])


def mds_loader(directory: Path, **stream) -> MDSLoader:
    spec = StreamSpec(name="s", local=str(directory), setting="mosaic_dataloader.dataset.streams.s.local", **stream)
    return MDSLoader(streams=[spec], seq_len=16, local_batch_size=8, dp_rank=0, dp_world_size=1, shuffle=False)


def read_epoch(loader) -> list:
    return take(loader, loader.num_samples // loader.local_batch_size)


def test_mds_flipped_token_byte_fails_validate_hash(tmp_path, mds_src):
    """A low-byte flip keeps the token id in range: only the hash sees it. streaming itself never checks
    a local raw shard, and before issue 14 the loader ignored validate_hash for local streams."""
    data = shutil.copytree(mds_src / "plain", tmp_path / "plain")
    raw, _ = first_shard(data)
    flip(raw, payload_start(raw) + 4 * 5)  # token 5 of sample 0, +-1
    with pytest.raises(DataError, match=rf"MDS shard {raw} fails its xxh64 check \(validate_hash\): index.json "
                                        rf"says \w+, the file hashes to \w+.*re-run the conversion"):
        read_epoch(mds_loader(data, validate_hash="xxh64"))
    assert len(read_epoch(mds_loader(mds_src / "plain", validate_hash="xxh64"))) > 0  # intact data passes


def test_mds_flipped_compressed_byte_fails_validate_hash(tmp_path, mds_src):
    data = shutil.copytree(mds_src / "zstd", tmp_path / "zstd")
    _, shard = first_shard(data)
    zipped = data / shard["zip_data"]["basename"]
    flip(zipped, zipped.stat().st_size // 2)
    with pytest.raises(DataError, match=rf"MDS shard .*{shard['raw_data']['basename']}: cannot prepare it "
                                        rf"\(ValueError: Checksum failure: .*{zipped.name}\)\. Its compressed file is corrupt.*re-run the conversion"):
        read_epoch(mds_loader(data, validate_hash="xxh64"))


def mds_job(directory: Path):
    return job_config(training={"dataset": "mds", "seq_len": 16, "local_batch_size": 8},
                      model={"hf_assets_path": str(TOKENIZER_DIR)},
                      mosaic_dataloader=MosaicDataloader(dataset=MosaicDataset(local=str(directory), shuffle=False)))


def test_mds_out_of_vocabulary_token_is_named_without_a_hash(tmp_path, mds_src, tokenizer):
    """A high-byte flip makes an id no tokenizer produced: caught without validate_hash (the id would
    otherwise index past the embedding), with the hint that in-range changes need validate_hash."""
    data = shutil.copytree(mds_src / "plain", tmp_path / "plain")
    assert len(read_epoch(build_dataloader(1, 0, tokenizer, mds_job(data)))) > 0  # real data: no false alarm
    raw, _ = first_shard(data)
    pos = payload_start(raw) + 4 * 5 + 3  # high byte of token 5 of sample 0
    flip(raw, pos, 0x40)
    loader = build_dataloader(1, 0, tokenizer, mds_job(data))
    with pytest.raises(DataError, match=rf"(?s)MDS shard {raw}, sample 0: token id \d+ at position 5 \(1 id\(s\) "
                                        rf"outside 0\.\.2047.*mds_convert\.py.*validate_hash = \"xxh64\""):
        read_epoch(loader)


@pytest.mark.parametrize("where, match", [
    (lambda raw: 0, r"its header says \d+ samples, index.json says \d+"),  # the sample count
    (lambda raw: 4 * 3, r"sample 1 spans \d+ bytes, but every sample .* has 68"),  # offset of sample 2
    (lambda raw: 4, r"its header \(the writer's config, bytes 108\.\.\d+, .*\) is not JSON"),  # offset 0
], ids=["count", "offset", "first_offset"])
def test_mds_corrupt_shard_header_is_named_without_a_hash(tmp_path, mds_src, where, match):
    data = shutil.copytree(mds_src / "plain", tmp_path / "plain")
    raw, _ = first_shard(data)
    flip(raw, where(raw), 0x02)
    with pytest.raises(DataError, match=rf"MDS shard {raw} is corrupt: {match}.*Restore the file or re-run the conversion"):
        read_epoch(mds_loader(data))


# -- Megatron .bin/.idx (BlendCorpus) ----------------------------------------------------------------------

indexed_dataset = pytest.importorskip("megatron.core.datasets.indexed_dataset")


def write_megatron(prefix: Path, n_docs: int = 40, seed: int = 0) -> None:
    """Documents of 5..30 ids below VOCAB, with megatron-core's own builder (uint16, as for a small vocab)."""
    rng = np.random.default_rng(seed)
    builder = indexed_dataset.IndexedDatasetBuilder(str(bin_path(prefix)), dtype=np.uint16)
    for _ in range(n_docs):
        builder.add_item(torch.from_numpy(rng.integers(0, VOCAB, int(rng.integers(5, 30))).astype(np.int64)))
        builder.end_document()
    builder.finalize(str(idx_path(prefix)))


@pytest.fixture
def blend_data(tmp_path) -> Path:
    write_megatron(tmp_path / "a", seed=1)
    write_megatron(tmp_path / "b", seed=2)
    (tmp_path / "list.txt").write_text(f"1 {tmp_path / 'a'} A\n1 {tmp_path / 'b'} B\n", encoding="utf-8")
    return tmp_path


def blend_job(data: Path):
    return job_config(training={"dataset": "blendcorpus", "dataset_path": str(data / "list.txt"), "seq_len": 8,
                                "local_batch_size": 4},
                      blendcorpus=BlendCorpus(data_cache_path=str(data / "cache"), split="100,0,0"))


def test_truncated_bin_names_both_files_and_the_fix(blend_data, tokenizer):
    b = bin_path(blend_data / "b")
    b.write_bytes(b.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{b} is truncated: \d+ bytes, its index {idx_path(blend_data / 'b')} needs "
                                        rf"\d+ \(40 sequences of uint16 tokens\)\. Re-run the tokenizer for this prefix "
                                        rf"\(scripts/blendcorpus\.py tokenize"):
        build_dataloader(1, 0, tokenizer, blend_job(blend_data))


def test_bin_that_does_not_belong_to_its_idx(blend_data):
    """A .bin longer than its .idx describes (re-tokenized .bin, stale .idx) used to be read silently."""
    b = bin_path(blend_data / "b")
    b.write_bytes(b.read_bytes() + bytes(64))
    with pytest.raises(DataError, match=rf"{b} has \d+ bytes, but its index .*b\.idx describes \d+ .*do not belong together"):
        MegatronShard(blend_data / "b")


def test_idx_pointer_corruption_is_named(blend_data):
    """A flipped byte in the pointer table used to make reads return other (or too few) tokens."""
    i = idx_path(blend_data / "a")
    header = 9 + 8 + 1 + 8 + 8
    flip(i, header + 4 * 40 + 8 * 7 + 1)  # pointer of sequence 7
    with pytest.raises(DataError, match=rf"{i} is corrupt: sequence 7 starts at byte \d+ of .*a\.bin, but the "
                                        rf"lengths before it put it at byte \d+"):
        MegatronShard(blend_data / "a")


def test_bin_truncated_while_training_is_an_error_not_sigbus(blend_data, tokenizer):
    """The loader memory-maps the .bin: reading past the end of a file that shrank after it was opened
    killed the process with SIGBUS, without a word."""
    loader = build_dataloader(1, 0, tokenizer, blend_job(blend_data))
    take(loader, 1)
    os.truncate(bin_path(blend_data / "a"), 0)
    with pytest.raises(DataError, match=r"a\.bin shrank while in use: 0 bytes now"):
        take(loader, loader.num_samples // 4)


def test_out_of_vocabulary_token_in_bin_is_named(blend_data, tokenizer):
    loader = build_dataloader(1, 0, tokenizer, blend_job(blend_data))
    assert len(take(loader, loader.num_samples // 4)) > 0  # intact: ids < VOCAB pass
    b = bin_path(blend_data / "a")
    flip(b, 2 * 10 + 1, 0x80)  # high byte of token 10 (uint16): id >= 32768
    loader = build_dataloader(1, 0, tokenizer, blend_job(blend_data))
    with pytest.raises(DataError, match=rf"(?s)BlendCorpus shard {b}, sample \d+: token id \d+ at position \d+ .*"
                                        rf"outside 0\.\.2047.*Re-run scripts/blendcorpus\.py tokenize"):
        take(loader, loader.num_samples // 4)


# -- the mixture index (DuckDB) ------------------------------------------------------------------------------


@pytest.fixture
def mixture(tmp_path):
    from mixture_corpus import write_corpus

    root = tmp_path / "data"
    samples = write_corpus(root)
    with SampleIndex(tmp_path / "idx") as index:
        index.register_dataset("sp", root, progress=False)
    index = SampleIndex(tmp_path / "idx", read_only=True)
    yield root, samples, index
    index.close()


def test_jsonl_edited_after_registration_is_named(mixture):
    """Same size, other text: the size check alone let it through and the run read the edited text."""
    root, samples, index = mixture
    path = root / "part-00.jsonl"
    assert index.read_texts([0]) == ["part-00.jsonl sample 0 of RedPajamaC4"]
    path.write_bytes(path.read_bytes().replace(b"sample 0 of", b"sample X of", 1))
    fresh = SampleIndex(index.directory, read_only=True)  # a new launch, nothing cached
    for reader in (index, fresh):
        with pytest.raises(DataError, match=rf"Indexed file {path} \(dataset 'sp' of .*index\.duckdb\) changed after "
                                            rf"registration \(size (\d+) -> \1 bytes, mtime_ns \d+ -> \d+\).*"
                                            rf"titan-recipes mixture register NEW_INDEX_DIR DATA_PATH --name sp"):
            reader.read_texts([0])
    fresh.close()


def test_index_deleted_during_a_run_is_named(mixture):
    """DuckDB keeps reading a deleted file through its open descriptor, so the run went on and only its
    relaunch (the resume) failed, with a message about read_only=False."""
    root, samples, index = mixture
    assert len(index.query()) == len(samples)
    os.remove(index.path)
    for call in (lambda: index.read_texts([1, 2]), lambda: index.query()):
        with pytest.raises(DataError, match=rf"The sample index {index.path} was deleted while this run was reading "
                                            rf"it\. Restore the file .*then launch again"):
            call()
    with pytest.raises(DataError, match=rf"No sample index at {index.path}\. Register the data first \(titan-recipes "
                                        rf"mixture register"):
        SampleIndex(index.directory, read_only=True)


def test_index_overwritten_in_place_during_a_run_is_named(mixture, tmp_path):
    """``cp other/index.duckdb idx/`` rewrites the open file in place (same inode): DuckDB would read
    pages of another database through its open descriptor."""
    root, samples, index = mixture
    with SampleIndex(tmp_path / "other") as other:
        other.register_dataset("sp", root / "part-00.jsonl", progress=False)
    shutil.copyfile(tmp_path / "other" / "index.duckdb", index.path)
    with pytest.raises(DataError, match=rf"The sample index {index.path} was replaced or modified while this run "
                                        rf"was reading it"):
        index.read_texts([1])
