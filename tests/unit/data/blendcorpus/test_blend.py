"""BlendCorpus loader: greedy blend vs Megatron, weights per prefix, DP partition, exact resume, cache, errors.

Shards are written in tmp_path with MegatronWriter; shard ``s`` holds the token ids ``s*20000 + 0, 1, 2,
...`` in order, so every sample names its shard and position and the tests need no tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from configs import job_config

from titan_recipes.data import state as codec
from titan_recipes.data.blendcorpus.config import BlendCorpus
from titan_recipes.config import JobConfig, validate_job_config
from titan_recipes.errors import ConfigError, DataError, FingerprintMismatchError
from titan_recipes.data.registry import SOURCES, build_dataloader
from titan_recipes.data.blendcorpus import plan as blend_module
from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader
from titan_recipes.data.blendcorpus.plan import greedy_blend, split_bounds
from titan_recipes.data.blendcorpus.megatron_format import MegatronWriter, idx_path

L = 8
STRIDE = 20000
SHARDS = [("a0", 1.0, "A", 500), ("a1", 2.0, "A", 800), ("b0", 3.0, "B", 700)]  # prefix, weight, corpus, tokens


def _write_shard(prefix: Path, sid: int, n_tokens: int) -> None:
    rng = np.random.default_rng(sid)
    tokens = np.arange(n_tokens) + sid * STRIDE
    with MegatronWriter(prefix, np.uint16) as w:
        pos = 0
        while pos < n_tokens:
            n = int(rng.integers(3, 20))
            w.add_document(tokens[pos : pos + n])
            pos += n


def _write_list(path: Path, rows) -> Path:
    path.write_text("# weight prefix corpus\n" + "".join(f"{w} {p} {c}\n" for p, w, c, _ in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blend")
    for sid, (prefix, _, _, n) in enumerate(SHARDS):
        _write_shard(root / prefix, sid, n)
    _write_list(root / "list.txt", SHARDS)
    return root


def make(data: Path, rank=0, world=1, bs=8, **kw) -> BlendCorpusLoader:
    kw.setdefault("split", "100,0,0")
    kw.setdefault("cache_dir", data / "cache")
    return BlendCorpusLoader(file_list=data / kw.pop("list_name", "list.txt"), seq_len=L, local_batch_size=bs,
                             dp_rank=rank, dp_world_size=world, **kw)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


@pytest.mark.parametrize("size", [997, 30_000])
def test_greedy_blend_matches_megatron(size, monkeypatch):
    helpers = pytest.importorskip("megatron.core.datasets.helpers_cpp")
    monkeypatch.setattr(blend_module, "FAST_BLEND_MIN_SIZE", 10**12)  # our Python loop, not Megatron's
    weights = np.array([0.2, 0.5, 0.3])
    ds, si = np.zeros(size, np.int16), np.zeros(size, np.int64)
    helpers.build_blending_indices(ds, si, weights, len(weights), size, False)
    ours_ds, ours_si = greedy_blend(weights, size)
    np.testing.assert_array_equal(ours_ds, ds)
    np.testing.assert_array_equal(ours_si, si)


def test_split_bounds_megatron_rounding():
    assert split_bounds(100, (0.98, 0.01, 0.01)) == [0, 98, 99, 100]
    assert split_bounds(10, (0.98, 0.01, 0.01)) == [0, 10, 10, 10]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_prefix_matches_the_weights_within_one_sample(data, shuffle):
    loader = make(data, shuffle_sample_in_corpus=shuffle)
    corpus = np.asarray(loader.blend[:, 0])
    n = np.arange(1, len(corpus) + 1)
    for c, w in ((0, 3 / 6), (1, 3 / 6)):
        assert np.abs(np.cumsum(corpus == c) - w * n).max() <= 1
    if not shuffle:  # within corpus A, shards a0:a1 = 1:2 on every prefix of A's draws
        shard = np.asarray(loader.blend[corpus == 0, 1])
        m = np.arange(1, len(shard) + 1)
        assert np.abs(np.cumsum(shard == 1) - (2 / 3) * m).max() <= 1


def test_samples_are_packed_windows_of_their_shard(data):
    loader = make(data)
    for g in range(0, loader.num_samples, 7):
        _, shard, k = loader.blend[g]
        row = loader.sample(g)
        assert len(row) == L + 1
        np.testing.assert_array_equal(row, np.arange(k * L, k * L + L + 1) + shard * STRIDE)


def test_last_corpus_ids_name_each_row(data):
    loader = make(data, bs=5)
    it = iter(loader)
    for _ in range(6):
        inputs, _ = next(it)
        shards = inputs["input"][:, 0] // STRIDE
        expected = torch.tensor([0 if s < 2 else 1 for s in shards.tolist()])
        assert torch.equal(loader.last_corpus_ids, expected)
    assert loader.corpus_names == ["A", "B"]


def test_two_ranks_are_disjoint_and_union_is_the_one_rank_stream(data):
    one = take(make(data, bs=8), 10)
    r0, r1 = take(make(data, 0, 2, 4), 10), take(make(data, 1, 2, 4), 10)
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1):
        assert torch.equal(torch.cat([x0["input"], x1["input"]]), x["input"])
        assert torch.equal(torch.cat([y0, y1]), y)


def test_exact_resume_with_another_dp_degree(data):
    ref = take(make(data, bs=8), 12)
    first = make(data, bs=8)
    take(first, 5)
    state = first.state_dict()
    assert state[codec.BLENDCORPUS]["consumed_samples"] == 40
    halves = []
    for rank in (0, 1):
        resumed = make(data, rank, 2, 4)
        resumed.load_state_dict(state)
        halves.append(take(resumed, 7))
    for (x, y), (x0, y0), (x1, y1) in zip(ref[5:], *halves):
        assert torch.equal(torch.cat([x0["input"], x1["input"]]), x["input"])
        assert torch.equal(torch.cat([y0, y1]), y)


def test_fingerprint_mismatch_refuses(data):
    state = make(data).state_dict()
    with pytest.raises(FingerprintMismatchError):
        make(data, seed=7).load_state_dict(state)


def test_cache_built_once_and_reused(data, tmp_path):
    first = make(data, cache_dir=tmp_path / "c")
    mtime = first.cache_path.stat().st_mtime_ns
    desc = first.description_path.read_text()
    assert "a0" in desc and '"seq_len": 8' in desc
    second = make(data, cache_dir=tmp_path / "c")
    assert second.cache_path == first.cache_path and second.cache_path.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.blend, first.blend)
    assert len(list((tmp_path / "c").iterdir())) == 2  # the index and its description


def test_splits_are_disjoint_document_ranges(data):
    full, train = make(data, split="100,0,0"), make(data, split="50,25,25")
    assert train.num_samples < full.num_samples * 0.6
    parts = [make(data, split="50,25,25", split_index=i) for i in range(3)]
    for s in range(len(SHARDS)):
        ranges = [(p.shards[s].first_doc, p.shards[s].end_doc) for p in parts]
        assert ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0]
        assert ranges[2][1] == len(parts[0].shards[s].shard)
    tokens = [set(np.concatenate([p.sample(g) for g in range(p.num_samples)]).tolist()) for p in parts]
    # Every token id occurs once in the shards, so disjoint splits share no token.
    assert not tokens[0] & tokens[1] and not tokens[0] & tokens[2] and not tokens[1] & tokens[2]
    assert parts[1].data_fingerprint != parts[0].data_fingerprint


def test_empty_split_names_it(data):
    with pytest.raises(DataError, match=r"its valid split \(blendcorpus.split = '100,0,0'\) has 0 tokens"):
        make(data, split="100,0,0", split_index=1)


@pytest.mark.parametrize(
    "line, match",
    [("1.0 a0", r"list.txt:2: expected '<weight> <path-prefix> <corpus>', got 2 fields"),
     ("abc a0 A", r"list.txt:2: weight 'abc' is not a number"),
     ("0 a0 A", r"list.txt:2: weight must be positive"),
     ("-1 a0 A", r"list.txt:2: weight must be positive")],
)
def test_malformed_file_list(data, tmp_path, line, match):
    (tmp_path / "list.txt").write_text(f"# header\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError, match=match):
        BlendCorpusLoader(file_list=tmp_path / "list.txt", seq_len=L, local_batch_size=2, dp_rank=0,
                          dp_world_size=1, cache_dir=tmp_path / "c")


def test_missing_idx_and_corrupt_header(tmp_path):
    _write_shard(tmp_path / "s", 0, 200)
    _write_list(tmp_path / "list.txt", [("s", 1.0, "A", 0)])
    raw = idx_path(tmp_path / "s").read_bytes()
    idx_path(tmp_path / "s").write_bytes(b"X" * 9 + raw[9:])
    with pytest.raises(DataError, match=r"bad header, cannot read: .*s\.idx"):
        make(tmp_path, bs=2)
    idx_path(tmp_path / "s").unlink()
    with pytest.raises(DataError, match=r"index file missing: .*s\.idx"):
        make(tmp_path, bs=2)


def _job(data: Path, validation=None, **blend):
    blend.setdefault("split", "100,0,0")
    return job_config(training={"dataset": "blendcorpus", "dataset_path": str(data / "list.txt"), "seq_len": L,
                                "local_batch_size": 4},
                      blendcorpus=BlendCorpus(data_cache_path=str(data / "cache"), **blend), validation=validation or {})


def test_registered_and_built_from_config(data):
    assert "blendcorpus" in SOURCES
    loader = build_dataloader(1, 0, None, _job(data, seq_length=L, micro_batch_size=0))
    assert isinstance(loader, BlendCorpusLoader) and loader.local_batch_size == 4


def test_blendcorpus_section_is_type_checked():
    config = JobConfig()
    config.blendcorpus.seq_length = "8"
    with pytest.raises(ConfigError, match="blendcorpus.seq_length"):
        validate_job_config(config)


@pytest.mark.parametrize(
    "blend, match",
    [({"seq_length": 16}, r"blendcorpus.seq_length = 16 differs from training.seq_len = 8"),
     ({"micro_batch_size": 2}, r"blendcorpus.micro_batch_size = 2 differs from training.local_batch_size = 4"),
     ({"num_workers": -1}, r"blendcorpus.num_workers must be >= 0"),
     ({"dataloader_type": "cyclic"}, r"dataloader_type = 'cyclic'"),
     ({"provide_attention_mask": True}, r"provide_attention_mask"),
     ({"append_eod": True}, r"eod_token_id >= 0"),
     ({"data_file_list": "/elsewhere.txt"}, r"disagree"),
     ({"split": "98,2"}, r"blendcorpus.split = '98,2'")],
)
def test_config_fields_are_honoured_or_rejected(data, blend, match):
    with pytest.raises(ConfigError, match=match):
        build_dataloader(1, 0, None, _job(data, **blend))


def test_append_eod_inserts_the_token(data, tmp_path):
    loader = make(data, append_eod=True, eod_token_id=65000, cache_dir=tmp_path)
    rows = np.stack([loader.sample(g) for g in range(loader.num_samples)])
    assert (rows == 65000).any()


def test_toml_blendcorpus_section_through_torchtitan(data, tmp_path):
    from torchtitan.config import ConfigManager

    toml = tmp_path / "blend.toml"
    toml.write_text(
        '[job]\ncustom_config_module = "titan_recipes.config"\n\n'
        f'[training]\ndataset = "blendcorpus"\ndataset_path = "{data / "list.txt"}"\nseq_len = {L}\nlocal_batch_size = 4\n\n'
        f'[blendcorpus]\nsplit = "100,0,0"\nseq_length = {L}\ndata_cache_path = "{tmp_path / "cache"}"\n',
        encoding="utf-8",
    )
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    validate_job_config(config)
    loader = build_dataloader(2, 1, None, config)
    assert isinstance(loader, BlendCorpusLoader) and loader.dp_rank == 1 and loader.seq_len == L
    inputs, labels = next(iter(loader))
    assert inputs["input"].shape == labels.shape == (4, L) and inputs["input"].dtype == torch.long


def test_fingerprint_follows_content_not_location(data, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(data, moved, ignore=shutil.ignore_patterns("cache", "blendcorpus_cache"))
    assert make(moved, cache_dir=tmp_path / "c").data_fingerprint == make(data).data_fingerprint
    _write_shard(moved / "a0", 0, 480)  # other documents in one shard
    assert make(moved, cache_dir=tmp_path / "c").data_fingerprint != make(data).data_fingerprint


def test_without_blending_in_corpus_shards_follow_each_other(data):
    loader = make(data, blend_sample_in_corpus=False, shuffle_sample_in_corpus=False)
    corpus, shard = np.asarray(loader.blend[:, 0]), np.asarray(loader.blend[:, 1])
    in_a = shard[corpus == 0]
    assert set(in_a) == {0, 1} and (np.diff(in_a) >= 0).all()  # all of a0's draws, then a1's
    assert (np.bincount(in_a) == np.bincount(np.asarray(make(data).blend[:, 1])[corpus == 0])).all()


def test_crossing_an_epoch_keeps_corpus_ids_and_warns_once(data, caplog):
    loader = make(data, bs=3)  # 3 does not divide the epoch, so a batch straddles the boundary
    steps = loader.num_samples // 3 + 2
    with caplog.at_level("WARNING"):
        it = iter(loader)
        for _ in range(steps):
            inputs, _ = next(it)
            shards = (inputs["input"][:, 0] // STRIDE).tolist()
            assert loader.last_corpus_ids.tolist() == [0 if s < 2 else 1 for s in shards]
    assert sum("entering epoch 1" in r.message for r in caplog.records) == 1


# -- validation: validation.dataset = "blendcorpus" ----------------------------------------------------

from titan_recipes.data.blendcorpus.loader import BlendCorpusValidationLoader, build_blendcorpus_validation_loader  # noqa: E402


def make_val(data: Path, rank=0, world=1, bs=4, **kw) -> BlendCorpusValidationLoader:
    kw.setdefault("split", "50,25,25")
    kw.setdefault("cache_dir", data / "cache")
    return BlendCorpusValidationLoader(file_list=data / "list.txt", seq_len=L, local_batch_size=bs, dp_rank=rank,
                                       dp_world_size=world, **kw)


def _rows(loader) -> list[list[int]]:
    return [row for inputs, _ in loader for row in inputs["input"].tolist()]


def test_validation_reads_the_valid_split_finitely_from_sample_0_every_pass(data):
    val = make_val(data)
    valid = make(data, split="50,25,25", split_index=1)
    assert val.split_name == "valid" and val.data_fingerprint == valid.data_fingerprint
    assert val.steps == valid.num_samples // 4 > 0
    passes = [list(val) for _ in range(2)]
    assert len(passes[0]) == val.steps  # finite: the iterator ends
    for (a_in, a_lab), (b_in, b_lab) in zip(*passes):  # every pass is the same
        assert torch.equal(a_in["input"], b_in["input"]) and torch.equal(a_lab, b_lab)
    inputs, labels = passes[0][0]
    assert inputs["input"].shape == labels.shape == (4, L) and inputs["input"].dtype == torch.long
    # the blend's order over the valid split, sample 0 first
    expected = [valid.sample(g) for g in range(val.steps * 4)]
    assert _rows(val) == [s[:-1].tolist() for s in expected]
    train_tokens = set(np.concatenate([make(data, split="50,25,25").sample(g) for g in range(10)]).tolist())
    assert not train_tokens & set(np.concatenate(expected).tolist())
    # corpus ids of the last batch follow the blend
    assert val.last_corpus_ids.tolist() == np.asarray(valid.blend[val.last_sample_ids][:, 0]).tolist()


def test_validation_ranks_stop_together_and_partition_the_one_rank_pass(data):
    one = _rows(make_val(data, bs=2))
    ranks = [make_val(data, rank=r, world=3, bs=2) for r in range(3)]
    n = ranks[0].num_samples // 6
    assert all(r.steps == n for r in ranks) and all(len(list(r)) == n for r in ranks)
    rows = [_rows(r) for r in ranks]
    interleaved = [row for step in range(n) for r in range(3) for row in rows[r][2 * step : 2 * step + 2]]
    assert interleaved == one[: 6 * n]


def test_validation_has_no_checkpoint_state(data):
    val = make_val(data)
    next(iter(val))
    assert val.state_dict() == {}
    val.load_state_dict({"consumed_samples": 40})
    assert torch.equal(next(iter(val))[0]["input"], next(iter(make_val(data)))[0]["input"])


def test_validation_split_without_a_batch_names_blendcorpus_split(data):
    with pytest.raises(DataError, match=r"its valid split \(blendcorpus.split = '100,0,0'\) has 0 tokens"):
        make_val(data, split="100,0,0")
    with pytest.raises(DataError, match=r"the valid split \(blendcorpus.split = '50,25,25'\) has \d+ samples, "
                                        r"fewer than one global batch of 2000"):
        make_val(data, bs=1000, world=2)


def _val_job(data: Path, **blend):
    validation = {"dataset": "blendcorpus", "seq_len": L, "local_batch_size": 2}
    return _job(data, validation, **{"split": "50,25,25", **blend})


def test_validation_registered_and_built_from_config(data):
    from titan_recipes.data.registry import validation_builder

    assert validation_builder("blendcorpus") is build_blendcorpus_validation_loader
    val = build_blendcorpus_validation_loader(2, 1, None, _val_job(data))
    assert isinstance(val, BlendCorpusValidationLoader) and val.split_name == "valid"
    assert val.dp_rank == 1 and val.local_batch_size == 2 and val.seq_len == L
    test = build_blendcorpus_validation_loader(1, 0, None, _val_job(data, validation_split="test"))
    assert test.split_name == "test" and test.data_fingerprint == make(data, split="50,25,25", split_index=2).data_fingerprint
    with pytest.raises(ConfigError, match=r"blendcorpus.validation_split = 'train'"):
        build_blendcorpus_validation_loader(1, 0, None, _val_job(data, validation_split="train"))


def test_recipe_toml_parses_with_blendcorpus_validation():
    from torchtitan.config import ConfigManager

    from titan_recipes.data.registry import validation_builder

    toml = Path(__file__).resolve().parents[4] / "recipes" / "blendcorpus" / "train.toml"
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    validate_job_config(config)
    assert config.training.dataset == "blendcorpus" and validation_builder(config.validation.dataset) is not None
    assert config.blendcorpus.validation_split == "valid" and config.validation.enable
