"""The mixture engine's training loader over the hand-known corpus of ``mixture_corpus``: reading texts
back, batch contract, per-chunk domain counts, disjoint DP shards, exact resume, fingerprint refusal
and the ``[mixture]`` config errors."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch
from configs import job_config
from mixture_corpus import ARXIV, BOOK, C4, GITHUB, WIKI, registered_corpus

from titan_recipes.data.mixture.config import Ado
from titan_recipes.errors import ConfigError, DataError, FingerprintMismatchError
from titan_recipes.data.registry import build_dataloader, find_source
from titan_recipes.data.workers import Workers
from titan_recipes.data.mixture import ChunkPlanner, SampleIndex, StaticMixture, TextReader, chunk_counts
from titan_recipes.data.mixture.ado import AdoMixture
from titan_recipes.data.mixture.loader import MixtureLoader
from titan_recipes.data.mixture.resume import merge_rank_states
from titan_recipes.data.state import MIXTURE

PROP = "redpajama_set_name"
WEIGHTS = {C4: 0.5, GITHUB: 0.3, WIKI: 0.2}
SEQ_LEN = 16
B = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return registered_corpus(tmp_path_factory)


@pytest.fixture()
def index(corpus):
    index = SampleIndex(corpus.index_dir, read_only=True)
    yield index
    index.close()


def make_loader(index, tokenizer, weights=WEIGHTS, rank=0, world=1, chunk_size=20, seed=7, **kw) -> MixtureLoader:
    return MixtureLoader(
        index=index, mixture=StaticMixture(weights, PROP), tokenizer=tokenizer, seq_len=SEQ_LEN,
        local_batch_size=B, dp_rank=rank, dp_world_size=world, chunk_size=chunk_size, seed=seed, **kw,
    )


def take(loader, n):
    it = iter(loader)
    out = []
    for _ in range(n):
        x, y = next(it)
        out.append((x["input"], y, loader.last_domain_ids.clone(), loader.last_token_domain_ids.clone()))
    return out


def record_chunks(loader) -> list[tuple[int, list[int], list[int]]]:
    """Wrap ``_load_chunk`` to record (chunk index, sample ids, domain ids) of each block read."""
    seen = []
    inner = loader._load_chunk

    def wrapped():
        inner()
        seen.append((loader.planner.next_chunk_index - 1, loader._sample_ids.tolist(), list(loader._doc_domains)))

    loader._load_chunk = wrapped
    return seen


# -- reading texts back ---------------------------------------------------------------------------
def test_read_texts_returns_the_jsonl_text_of_each_id(corpus, index):
    expected, per_file = {}, Counter()
    for s in corpus.samples:  # write_corpus: the j-th record of a file is "<file> sample <j> of <domain>"
        expected[s.id] = f"{s.file} sample {per_file[s.file]} of {s.domain}"
        per_file[s.file] += 1
    ids = list(expected)
    random.Random(0).shuffle(ids)
    ids += ids[:5]  # repeats
    assert index.read_texts(ids) == [expected[i] for i in ids]
    assert index.read_texts(np.asarray([299, 0])) == [expected[299], expected[0]]  # cached .zst, plain
    assert index.read_texts([]) == []
    with pytest.raises(DataError, match="not in the index"):
        index.read_texts([10_000])
    streaming = TextReader(index, cache_bytes=10)  # compressed files larger than the cache: streamed
    assert streaming.read(ids) == [expected[i] for i in ids] and not streaming._cache


# -- batches ---------------------------------------------------------------------------------------
def test_batches_have_the_contract_shape_and_dtype(index, tokenizer):
    loader = make_loader(index, tokenizer)
    (x, y, dom, tokdom), = take(loader, 1)
    assert x.shape == y.shape == (B, SEQ_LEN) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert dom.shape == (B,) and dom.dtype == torch.int64 and tokdom.shape == (B, SEQ_LEN)
    assert loader.domains == sorted(WEIGHTS)
    assert int(dom.min()) >= 0 and int(dom.max()) < len(WEIGHTS)
    assert find_source("mixture").loader_builder().__name__ == "build_mixture_loader"


def test_rows_pack_the_block_documents_with_bos_eos_and_domains(index, tokenizer):
    loader = make_loader(index, tokenizer)
    blocks = record_chunks(loader)
    batches = take(loader, 12)
    stream = torch.cat([torch.cat([x, y[:, -1:]], 1) for x, y, _, _ in batches]).flatten().numpy()
    doms = torch.cat([t for *_, t in batches]).numpy()
    texts = [t for _, ids, _ in blocks for t in index.read_texts(ids)]
    want = np.concatenate([tokenizer.encode(t, add_bos=True, add_eos=True) for t in texts])
    assert np.array_equal(stream, want[: len(stream)])  # nothing dropped, nothing padded
    block_domains = [d for *_, ds in blocks for d in ds]
    want_dom = np.concatenate([[d] * len(tokenizer.encode(t, add_bos=True, add_eos=True))
                               for d, t in zip(block_domains, texts, strict=True)])
    rows = want_dom[: len(stream)].reshape(-1, SEQ_LEN + 1)
    assert np.array_equal(doms, rows[:, 1:])


def test_per_domain_counts_follow_the_weights_in_every_chunk(index, tokenizer):
    loader = make_loader(index, tokenizer, chunk_size=20)
    blocks = record_chunks(loader)
    take(loader, 20)
    assert len(blocks) >= 3
    expected = {loader.domains.index(d): n for d, n in chunk_counts(WEIGHTS, 20).items()}
    for k, (index_, _, domains) in enumerate(blocks):
        assert index_ == k
        assert Counter(domains) == expected  # 10 C4, 6 Github, 4 Wikipedia


def test_two_dp_ranks_read_disjoint_blocks_that_make_up_each_chunk(index, tokenizer):
    ranks = [make_loader(index, tokenizer, rank=r, world=2, chunk_size=21) for r in range(2)]
    seen = [record_chunks(r) for r in ranks]
    for r in ranks:
        take(r, 15)
    planner = ChunkPlanner(index, StaticMixture(WEIGHTS, PROP), chunk_size=21, seed=7, global_batch_size=2 * B)
    common = min(len(s) for s in seen)
    assert common >= 3
    for k in range(common):
        full = [sid for _, sid in planner.next_chunk().items]
        a, b = seen[0][k][1], seen[1][k][1]
        assert seen[0][k][0] == seen[1][k][0] == k
        assert a + b == full and len(a) == 10 and len(b) == 11
        assert not set(a) & set(b)


# -- checkpointing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2])
def test_resume_is_exact(index, tokenizer, world):
    firsts = [make_loader(index, tokenizer, rank=rank, world=world) for rank in range(world)]
    heads = [take(first, 5) for first in firsts]
    states = [first.state_dict() for first in firsts]
    assert all(list(state) == [MIXTURE] for state in states)  # one global key, at any degree
    state = merge_rank_states(states)  # what the all-gather of a distributed save writes
    for rank in range(world):
        whole = take(make_loader(index, tokenizer, rank=rank, world=world), 14)
        resumed = make_loader(index, tokenizer, rank=rank, world=world)
        resumed.load_state_dict(state)
        tail = take(resumed, 9)
        for a, b in zip(whole, heads[rank] + tail, strict=True):
            assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_changed_mixture_or_index_refuses_to_resume(corpus, index, tokenizer, tmp_path):
    loader = make_loader(index, tokenizer)
    take(loader, 3)
    state = loader.state_dict()
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        make_loader(index, tokenizer, weights={C4: 0.4, GITHUB: 0.4, WIKI: 0.2}).load_state_dict(state)
    with pytest.raises(FingerprintMismatchError):
        make_loader(index, tokenizer, seed=8).load_state_dict(state)
    # the same samples plus one more file in the index
    other_dir = tmp_path / "index2"
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "x.jsonl").write_text('{"text": "more", "meta": {"redpajama_set_name": "RedPajamaBook"}}\n')
    with SampleIndex(other_dir) as w:
        w.register_dataset("sp", corpus.root, progress=False)
        w.register_dataset("extra", extra, progress=False)
    with SampleIndex(other_dir, read_only=True) as other:
        with pytest.raises(FingerprintMismatchError):
            make_loader(other, tokenizer).load_state_dict(state)
    with pytest.raises(DataError, match=r"holds no position for DP rank\(s\) \[1\]"):  # an incomplete save
        make_loader(index, tokenizer, rank=0, world=2).load_state_dict(make_loader(index, tokenizer, rank=0, world=2).state_dict())


# -- config ----------------------------------------------------------------------------------------
def job(corpus, num_workers=0, **mixture):
    return job_config(
        mixture={"index_dir": str(corpus.index_dir), "property": PROP, "weights": dict(WEIGHTS), "chunk_size": 20, **mixture},
        training={"dataset": "mixture", "seq_len": SEQ_LEN, "local_batch_size": B, "dataloader": {"num_workers": num_workers}},
    )


def test_build_from_config_with_query_and_schedule(corpus, tokenizer):
    loader = build_dataloader(1, 0, tokenizer, job(corpus, query=[[[PROP, "in", [C4, GITHUB, WIKI]]]]))
    (x, *_), = take(loader, 1)
    assert x.shape == (B, SEQ_LEN)
    sched = job(corpus, weights={}, schedule={"0": {C4: 1.0}, "2": {BOOK: 0.5, ARXIV: 0.5}})
    loader = build_dataloader(1, 0, tokenizer, sched)
    assert loader.domains == sorted([C4, BOOK, ARXIV])


@pytest.mark.parametrize(
    "settings,error,match",
    [
        ({"property": "nope"}, ConfigError, "mixture.property = 'nope'"),
        ({"property": ""}, ConfigError, "mixture.property is not set"),
        ({"weights": {C4: 0.5, GITHUB: 0.3}}, ConfigError, "mixture.weights: .*sum to"),
        ({"weights": {}}, ConfigError, "exactly one of mixture.weights"),
        ({"schedule": {"0": {C4: 1.0}}}, ConfigError, "exactly one of mixture.weights"),
        ({"weights": {}, "schedule": {"x": {C4: 1.0}}}, ConfigError, "mixture.schedule"),
        ({"weights": {}, "schedule": {"5": {C4: 1.0}}}, ConfigError, "mixture.schedule: .*step 0"),
        ({"index_dir": ""}, ConfigError, "needs mixture.index_dir"),
        ({"index_dir": "no/such/dir"}, ConfigError, "mixture.index_dir = 'no/such/dir'"),
        ({"query": [[["quality", "~", 1]]]}, ConfigError, "mixture.query: .*operator"),
        ({"query": [[["nope", "==", 1]]]}, ConfigError, "unknown property"),
        ({"chunk_size": 0}, ConfigError, "mixture.chunk_size"),
        ({"weights": {C4: 0.5, "RedPajamaStackExchange": 0.5}}, DataError, "no samples"),
        ({"weights": {}, "schedule": {"0": {C4: 1.0}}, "ado": Ado(enable=True)}, ConfigError, "prior as mixture.weights"),
        ({"ado": Ado(enable=True), "per_domain_loss": False}, ConfigError, "needs mixture.per_domain_loss"),
        ({"ado": Ado(enable=True, min_weight=0.4)}, ConfigError, "min_weight"),
    ],
)
def test_config_errors_name_the_key(corpus, tokenizer, settings, error, match):
    with pytest.raises(error, match=match):
        build_dataloader(1, 0, tokenizer, job(corpus, **settings))


def test_workers_and_small_chunks_are_config_errors(corpus, index, tokenizer):
    with pytest.raises(ConfigError, match="num_workers = 0"):
        build_dataloader(1, 0, tokenizer, job(corpus, num_workers=2))
    with pytest.raises(ConfigError, match="chunk_size = 3"):
        make_loader(index, tokenizer, chunk_size=3, rank=0, world=4)
    with pytest.raises(ConfigError, match="num_workers"):
        make_loader(index, tokenizer, workers=Workers(num_workers=1))


def test_the_mixture_table_parses_from_toml(tmp_path):
    """torchtitan's ConfigManager reads every [mixture] key from TOML, and our type check accepts them."""
    from pathlib import Path

    from torchtitan.config import ConfigManager

    from titan_recipes.config import validate_job_config

    recipe = Path(__file__).resolve().parents[4] / "recipes" / "debug" / "train.toml"
    toml = tmp_path / "m.toml"
    toml.write_text(recipe.read_text() + '''
[mixture]
index_dir = "idx"
property = "redpajama_set_name"
query = [[["redpajama_set_name", "in", ["RedPajamaC4", "RedPajamaBook"]]], [["redpajama_set_name", "==", "X"]]]
chunk_size = 32
seed = 3
[mixture.schedule.0]
RedPajamaC4 = 1
[mixture.schedule.100]
RedPajamaC4 = 0.5
RedPajamaBook = 0.5
''')
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    validate_job_config(config)
    m = config.mixture
    assert (m.index_dir, m.property, m.chunk_size, m.seed, m.weights) == ("idx", PROP, 32, 3, {})
    assert m.schedule == {"0": {C4: 1}, "100": {C4: 0.5, BOOK: 0.5}}
    assert m.query[0][0] == [PROP, "in", [C4, BOOK]]


