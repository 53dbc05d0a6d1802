"""MDS conversion and loader: round trip, streaming's order, DP partition, exact resume, errors.

Real MDS is written into tmp_path by :func:`write_mds` with the committed tokenizer, from the conftest
corpora as JSONL. Checks are exact, like test_text_loader.py: ``torch.equal`` on batches, set equality
for the union of ranks, and the sample order compared with a real ``StreamingDataset``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import write_jsonl, take, take_ranks, concat_ranks, assert_batches_equal, flat_ids
from configs import job_config

from titan_recipes.errors import ConfigError, DataError, FingerprintMismatchError
from titan_recipes.data.mds.config import MosaicDataloader, MosaicDataset
from titan_recipes.config import validate_job_config
from titan_recipes.data import state as codec
from titan_recipes.data.registry import SOURCES, build_dataloader
from titan_recipes.data.mds import (
    CONVERSION_FILE,
    MDSLoader,
    StreamSpec,
    import_streaming,
    mds_stats,
    write_mds,
)

REPO_ROOT = Path(__file__).resolve().parents[4]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"  # as in conftest.py
B = 4  # local batch size of the 2-rank runs; the 1-rank equivalents use 2 * B
SIZE_LIMIT = "2kb"  # ~20 samples of 17 tokens per shard: a few hundred samples make ~20 shards




@pytest.fixture(scope="module")
def mds_dir(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("mds")
    jsonl = write_jsonl(root / "corpus.jsonl", corpus.docs)
    write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "plain", size_limit=SIZE_LIMIT, progress=False)
    return root / "plain"


@pytest.fixture(scope="module")
def zstd_dir(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("mds_zstd")
    jsonl = write_jsonl(root / "corpus.jsonl", corpus.docs)
    write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "zstd", compression="zstd", size_limit=SIZE_LIMIT, progress=False)
    return root / "zstd"


@pytest.fixture(scope="module")
def other_dir(tmp_path_factory, other_corpus) -> Path:
    root = tmp_path_factory.mktemp("mds_other")
    jsonl = write_jsonl(root / "other.jsonl", other_corpus.docs)
    write_mds([jsonl], TOKENIZER_DIR, other_corpus.seq_len, root / "other", size_limit=SIZE_LIMIT, progress=False)
    return root / "other"


def make_loader(directory, seq_len: int = 16, streams=None, **overrides) -> MDSLoader:
    kwargs = dict(
        streams=streams or [StreamSpec(name="default", local=str(directory), setting="mosaic_dataloader.dataset.local")],
        seq_len=seq_len,
        local_batch_size=B,
        dp_rank=0,
        dp_world_size=1,
        shuffle=True,
        shuffle_seed=9176,
    )
    kwargs.update(overrides)
    return MDSLoader(**kwargs)


def make_ranks(directory, world: int, local_batch_size: int = B, **overrides) -> list[MDSLoader]:
    return [
        make_loader(directory, dp_rank=r, dp_world_size=world, local_batch_size=local_batch_size, **overrides)
        for r in range(world)
    ]












def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- conversion round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "zstd"])
def test_round_trip_reads_back_the_packed_token_stream(corpus, mds_dir, zstd_dir, which):
    directory = {"plain": mds_dir, "zstd": zstd_dir}[which]
    n = corpus.num_samples
    loader = make_loader(directory, shuffle=False, local_batch_size=8)
    assert loader.num_samples == n
    batches = take(loader, n // 8)
    rows = torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in batches])
    expected = torch.from_numpy(np.stack([corpus.window(k) for k in range(n)]))
    assert torch.equal(rows, expected)
    for x, y in batches:
        assert x.dtype == y.dtype == torch.int64
        assert x.shape == y.shape == (8, corpus.seq_len)
        assert torch.equal(y[:, :-1], x[:, 1:])


def test_conversion_records_counts_and_shards(corpus, mds_dir, zstd_dir):
    conversion = json.loads((mds_dir / CONVERSION_FILE).read_text())
    assert conversion["samples"] == corpus.num_samples
    assert conversion["documents"] == len(corpus.docs)
    assert conversion["tokens"] == len(corpus.tokens)
    assert conversion["tail_tokens"] == len(corpus.tokens) - corpus.num_samples * corpus.seq_len - 1
    assert conversion["tokenizer"]["vocab_size"] == 2048
    stats = mds_stats(mds_dir)
    assert stats.shards == conversion["shards"] > 5
    assert (stats.samples, stats.tokens_per_sample, stats.zip_bytes) == (corpus.num_samples, 17, None)
    zstats = mds_stats(zstd_dir)
    assert zstats.compression == "zstd" and zstats.zip_bytes < zstats.raw_bytes  # (shard headers differ a little)


def test_conversion_is_deterministic_and_gzip_gives_the_same_shards(tmp_path, corpus, mds_dir):
    gz = tmp_path / "corpus.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in corpus.docs)
    write_mds([gz], TOKENIZER_DIR, corpus.seq_len, tmp_path / "again", size_limit=SIZE_LIMIT, progress=False)
    assert (tmp_path / "again" / "index.json").read_bytes() == (mds_dir / "index.json").read_bytes()
    assert make_loader(tmp_path / "again").data_fingerprint == make_loader(mds_dir).data_fingerprint


def test_documents_pack_across_input_files(tmp_path, corpus, mds_dir):
    half = len(corpus.docs) // 2
    a = write_jsonl(tmp_path / "a.jsonl", corpus.docs[:half])
    b = write_jsonl(tmp_path / "b.jsonl", corpus.docs[half:])
    write_mds([a, b], TOKENIZER_DIR, corpus.seq_len, tmp_path / "two", size_limit=SIZE_LIMIT, progress=False)
    assert (tmp_path / "two" / "index.json").read_bytes() == (mds_dir / "index.json").read_bytes()


# -- order: determinism, streaming's own order ---------------------------------------------------------


def test_same_settings_give_identical_batches(mds_dir):
    assert_batches_equal(take(make_loader(mds_dir), 12), take(make_loader(mds_dir), 12))


def test_shuffled_epoch_is_a_permutation_and_the_seed_matters(corpus, mds_dir):
    steps = corpus.num_samples // B
    a = flat_ids(corpus, take(make_loader(mds_dir), steps))
    b = flat_ids(corpus, take(make_loader(mds_dir, shuffle_seed=1), steps))
    assert sorted(a) == sorted(b) == list(range(corpus.num_samples))
    assert a != b != list(range(corpus.num_samples))


def _streaming_dataset_epochs(monkeypatch, tmp_path, streams, epochs: int, **kwargs) -> list[list[bytes]]:
    """Sample token rows a real single-process StreamingDataset yields, epoch by epoch."""
    import_streaming()
    from streaming.base.dataset import StreamingDataset
    from streaming.base.stream import Stream

    # StreamingDataset keeps filelocks in gettempdir(); keep them out of the shared /tmp.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    dataset = StreamingDataset(
        streams=[Stream(local=str(s.local), proportion=s.proportion) for s in streams],
        batch_size=1, num_canonical_nodes=1, **kwargs,
    )
    try:
        return [[sample["tokens"].astype(np.int64).tobytes() for sample in dataset] for _ in range(epochs)]
    finally:
        del dataset


def _loader_epochs(loader: MDSLoader, epochs: int) -> list[list[bytes]]:
    return [
        [loader.sample(int(i)).astype(np.int64).tobytes() for i in loader.epoch_order(e)] for e in range(epochs)
    ]


def test_epoch_order_is_streaming_datasets_order(monkeypatch, tmp_path, mds_dir, other_dir):
    """Our global order == what StreamingDataset yields in one process (1 canonical node), with two
    weighted streams, for two epochs (the shuffle and the fractional resampling change per epoch)."""
    streams = [
        StreamSpec("a", str(mds_dir), proportion=0.3, setting="a"),
        StreamSpec("b", str(other_dir), proportion=0.7, setting="b"),
    ]
    ours = _loader_epochs(make_loader(None, streams=streams, shuffle_seed=17), 2)
    theirs = _streaming_dataset_epochs(monkeypatch, tmp_path, streams, 2, shuffle=True, shuffle_seed=17)
    assert ours[0] != ours[1]
    assert ours == theirs


def test_unshuffled_order_is_streaming_datasets_order(monkeypatch, tmp_path, mds_dir):
    streams = [StreamSpec("a", str(mds_dir), setting="a")]
    ours = _loader_epochs(make_loader(None, streams=streams, shuffle=False), 1)
    assert ours == _streaming_dataset_epochs(monkeypatch, tmp_path, streams, 1, shuffle=False)


# -- DP partition ------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_are_disjoint_and_cover_the_epoch(corpus, mds_dir, world):
    local = 8 // world
    steps = corpus.num_samples // 8
    per_rank = [flat_ids(corpus, take(loader, steps)) for loader in make_ranks(mds_dir, world, local_batch_size=local)]
    seen = [k for ids in per_rank for k in ids]
    assert len(seen) == len(set(seen)) == corpus.num_samples
    assert sorted(seen) == list(range(corpus.num_samples))


def test_ranks_together_read_the_one_rank_order(mds_dir):
    """Rank r takes the r-th block of each global batch: concatenated, 2 ranks = 1 rank with 2B."""
    two = take_ranks(make_ranks(mds_dir, 2), 10)
    one = take(make_loader(mds_dir, local_batch_size=2 * B), 10)
    assert_batches_equal([concat_ranks(step) for step in two], one)


# -- resume --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("position", ["mid_epoch", "before_wrap"])
def test_resume_continues_exactly(corpus, mds_dir, world, position):
    steps_per_epoch = corpus.num_samples // (world * B)
    k = {"mid_epoch": 5, "before_wrap": steps_per_epoch - 2}[position]
    m = 6
    reference = take_ranks(make_ranks(mds_dir, world), k + m)

    interrupted = make_ranks(mds_dir, world)
    take_ranks(interrupted, k)
    states = [loader.state_dict() for loader in interrupted]
    assert all(state == states[0] for state in states), "state must be identical on every rank"
    assert states[0][codec.MDS]["consumed_samples"] == k * world * B

    resumed = make_ranks(mds_dir, world)
    for loader, state in zip(resumed, states):
        loader.load_state_dict(state)
    after = take_ranks(resumed, m)
    for r in range(world):
        assert_batches_equal([step[r] for step in after], [step[r] for step in reference[k:]])


def test_resume_from_two_ranks_into_one_loses_and_repeats_nothing(corpus, mds_dir):
    k = 7
    two = make_ranks(mds_dir, 2)
    before = take_ranks(two, k)
    one = make_loader(mds_dir, local_batch_size=2 * B)
    one.load_state_dict(two[1].state_dict())
    rest = take(one, corpus.num_samples // (2 * B) - k)
    reference = take(make_loader(mds_dir, local_batch_size=2 * B), corpus.num_samples // (2 * B))
    assert_batches_equal(rest, reference[k:])
    ids = [i for step in before for x, y in step for i in corpus.sample_ids(x, y)] + flat_ids(corpus, rest)
    assert sorted(ids) == list(range(corpus.num_samples))


def test_resume_from_one_rank_into_two_ranks(mds_dir):
    k, m = 4, 6
    reference = take(make_loader(mds_dir, local_batch_size=2 * B), k + m)
    one = make_loader(mds_dir, local_batch_size=2 * B)
    take(one, k)
    two = make_ranks(mds_dir, 2)
    for loader in two:
        loader.load_state_dict(one.state_dict())
    assert_batches_equal([concat_ranks(step) for step in take_ranks(two, m)], reference[k:])


@pytest.mark.parametrize(
    "change", ["seed", "shuffle", "seq_len_data", "data", "weights"],
)
def test_fingerprint_mismatch_refuses_to_resume(tmp_path, corpus, mds_dir, other_dir, change):
    if change == "weights":
        saved = make_loader(None, streams=[StreamSpec("a", str(mds_dir), proportion=0.5), StreamSpec("b", str(other_dir), proportion=0.5)])
    else:
        saved = make_loader(mds_dir)
    take(saved, 3)
    state = saved.state_dict()
    if change == "seed":
        target = make_loader(mds_dir, shuffle_seed=1)
    elif change == "shuffle":
        target = make_loader(mds_dir, shuffle=False)
    elif change == "data":
        target = make_loader(other_dir)
    elif change == "seq_len_data":
        jsonl = write_jsonl(tmp_path / "c.jsonl", corpus.docs)
        write_mds([jsonl], TOKENIZER_DIR, 12, tmp_path / "s12", size_limit=SIZE_LIMIT, progress=False)
        target = make_loader(tmp_path / "s12", seq_len=12)
    else:
        target = make_loader(None, streams=[StreamSpec("a", str(mds_dir), proportion=0.4), StreamSpec("b", str(other_dir), proportion=0.6)])
    assert target.data_fingerprint != saved.data_fingerprint
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        target.load_state_dict(state)
    assert target.consumed_samples == 0


def test_fingerprint_ignores_the_path_and_the_dp_layout(tmp_path, mds_dir):
    moved = copy_dataset(mds_dir, tmp_path / "moved")
    assert make_loader(moved, local_batch_size=3, dp_rank=1, dp_world_size=2).data_fingerprint == make_loader(mds_dir).data_fingerprint


# -- mixtures -------------------------------------------------------------------------------------------


def test_proportions_give_exact_per_stream_counts_each_epoch(corpus, other_corpus, mds_dir, other_dir):
    """streaming's guarantee: each epoch holds exactly `choose` samples of each stream, with
    choose = floor(epoch * proportion) (+1 for some streams to fill the epoch), mixed IID in the epoch."""
    streams = [StreamSpec("a", str(mds_dir), proportion=0.25), StreamSpec("b", str(other_dir), proportion=0.75)]
    loader = make_loader(None, streams=streams)
    epoch = corpus.num_samples + other_corpus.num_samples
    assert loader.num_samples == epoch  # without epoch_size, the epoch keeps the total size
    assert sum(loader.choose_per_stream) == epoch
    for choose, p in zip(loader.choose_per_stream, (0.25, 0.75)):
        assert abs(choose - epoch * p) <= 1
    for e in range(2):
        order = loader.epoch_order(e)
        streams_of = np.array([loader.stream_of(int(i)) for i in order])
        assert np.bincount(streams_of, minlength=2).tolist() == loader.choose_per_stream
        # IID mixing: both streams appear in each quarter of the epoch.
        for quarter in np.array_split(streams_of, 4):
            assert set(quarter.tolist()) == {0, 1}
    # Stream a (0.25 of ~2x its size) is downsampled: no repeats. Stream b is upsampled: every
    # sample at least once, some twice.
    a = [i for i in loader.epoch_order(0) if loader.stream_of(int(i)) == 0]
    b = np.bincount([i for i in loader.epoch_order(0) if loader.stream_of(int(i)) == 1])
    assert len(set(a)) == len(a) < corpus.num_samples
    assert b[corpus.num_samples :].min() >= 1 and b.max() == 2


def test_mixture_batches_hold_tokens_of_both_streams(corpus, other_corpus, mds_dir, other_dir):
    streams = [StreamSpec("a", str(mds_dir), proportion=0.5), StreamSpec("b", str(other_dir), proportion=0.5)]
    rows = [row for x, y in take(make_loader(None, streams=streams), 20) for row in torch.cat([x, y[:, -1:]], 1).numpy()]
    in_a = [row.tobytes() in corpus.window_to_index for row in rows]
    in_b = [row.tobytes() in other_corpus.window_to_index for row in rows]
    assert all(a or b for a, b in zip(in_a, in_b))
    # (a few windows, e.g. of the short "Epilogue N." documents, can occur in both corpora)
    assert sum(a and not b for a, b in zip(in_a, in_b)) > 0 and sum(b and not a for a, b in zip(in_a, in_b)) > 0


# -- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["plain", "zstd"])
def test_missing_shard_is_a_data_error_naming_the_file(tmp_path, mds_dir, zstd_dir, which):
    directory = copy_dataset({"plain": mds_dir, "zstd": zstd_dir}[which], tmp_path / which)
    if which == "zstd":  # drop the shards other tests decompressed: only the .zstd files are the data
        for raw in directory.glob("shard.*.mds"):
            raw.unlink()
    victim = sorted(p for p in directory.iterdir() if p.name.startswith("shard."))[3]
    victim.unlink()
    with pytest.raises(DataError, match=re.escape(str(victim)) + ".*mosaic_dataloader.dataset.local"):
        make_loader(directory)


def test_truncated_shard_is_a_data_error(tmp_path, mds_dir):
    directory = copy_dataset(mds_dir, tmp_path / "t")
    victim = directory / "shard.00002.mds"
    victim.write_bytes(victim.read_bytes()[:-10])
    with pytest.raises(DataError, match=re.escape(str(victim)) + ".*truncated"):
        make_loader(directory)


@pytest.mark.parametrize(
    "content", ['{"shards": [', "", '{"version": 2}', '{"version": 1, "shards": []}'],
    ids=["cut_json", "empty", "no_shards", "version"],
)
def test_corrupt_index_is_a_data_error_naming_it(tmp_path, mds_dir, content):
    directory = copy_dataset(mds_dir, tmp_path / "c")
    (directory / "index.json").write_text(content)
    with pytest.raises(DataError, match=re.escape(str(directory / "index.json"))):
        make_loader(directory)


def test_index_with_a_bad_shard_entry_is_a_data_error(tmp_path, mds_dir):
    directory = copy_dataset(mds_dir, tmp_path / "e")
    index = json.loads((directory / "index.json").read_text())
    del index["shards"][1]["raw_data"]
    (directory / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=re.escape(str(directory / "index.json"))):
        make_loader(directory)


def test_missing_directory_names_the_setting(tmp_path):
    with pytest.raises(DataError, match=r"index.json.*mosaic_dataloader.dataset.local.*does not exist"):
        make_loader(tmp_path / "nowhere")


def test_seq_len_other_than_the_conversion_is_repacked_with_a_warning(mds_dir, caplog):
    # Was a DataError; now packed (test_layouts.py checks the windows). The log says what happens.
    loader = make_loader(mds_dir, seq_len=32)
    assert loader.packed is not None
    assert re.search(r"windows converted for seq_len 16, but training.seq_len = 32.*--seq-len 32", caplog.text)


def test_an_empty_epoch_is_refused(mds_dir, other_dir):
    streams = [StreamSpec("a", str(mds_dir), choose=0), StreamSpec("b", str(other_dir), choose=0)]
    with pytest.raises(ConfigError, match="empty epoch"):
        make_loader(None, streams=streams)


def test_mixed_relative_and_absolute_weights_are_a_config_error(mds_dir, other_dir):
    streams = [StreamSpec("a", str(mds_dir), proportion=0.5), StreamSpec("b", str(other_dir), repeat=2.0)]
    with pytest.raises(ConfigError, match="mosaic_dataloader.dataset.streams"):
        make_loader(None, streams=streams)


# -- conversion errors ------------------------------------------------------------------------------------


def test_write_refuses_a_non_empty_output(tmp_path, mds_dir):
    jsonl = write_jsonl(tmp_path / "x.jsonl", ["Some text here."] * 50)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_mds([jsonl], TOKENIZER_DIR, 16, mds_dir, progress=False)


def test_write_names_a_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    with pytest.raises(DataError, match=re.escape(f"{path}:2")):
        write_mds([path], TOKENIZER_DIR, 16, tmp_path / "out", progress=False)


def test_write_refuses_a_size_limit_below_one_sample(tmp_path):
    jsonl = write_jsonl(tmp_path / "x.jsonl", ["Some text here."] * 50)
    with pytest.raises(ValueError, match="size_limit"):
        write_mds([jsonl], TOKENIZER_DIR, 16, tmp_path / "out", size_limit=100, progress=False)


def test_write_too_little_text_is_a_data_error(tmp_path):
    jsonl = write_jsonl(tmp_path / "x.jsonl", ["Hi."])
    with pytest.raises(DataError, match="fewer than one sample"):
        write_mds([jsonl], TOKENIZER_DIR, 64, tmp_path / "out", progress=False)


# -- config and build_dataloader ---------------------------------------------------------------------------


def fake_job_config(dataset: MosaicDataset, num_workers: int = 0, hf_assets_path: str = str(TOKENIZER_DIR)):
    return job_config(training={"dataset": "mds", "seq_len": 16, "local_batch_size": 2},
                      model={"hf_assets_path": hf_assets_path},
                      mosaic_dataloader=MosaicDataloader(num_workers=num_workers, dataset=dataset))


def test_mds_is_registered_and_built_from_the_config(mds_dir, other_dir):
    assert "mds" in SOURCES
    config = fake_job_config(
        MosaicDataset(streams={"a": {"local": str(mds_dir), "proportion": 1}, "b": {"local": str(other_dir), "proportion": 3}}, shuffle_seed=5)
    )
    loader = build_dataloader(2, 1, None, config)
    assert isinstance(loader, MDSLoader)
    assert (loader.seq_len, loader.local_batch_size, loader.dp_rank, loader.dp_world_size) == (16, 2, 1, 2)
    direct = make_loader(
        None, streams=[StreamSpec("a", str(mds_dir), proportion=1), StreamSpec("b", str(other_dir), proportion=3)],
        shuffle_seed=5, local_batch_size=2, dp_rank=1, dp_world_size=2,
    )
    assert loader.data_fingerprint == direct.data_fingerprint
    assert_batches_equal(take(loader, 3), take(direct, 3))


@pytest.mark.parametrize(
    "dataset, num_workers, match",
    [
        (dict(), 0, "exactly one of mosaic_dataloader.dataset.local"),
        (dict(local="/x", streams={"a": {"local": "/y"}}), 0, "exactly one of"),
        (dict(streams={"a": {"local": "/y", "weight": 2}}), 0, r"Unknown key\(s\) \['weight'\] in `mosaic_dataloader.dataset.streams.a`"),
        (dict(streams={"a": {"remote": "bucket/x", "local": "/y"}}), 0, r"streams.a.remote` must be a URL"),
        (dict(streams={"a": {"proportion": 1.0}}), 0, r"`mosaic_dataloader.dataset.streams.a.local`"),
        (dict(streams={"a": {"local": "/y", "proportion": "half"}}), 0, r"streams.a.proportion` must be a number"),
        (dict(local="/x"), -1, r"mosaic_dataloader.num_workers must be >= 0"),
        (dict(local="/x", predownload=-5), 0, r"mosaic_dataloader.dataset.predownload must be -1 \(off\) or >= 0, got -5"),
        (dict(local="/x", shuffle_algo="best"), 0, "shuffle_algo = 'best'"),
    ],
    ids=["neither", "both", "unknown_key", "remote", "no_local", "bad_weight", "workers", "predownload", "algo"],
)
def test_config_errors_name_the_key(mds_dir, dataset, num_workers, match):
    if dataset.get("local") == "/x":
        dataset["local"] = str(mds_dir)
    with pytest.raises(ConfigError, match=match):
        build_dataloader(1, 0, None, fake_job_config(MosaicDataset(**dataset), num_workers=num_workers))


def test_validate_checks_the_section_only_for_mds():
    section = MosaicDataloader(dataset=MosaicDataset(streams={"a": {"local": "/y", "weight": 2}}))
    job = job_config(training={"dataset": "text"}, mosaic_dataloader=section)
    section.validate(job)  # another source trains: [mosaic_dataloader] is not read
    job.training.dataset = "mds"
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['weight'\] in `mosaic_dataloader.dataset.streams.a`"):
        section.validate(job)  # no data file needed: the config check finds it


def test_data_from_another_tokenizer_is_refused(tmp_path, mds_dir):
    other = copy_dataset(TOKENIZER_DIR, tmp_path / "tok")
    (other / "tokenizer.json").write_text((other / "tokenizer.json").read_text() + "\n")
    config = fake_job_config(MosaicDataset(local=str(mds_dir)), hf_assets_path=str(other))
    with pytest.raises(DataError, match=r"tokenized with .*model.hf_assets_path"):
        build_dataloader(1, 0, None, config)


def test_toml_streams_parse_into_the_merged_job_config(tmp_path, mds_dir, other_dir):
    from torchtitan.config import ConfigManager

    toml = tmp_path / "train.toml"
    toml.write_text(
        '[job]\ncustom_config_module = "titan_recipes.config"\n'
        '[training]\ndataset = "mds"\n'
        '[mosaic_dataloader.dataset]\nshuffle_seed = 3\n'
        f'[mosaic_dataloader.dataset.streams.books]\nlocal = "{mds_dir}"\nproportion = 0.3\n'
        f'[mosaic_dataloader.dataset.streams.web]\nlocal = "{other_dir}"\nproportion = 0.7\n'
    )
    config = ConfigManager().parse_args(["--job.config_file", str(toml), "--mosaic_dataloader.dataset.shuffle_seed", "4"])
    validate_job_config(config)
    dataset = config.mosaic_dataloader.dataset
    assert dataset.shuffle_seed == 4 and list(dataset.streams) == ["books", "web"]
    assert dataset.streams["web"] == {"local": str(other_dir), "proportion": 0.7}
    config.mosaic_dataloader.dataset.shuffle_seed = "4"
    with pytest.raises(ConfigError, match=r"`mosaic_dataloader\.dataset\.shuffle_seed`"):
        validate_job_config(config)


# -- scripts and the import shim -------------------------------------------------------------------------


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scripts_convert_and_report(tmp_path, corpus, capsys):
    convert, stats = load_script("mds_convert"), load_script("mds_stats")
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--help"])
    assert exit_info.value.code == 0 and "--seq-len" in capsys.readouterr().out
    jsonl = write_jsonl(tmp_path / "c.jsonl", corpus.docs)
    out = tmp_path / "out"
    rc = convert.main([str(jsonl), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", "16", "--out", str(out),
                       "--compression", "zstd", "--size-limit", "4kb", "--no-progress"])
    assert rc == 0 and f"{corpus.num_samples:,} samples of 17 tokens" in capsys.readouterr().out
    assert stats.main([str(out)]) == 0
    table = capsys.readouterr().out
    assert f"{corpus.num_samples:,}" in table and f"{corpus.num_samples * 17:,}" in table and "zstd" in table
    assert stats.main([str(tmp_path / "nothing")]) == 1
    assert "index.json" in capsys.readouterr().err


def test_streaming_is_imported_without_its_heavy_init():
    import sys

    import_streaming()
    assert "streaming.base.dataloader" not in sys.modules  # it imports transformers
    import streaming

    with pytest.raises(AttributeError, match="from its submodule"):
        streaming.StreamingDataset  # noqa: B018


# -- non-IID streams per DP rank -----------------------------------------------------------------------


def non_iid_config(mds_dir, other_dir, non_iid, **streams_extra):
    streams = {"a": {"local": str(mds_dir), "proportion": 0.5}, "b": {"local": str(other_dir), "proportion": 0.5}}
    for name, extra in streams_extra.items():
        streams[name].update(extra)
    return fake_job_config(MosaicDataset(streams=streams, non_iid_streams=non_iid, shuffle_seed=11))


def non_iid_ranks(config, world: int) -> list[MDSLoader]:
    return [build_dataloader(world, r, None, config) for r in range(world)]


def rank_sample_ids(loader: MDSLoader, epochs: int = 1) -> list[int]:
    return [int(i) for e in range(epochs) for i in loader.epoch_order(e)]


NON_IID = {
    "dp_rank_0": {"a": {"proportion": 0.8}, "b": {"proportion": 0.2}},
    "default": {"b": {}},
}


def test_non_iid_ranks_read_disjoint_samples_with_their_own_proportions(mds_dir, other_dir):
    ranks = non_iid_ranks(non_iid_config(mds_dir, other_dir, NON_IID), 3)
    assert all(loader.non_iid for loader in ranks)
    ids = [rank_sample_ids(loader, 2) for loader in ranks]
    # Disjoint: no sample id is read by two ranks (over two epochs, with resampling).
    for r in range(3):
        for q in range(r + 1, 3):
            assert not set(ids[r]) & set(ids[q]), (r, q)
    # Rank 0: 80/20 of its epoch, exactly; ranks 1 and 2 read only stream b.
    streams0 = np.bincount([ranks[0].stream_of(i) for i in ranks[0].epoch_order(0)], minlength=2)
    assert streams0.tolist() == ranks[0].choose_per_stream
    assert abs(streams0[0] / streams0.sum() - 0.8) < 0.01
    for loader in ranks[1:]:
        assert {loader.stream_of(i) for i in loader.epoch_order(0)} == {1}
    # Stream b is split three ways into contiguous blocks that cover it; ranks 1 and 2 (no weight:
    # each sample once per epoch) read exactly their blocks, rank 0 a 20%-of-its-epoch subset of its own.
    n_a, n_b = (int(n) for n in ranks[0].data.samples_per_stream)
    blocks = [set(range(n_a + n_b * j // 3, n_a + n_b * (j + 1) // 3)) for j in range(3)]
    assert set(ranks[1].epoch_order(0).tolist()) == blocks[1] and len(ranks[1].epoch_order(0)) == len(blocks[1])
    assert set(ranks[2].epoch_order(1).tolist()) == blocks[2]
    assert {i for i in ids[0] if ranks[0].stream_of(i) == 1} <= blocks[0]
    # Each rank's epochs differ (own seeds), and the batches it yields follow its own order.
    assert ranks[1].epoch_order(0).tolist() != ranks[2].epoch_order(0).tolist()
    x, y = take(ranks[2], 1)[0]
    expected = np.stack([ranks[2].sample(int(i)) for i in ranks[2].epoch_order(0)[:2]])
    assert torch.equal(torch.cat([x, y[:, -1:]], 1), torch.from_numpy(expected).long())


def test_non_iid_plan_is_reproducible_and_resumes_exactly(mds_dir, other_dir):
    config = non_iid_config(mds_dir, other_dir, NON_IID)
    k, m = 5, 40  # past the end of the smaller ranks' epochs
    reference = take_ranks(non_iid_ranks(config, 3), k + m)
    again = take_ranks(non_iid_ranks(config, 3), k + m)
    for step_a, step_b in zip(reference, again):
        assert_batches_equal(step_a, step_b)
    interrupted = non_iid_ranks(config, 3)
    take_ranks(interrupted, k)
    states = [loader.state_dict() for loader in interrupted]
    assert all(state == states[0] for state in states)
    assert states[0][codec.MDS]["dp_world_size"] == 3 and len(states[0][codec.MDS]["num_samples"]) == 3
    resumed = non_iid_ranks(config, 3)
    for loader, state in zip(resumed, states):
        loader.load_state_dict(state)
    after = take_ranks(resumed, m)
    for r in range(3):
        assert_batches_equal([step[r] for step in after], [step[r] for step in reference[k:]])


def test_non_iid_refuses_another_dp_degree_and_other_plans(mds_dir, other_dir):
    config = non_iid_config(mds_dir, other_dir, NON_IID)
    state = non_iid_ranks(config, 3)[0].state_dict()
    with pytest.raises(DataError, match=r"non_iid_streams.*DP degree it was saved with \(3\); this run has 2"):
        build_dataloader(2, 0, None, config).load_state_dict(state)
    other = non_iid_config(mds_dir, other_dir, {**NON_IID, "dp_rank_0": {"a": {"proportion": 0.7}, "b": {"proportion": 0.3}}})
    with pytest.raises(FingerprintMismatchError):
        build_dataloader(3, 1, None, other).load_state_dict(state)  # rank 1's own plan is unchanged
    iid = make_loader(None, streams=[StreamSpec("a", str(mds_dir), proportion=0.5), StreamSpec("b", str(other_dir), proportion=0.5)])
    with pytest.raises(DataError, match="a checkpoint without non_iid_streams"):
        build_dataloader(1, 0, None, non_iid_config(mds_dir, other_dir, NON_IID)).load_state_dict(iid.state_dict())


def test_non_iid_inherits_base_weights_and_ranks_without_entry_read_everything(mds_dir, other_dir):
    config = non_iid_config(mds_dir, other_dir, {"dp_rank_1": {"a": {}}}, a={"proportion": 0.3}, b={"proportion": 0.7})
    r0, r1 = non_iid_ranks(config, 2)
    assert r1.choose_per_stream[1] == 0 and r1.num_samples == r1.choose_per_stream[0]
    assert abs(r0.choose_per_stream[0] / r0.num_samples - 0.3) < 0.01
    assert not set(rank_sample_ids(r0)) & set(rank_sample_ids(r1))


@pytest.mark.parametrize(
    "non_iid, match",
    [
        ({"rank_1": {"a": {}}}, r"keys are dp_rank_<N> or default"),
        ({"dp_rank_5": {"a": {}}}, r"dp_rank_5: there are only 2 data-parallel ranks"),
        ({"default": {"c": {}}}, r"non_iid_streams.default.c`: no stream 'c'"),
        ({"default": {"a": {"local": "/x"}}}, r"Unknown key\(s\) \['local'\].*local/remote are the base stream's"),
        ({"default": {"a": {"proportion": "x"}}}, r"default.a.proportion` must be a number"),
        ({"dp_rank_0": {"a": {"proportion": 0.5}, "b": {"repeat": 2}}}, r"non_iid_streams \(dp_rank 0\)"),
    ],
    ids=["bad_key", "rank_out_of_range", "unknown_stream", "local_override", "bad_weight", "mixed_weights"],
)
def test_non_iid_config_errors_name_the_key(mds_dir, other_dir, non_iid, match):
    with pytest.raises(ConfigError, match=match):
        build_dataloader(2, 0, None, non_iid_config(mds_dir, other_dir, non_iid))


def test_non_iid_toml_parses(tmp_path, mds_dir, other_dir):
    from torchtitan.config import ConfigManager

    toml = tmp_path / "train.toml"
    toml.write_text(
        '[job]\ncustom_config_module = "titan_recipes.config"\n[training]\ndataset = "mds"\n'
        f'[mosaic_dataloader.dataset.streams.a]\nlocal = "{mds_dir}"\n'
        f'[mosaic_dataloader.dataset.streams.b]\nlocal = "{other_dir}"\n'
        '[mosaic_dataloader.dataset.non_iid_streams.dp_rank_1.a]\nrepeat = 2\n'
        '[mosaic_dataloader.dataset.non_iid_streams.default.b]\n'
    )
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    validate_job_config(config)
    assert config.mosaic_dataloader.dataset.non_iid_streams == {"dp_rank_1": {"a": {"repeat": 2}}, "default": {"b": {}}}


# -- validation --------------------------------------------------------------------------------------------


def validation_config(streams, local_batch_size=4, seq_len=16):
    # validation data only: an "mds" training run would need its streams
    return job_config(training={"dataset": "c4_test", "seq_len": 16, "local_batch_size": 2},
                      model={"hf_assets_path": str(TOKENIZER_DIR)},
                      mosaic_dataloader={"validation_streams": streams},
                      validation={"dataset": "mds", "seq_len": seq_len, "local_batch_size": local_batch_size})


def test_validation_is_a_finite_unshuffled_pass_cut_by_rank(corpus, other_corpus, mds_dir, other_dir):
    from titan_recipes.data.mds import MDSValidationLoader, build_mds_validation_loader

    streams = {"a": {"local": str(mds_dir)}, "b": {"local": str(other_dir)}}
    total = corpus.num_samples + other_corpus.num_samples
    one = build_mds_validation_loader(1, 0, None, validation_config(streams, local_batch_size=6))
    assert isinstance(one, MDSValidationLoader) and one.state_dict() == {}
    first, second = ([(x["input"], y) for x, y in one] for _ in range(2))
    assert len(first) == total // 6
    assert_batches_equal(first, second)  # every pass reads the same samples
    rows = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y in first])
    expected = np.stack([corpus.window(k) for k in range(corpus.num_samples)] + [other_corpus.window(k) for k in range(other_corpus.num_samples)])
    assert torch.equal(rows, torch.from_numpy(expected[: len(rows)]))
    ranks = [build_mds_validation_loader(2, r, None, validation_config(streams, local_batch_size=3)) for r in range(2)]
    per_rank = [[(x["input"], y) for x, y in loader] for loader in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(first)
    assert_batches_equal([(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*per_rank)], first)


@pytest.mark.parametrize(
    "streams, kwargs, error, match",
    [
        ({}, {}, ConfigError, r"validation.dataset = 'mds' needs .*mosaic_dataloader.validation_streams"),
        ({"v": {"local": "DIR", "proportion": 0.5}}, {}, ConfigError, r"Unknown key\(s\) \['proportion'\] in `mosaic_dataloader.validation_streams.v`"),
        ({"v": {"local": "DIR"}}, {"local_batch_size": 10_000}, DataError, r"fewer than one global batch"),
    ],
    ids=["no_streams", "weights", "too_small"],
)
def test_validation_errors(mds_dir, streams, kwargs, error, match):
    from titan_recipes.data.mds import build_mds_validation_loader

    streams = {name: {k: (str(mds_dir) if v == "DIR" else v) for k, v in fields.items()} for name, fields in streams.items()}
    with pytest.raises(error, match=match):
        build_mds_validation_loader(1, 0, None, validation_config(streams, **kwargs))


# -- streaming's other Stream fields ------------------------------------------------------------------


def test_stream_split_reads_a_subdirectory(tmp_path, mds_dir):
    root = tmp_path / "data"
    copy_dataset(mds_dir, root / "train")
    config = fake_job_config(MosaicDataset(streams={"web": {"local": str(root), "split": "train", "download_retry": 1,
                                                            "download_timeout": 5, "keep_zip": True}}))
    loader = build_dataloader(1, 0, None, config)
    assert loader.specs[0].local == str(root / "train")
    assert_batches_equal(take(loader, 3), take(make_loader(mds_dir, local_batch_size=2), 3))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"validate_hash": "crc99"}, r"streams.web.validate_hash` = 'crc99' is not one of streaming's hashes"),
        ({"download_retry": 0}, r"streams.web.download_retry` must be an integer >= 1"),
        ({"download_timeout": "slow"}, r"streams.web.download_timeout` must be a number of seconds"),
        ({"keep_zip": "yes"}, r"streams.web.keep_zip` must be true or false"),
    ],
    ids=["hash", "retry", "timeout", "keep_zip"],
)
def test_stream_field_errors_name_the_key(mds_dir, fields, match):
    config = fake_job_config(MosaicDataset(streams={"web": {"local": str(mds_dir), **fields}}))
    with pytest.raises(ConfigError, match=match):
        build_dataloader(1, 0, None, config)
