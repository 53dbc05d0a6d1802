"""The mixture loader resumes with another DP degree: the same global order, no document lost or repeated.

Each rank packs its own documents, so ranks stand at different token positions; the checkpoint holds
every rank's position (all-gathered at a save, merged here with ``merge_rank_states`` as the ranks run
in one process). The tests record the (sample id, token range) pieces every row held, across launches
with different DP degrees, and check that each document's tokens were read exactly once, in order, and
that every document of the chunks all ranks have passed was read in full.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from mixture_corpus import C4, GITHUB, WIKI, registered_corpus

from titan_recipes.errors import DataError
from titan_recipes.data.mixture import SampleIndex, StaticMixture
from titan_recipes.data.mixture.chunks import ChunkPlanner
from titan_recipes.data.mixture.mixture import ScheduleMixture
from titan_recipes.data.mixture.loader import MixtureLoader
from titan_recipes.data.mixture.resume import merge_rank_states
from titan_recipes.data.state import MIXTURE, mixture_rank_key

PROP = "redpajama_set_name"
WEIGHTS = {C4: 0.5, GITHUB: 0.3, WIKI: 0.2}
SEQ_LEN = 16
B = 2
CHUNK = 12
SEED = 7


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index = SampleIndex(registered_corpus(tmp_path_factory).index_dir, read_only=True)
    yield index
    index.close()


def make(index, tokenizer, rank, world, bs=B, mixture=None) -> MixtureLoader:
    return MixtureLoader(
        index=index, mixture=mixture or StaticMixture(WEIGHTS, PROP), tokenizer=tokenizer, seq_len=SEQ_LEN,
        local_batch_size=bs, dp_rank=rank, dp_world_size=world, chunk_size=CHUNK, seed=SEED,
    )


def run(index, tokenizer, world, steps, state=None, pieces=None, rows=None):
    """``world`` ranks read ``steps`` batches each (after loading ``state``); returns the merged state.
    Appends every row's (sample id, start, end) pieces to ``pieces`` and the rows to ``rows``."""
    loaders = [make(index, tokenizer, r, world) for r in range(world)]
    for loader in loaders:
        if state is not None:
            loader.load_state_dict(state)
    iters = [iter(loader) for loader in loaders]
    for _ in range(steps):
        for loader, it in zip(loaders, iters):
            x, y = next(it)
            if rows is not None:
                rows.append(torch.cat([x["input"], y[:, -1:]], dim=1))
            if pieces is not None:
                for row_pieces in loader.last_row_spans:
                    pieces.extend(row_pieces)
    return merge_rank_states([loader.state_dict() for loader in loaders]), loaders


def doc_length(index, tokenizer, sid: int) -> int:
    (text,) = index.read_texts(np.asarray([sid], dtype=np.int64))
    return len(tokenizer.encode(text, add_bos=True, add_eos=True))