# -- dynamic mixtures and the per-domain loss's ids --------------------------------------------------
def make_ado_loader(index, tokenizer, rank=0, world=1):
    ado = AdoMixture(StaticMixture(WEIGHTS, PROP), warmup_steps=0, fit_interval=1, min_weight=0.05)
    return MixtureLoader(
        index=index, mixture=ado, tokenizer=tokenizer, seq_len=SEQ_LEN, local_batch_size=B, dp_rank=rank,
        dp_world_size=world, chunk_size=4, seed=7, emit_domain_ids=True,
    )


def adapt(loader, step):
    """What the trainer does after a step: new weights from the first chunk not yet planned."""
    w = [0.2, 0.2, 0.6] if step % 2 else [0.6, 0.3, 0.1]  # (C4, GITHUB, WIKI) sorted by name
    loader.apply_weights(w, loader.planned_chunks)


def take_adapting(loader, n, start=0):
    it, out = iter(loader), []
    for step in range(start, start + n):
        x, y = next(it)
        out.append((x["input"], x["domain_ids"], y))
        adapt(loader, step)
    return out


def test_dynamic_weights_apply_to_unplanned_chunks_and_resume_exactly(index, tokenizer):
    loader = make_ado_loader(index, tokenizer)
    seen = record_chunks(loader)
    whole = take_adapting(loader, 12)
    counts = [Counter(loader.domains[d] for d in domains) for _, _, domains in seen]
    assert counts[0] == chunk_counts(WEIGHTS, 4) == {C4: 2, GITHUB: 1, WIKI: 1}  # before any update
    assert {C4: 3, GITHUB: 1} in counts and {C4: 1, GITHUB: 1, WIKI: 2} in counts  # both updates used
    for x, ids, y in whole:
        assert ids.shape == y.shape and ids.dtype == torch.int64  # the per-domain loss's ids ride along

    first = make_ado_loader(index, tokenizer)
    head = take_adapting(first, 5)
    state = first.state_dict()
    resumed = make_ado_loader(index, tokenizer)
    resumed.load_state_dict(state)  # restores the weight updates before re-planning the current chunk
    tail = take_adapting(resumed, 7, start=5)
    for a, b in zip(whole, head + tail, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    with pytest.raises(ValueError, match="already planned"):
        resumed.apply_weights([0.4, 0.3, 0.3], resumed.planned_chunks - 1)
