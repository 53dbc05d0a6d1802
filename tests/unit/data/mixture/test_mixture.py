"""Mixtures, largest-remainder chunk counts and the chunk planner over the hand-known corpus of
``mixture_corpus``: exact counts, no repeats within a domain's epoch, disjoint rank/worker shards,
determinism, resume from state, and the errors."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
from mixture_corpus import BOOK, C4, GITHUB, TOTALS, WIKI, write_corpus

from titan_recipes.errors import ConfigError, DataError, FingerprintMismatchError
from titan_recipes.data.mixture import ChunkPlanner, SampleIndex, Query, ScheduleMixture, StaticMixture, chunk_counts

PROP = "redpajama_set_name"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    samples = write_corpus(root)
    index = SampleIndex(tmp_path_factory.mktemp("index"))
    index.register_dataset("sp", root, progress=False)
    index.samples = samples  # the corpus, for expectations
    yield index
    index.close()


def domain_ids(index, domain) -> set[int]:
    return {s.id for s in index.samples if s.domain == domain}


# -- chunk_counts ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights,size,expected",
    [
        ({"a": 0.5, "b": 0.3, "c": 0.2}, 10, {"a": 5, "b": 3, "c": 2}),
        ({"c": 1 / 3, "b": 1 / 3, "a": 1 / 3}, 10, {"a": 4, "b": 3, "c": 3}),  # tie: by name
        ({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 11, {"a": 4, "b": 4, "c": 3}),
        ({"a": 0.7, "b": 0.2, "c": 0.1}, 3, {"a": 2, "b": 1, "c": 0}),  # remainders .1, .6, .3
        ({"a": 0.25, "b": 0.75}, 1, {"a": 0, "b": 1}),
        ({"a": 0.1, "b": 0.9}, 1000, {"a": 100, "b": 900}),
    ],
)
def test_chunk_counts_largest_remainder(weights, size, expected):
    assert chunk_counts(weights, size) == expected


def test_chunk_counts_sum_and_stay_within_one_of_the_quota():
    rng = random.Random(0)
    for _ in range(200):
        raw = [rng.random() + 1e-3 for _ in range(rng.randint(1, 7))]
        weights = {f"d{i}": w / sum(raw) for i, w in enumerate(raw)}
        size = rng.randint(1, 5000)
        counts = chunk_counts(weights, size)
        assert sum(counts.values()) == size
        assert all(abs(counts[d] - weights[d] * size) < 1 for d in weights)


# -- mixtures -------------------------------------------------------------------------------------
def test_static_mixture_errors():
    with pytest.raises(ConfigError, match=r"weights sum to 0\.9.*not 1.*Normalise them"):
        StaticMixture({C4: 0.5, WIKI: 0.4}, property=PROP)
    with pytest.raises(ConfigError, match=r"weights must be positive numbers; bad: \{'RedPajamaWikipedia': -0\.2\}"):
        StaticMixture({C4: 1.2, WIKI: -0.2}, property=PROP)
    with pytest.raises(ConfigError, match=r"bad: \{'RedPajamaWikipedia': 0\}.*Leave a domain out"):
        StaticMixture({C4: 1.0, WIKI: 0}, property=PROP)
    with pytest.raises(ConfigError, match="has no weights"):
        StaticMixture({}, property=PROP)
    StaticMixture({C4: 0.5, WIKI: 0.5 + 5e-7}, property=PROP)  # within the tolerance


def test_schedule_mixture():
    a = StaticMixture({C4: 1.0}, property=PROP)
    b = StaticMixture({C4: 0.5, WIKI: 0.5}, property=PROP)
    s = ScheduleMixture([(0, a), (100, b)])
    assert s.at(0) is a and s.at(99) is a and s.at(100) is b and s.at(10**6) is b
    assert s.domains == [C4, WIKI]
    assert s.mixture_id != ScheduleMixture([(0, a), (101, b)]).mixture_id
    with pytest.raises(ConfigError, match=r"must start at step 0 and increase strictly; got start steps \[10, 100\]"):
        ScheduleMixture([(10, a), (100, b)])
    with pytest.raises(ConfigError, match="one property"):
        ScheduleMixture([(0, a), (5, StaticMixture({"Pile-CC": 1.0}, property="pile_set_name"))])


# -- the chunk planner ----------------------------------------------------------------------------
WEIGHTS = {C4: 0.5, GITHUB: 0.3, WIKI: 0.2}


def planner(index, weights=WEIGHTS, **kw) -> ChunkPlanner:
    kw.setdefault("chunk_size", 10)
    kw.setdefault("seed", 7)
    return ChunkPlanner(index, StaticMixture(weights, property=PROP), **kw)


def test_chunks_follow_the_mixture_exactly(index):
    p = planner(index)
    for _ in range(40):
        chunk = p.next_chunk()
        assert chunk.counts == {C4: 5, GITHUB: 3, WIKI: 2}
        assert Counter(d for d, _ in chunk.items) == Counter(chunk.counts)
        for domain, sid in chunk.items:
            assert sid in domain_ids(index, domain)


def test_no_sample_twice_within_a_domain_epoch_then_a_logged_wrap(index, caplog):
    p = planner(index)
    taken: dict[str, list[int]] = {C4: [], GITHUB: [], WIKI: []}
    with caplog.at_level(logging.WARNING, logger="titan_recipes.data.mixture.chunks"):
        for _ in range(16):  # Github: 50 samples, 3 per chunk -> its first epoch ends in chunk 16
            for d, sid in p.next_chunk().items:
                taken[d].append(sid)
        assert not caplog.records
        assert len(taken[GITHUB]) == 48 and len(set(taken[GITHUB])) == 48
        for _ in range(14):  # 30 chunks: Wikipedia (60 samples, 2 per chunk) exactly once
            for d, sid in p.next_chunk().items:
                taken[d].append(sid)
        assert sorted(taken[WIKI]) == sorted(domain_ids(index, WIKI))
    wraps = [r.getMessage() for r in caplog.records]
    assert any(f"{PROP}='{GITHUB}' ran out after 50 samples; starting its epoch 1" in m for m in wraps)
    assert any(f"'{C4}' ran out after 120 samples" in m for m in wraps)
    assert p.state_dict()["cursors"] == {C4: 150, GITHUB: 90, WIKI: 60}
    # Past the end, a domain continues with a new permutation of the same samples.
    for domain, n, taken_n in ((C4, 120, 150), (GITHUB, 50, 90)):
        first, second = p.domain_order(domain, 0), p.domain_order(domain, 1)
        assert sorted(first.tolist()) == sorted(second.tolist()) == sorted(domain_ids(index, domain))
        assert first.tolist() != second.tolist()
        assert Counter(taken[domain]) == Counter(first.tolist() + second[: taken_n - n].tolist())


def test_planning_is_deterministic_and_seeded(index):
    a, b, c = planner(index), planner(index), planner(index, seed=8)
    chunks_a = [a.next_chunk() for _ in range(5)]
    assert chunks_a == [b.next_chunk() for _ in range(5)]
    assert chunks_a != [c.next_chunk() for _ in range(5)]
    assert a.fingerprint == b.fingerprint != c.fingerprint


@pytest.mark.parametrize("world,workers", [(1, 1), (2, 1), (3, 1), (2, 2), (4, 3)])
def test_rank_and_worker_shards_partition_the_chunk(index, world, workers):
    p = planner(index, chunk_size=25)
    for _ in range(3):
        chunk = p.next_chunk()
        shards = [chunk.shard(r, world, w, workers) for r in range(world) for w in range(workers)]
        assert tuple(x for s in shards for x in s) == chunk.items  # disjoint, in order, union = chunk
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        for r in range(world):  # a rank's workers together read the rank's block
            rank_block = chunk.shard(r, world)
            assert tuple(x for w in range(workers) for x in chunk.shard(r, world, w, workers)) == rank_block


def test_resume_from_state(index):
    p = planner(index)
    for _ in range(7):
        p.next_chunk()
    state = p.state_dict()
    assert state["next_chunk"] == 7 and state["cursors"] == {C4: 35, GITHUB: 21, WIKI: 14}
    expected = [p.next_chunk() for _ in range(30)]
    q = planner(index)
    q.load_state_dict(state)
    assert [q.next_chunk() for _ in range(30)] == expected
    with pytest.raises(FingerprintMismatchError, match="mixture, query, seed, chunk size or indexed samples changed"):
        planner(index, seed=8).load_state_dict(state)


def test_schedule_switches_weights_at_the_step(index):
    early = StaticMixture({C4: 0.5, WIKI: 0.5}, property=PROP)
    late = StaticMixture({GITHUB: 0.6, BOOK: 0.4}, property=PROP)
    p = ChunkPlanner(index, ScheduleMixture([(0, early), (2, late)]), chunk_size=10, seed=0, global_batch_size=20)
    counts = [p.next_chunk().counts for _ in range(6)]  # two chunks per step
    assert counts[:4] == [{C4: 5, WIKI: 5}] * 4
    assert counts[4:] == [{BOOK: 4, GITHUB: 6}] * 2


def test_query_restricts_the_domains(index):
    q = Query().where("redpajama_set_name", "!=", GITHUB)
    p = planner(index, weights={C4: 0.5, WIKI: 0.5}, query=q)
    assert {d: len(ids) for d, ids in p.ids.items()} == {C4: TOTALS[C4], WIKI: TOTALS[WIKI]}
    assert p.fingerprint != planner(index, weights={C4: 0.5, WIKI: 0.5}).fingerprint


def test_empty_domain_is_an_error(index):
    with pytest.raises(DataError, match=r"domain\(s\) \['RedPajamaStackExchange'\] of 'redpajama_set_name' have positive weight but no samples"):
        planner(index, weights={C4: 0.5, "RedPajamaStackExchange": 0.5})
    excluded = Query().where("redpajama_set_name", "!=", BOOK)
    with pytest.raises(DataError, match=r"\['RedPajamaBook'\].*matching \(redpajama_set_name != 'RedPajamaBook'\)"):
        planner(index, weights={C4: 0.5, BOOK: 0.5}, query=excluded)


def test_mixture_over_unknown_property(index):
    with pytest.raises(ConfigError, match=r"Unknown property 'language'; the index knows \['redpajama_set_name'\]"):
        ChunkPlanner(index, StaticMixture({"en": 1.0}, property="language"), chunk_size=10, seed=0)