def check_exactly_once(index, tokenizer, pieces, loaders):
    """Every document's pieces tile ``[0, end)`` without overlap; those of the chunks every rank has
    passed tile the whole document. (The test stays within the first epoch of every domain, so a sample
    id stands for one document.)"""
    by_doc = defaultdict(list)
    for sid, start, end in pieces:
        by_doc[sid].append((start, end))
    for sid, spans in by_doc.items():
        spans.sort()
        assert spans[0][0] == 0, f"document {sid}: its first {spans[0][0]} tokens were never read"
        for (_, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 == e0, f"document {sid}: tokens {min(s1, e0)}..{max(s1, e0)} {'repeated' if s1 < e0 else 'lost'}"
    passed = min(loader._chunk_state["next_chunk"] for loader in loaders)  # every rank is in this chunk or later
    planner = ChunkPlanner(index, StaticMixture(WEIGHTS, PROP), chunk_size=CHUNK, seed=SEED)
    complete = [sid for k in range(passed) for _, sid in planner.next_chunk().items]
    assert len(complete) == len(set(complete)), "the test must stay within one epoch of every domain"
    for sid in complete:
        assert sid in by_doc, f"document {sid} of chunk < {passed} was never read (lost)"
        assert by_doc[sid][-1][1] == doc_length(index, tokenizer, sid), f"document {sid} was not read to its end"
    assert passed >= 3  # the check covers several chunks
    return by_doc


@pytest.mark.parametrize("degrees", [(2, 1), (1, 2), (2, 3), (3, 2, 1, 2)], ids=lambda d: "->".join(map(str, d)))
def test_another_dp_degree_reads_every_document_once(index, tokenizer, degrees):
    pieces: list = []
    state = None
    for i, world in enumerate(degrees):
        steps = 5 if i < len(degrees) - 1 else 30
        state, loaders = run(index, tokenizer, world, steps, state, pieces)
        assert json.loads(state[MIXTURE])["dp_world_size"] == world
    check_exactly_once(index, tokenizer, pieces, loaders)


def test_uninterrupted_reading_passes_the_same_check(index, tokenizer):
    """The check itself: an uninterrupted 2-rank run passes it, and a resume that replays one batch fails it."""
    pieces: list = []
    _, loaders = run(index, tokenizer, 2, 35, None, pieces)
    check_exactly_once(index, tokenizer, pieces, loaders)
    state, _ = run(index, tokenizer, 2, 5, None, replay := [])
    _, again = run(index, tokenizer, 2, 1, None, replay)  # a resume that forgot the state: starts over
    with pytest.raises(AssertionError, match="repeated"):
        check_exactly_once(index, tokenizer, replay, again)


def test_same_degree_after_a_change_resumes_exactly(index, tokenizer):
    two, _ = run(index, tokenizer, 2, 4)
    one, _ = run(index, tokenizer, 1, 1, two)  # still reading the carried documents of the two old ranks
    assert json.loads(one[MIXTURE])["ranks"][0]["carry"], "the save must fall inside the carry"
    whole: list = []
    run(index, tokenizer, 1, 9, one, rows=whole)
    head: list = []
    mid, _ = run(index, tokenizer, 1, 4, one, rows=head)
    tail: list = []
    run(index, tokenizer, 1, 5, mid, rows=tail)
    assert all(torch.equal(a, b) for a, b in zip(whole, head + tail, strict=True))


def test_a_schedule_needs_the_same_global_batch_and_the_error_names_the_dp_degrees(index, tokenizer):
    def schedule():
        return ScheduleMixture([(0, StaticMixture(WEIGHTS, PROP)), (3, StaticMixture({C4: 0.2, GITHUB: 0.3, WIKI: 0.5}, PROP))])

    loaders = [make(index, tokenizer, r, 2, mixture=schedule()) for r in range(2)]
    for loader in loaders:
        next(iter(loader))
    state = merge_rank_states([loader.state_dict() for loader in loaders])
    with pytest.raises(DataError, match=r"DP degree 2 x local_batch_size 2 = global batch 4; this run has DP degree "
                                        r"1 x 2 = 2.*training.local_batch_size = 4"):
        make(index, tokenizer, 0, 1, mixture=schedule()).load_state_dict(state)
    make(index, tokenizer, 0, 1, bs=4, mixture=schedule()).load_state_dict(state)  # the same global batch: fine


def _legacy(loader: MixtureLoader) -> str:
    """The state an older version wrote for this rank (one key per rank, the rank's own position)."""
    return json.dumps({"fingerprint": loader.legacy_fingerprint(B * loader.dp_world_size), "dp_world_size": loader.dp_world_size,
                       "batches": loader.batches, "chunk_state": loader._chunk_state, "item": loader._item,
                       "offset": loader._offset}, sort_keys=True)


def test_checkpoints_of_the_older_per_rank_format_still_load(index, tokenizer):
    rows_now: list = []
    state, (one,) = run(index, tokenizer, 1, 4)
    run(index, tokenizer, 1, 3, state, rows=rows_now)
    rows_legacy: list = []
    run(index, tokenizer, 1, 3, {MIXTURE: _legacy(one)}, rows=rows_legacy)
    assert all(torch.equal(a, b) for a, b in zip(rows_now, rows_legacy, strict=True))
    run(index, tokenizer, 2, 2, {MIXTURE: _legacy(one)})  # a 1-rank one loads with any degree

    _, two = run(index, tokenizer, 2, 4)
    legacy = {mixture_rank_key(r): _legacy(loader) for r, loader in enumerate(two)}
    for r in range(2):  # with its DP degree (rank 1 asks for its own key: legacy_rank_keys)
        resumed = MixtureLoader(index=index, mixture=StaticMixture(WEIGHTS, PROP), tokenizer=tokenizer,
                                seq_len=SEQ_LEN, local_batch_size=B, dp_rank=r, dp_world_size=2,
                                chunk_size=CHUNK, seed=SEED, legacy_rank_keys=2)
        assert set(resumed.state_dict()) == {mixture_rank_key(k) for k in range(r + 1)}
        resumed.load_state_dict(legacy)
        assert (resumed._chunk_state, resumed._item, resumed._offset) == (two[r]._chunk_state, two[r]._item, two[r]._offset)
    with pytest.raises(DataError, match=r"written with DP degree 2 by an older version.*this run has DP degree 1"):
        make(index, tokenizer, 0, 1).load_state_dict(legacy)
