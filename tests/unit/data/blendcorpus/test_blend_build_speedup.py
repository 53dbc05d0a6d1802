"""The vectorized BlendCorpus index build (issue 18) against a verbatim copy of the implementation it
replaced: the blend order defines the recipes' expected-loss fixtures and checkpoint fingerprints, so
every ``blend`` array must be bitwise identical, for shuffle on/off, blend_sample_in_corpus on/off, 1, 2
and 3 corpora, shards drawn more and fewer times than their size, tiny shards and sizes 0 and 1.

Shards are written in tmp_path with MegatronWriter; no tokenizer is needed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from titan_recipes.data.blendcorpus import plan
from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader
from titan_recipes.data.blendcorpus.megatron_format import MegatronWriter
from titan_recipes.data.blendcorpus.plan import greedy_blend

L = 8


# ---- today's implementation (before issue 18), copied verbatim as the reference ----------------------

def _old_greedy_blend(weights: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    weights = np.asarray(weights, dtype=np.float64)
    weights = weights / weights.sum()
    if size >= 50_000 and len(weights) < 2**15:
        try:
            from megatron.core.datasets import helpers_cpp
        except ImportError:
            helpers_cpp = None
        if helpers_cpp is not None:
            dataset_index = np.zeros(size, dtype=np.int16)
            sample_index = np.zeros(size, dtype=np.int64)
            helpers_cpp.build_blending_indices(dataset_index, sample_index, weights, len(weights), size, False)
            return dataset_index.astype(np.int64), sample_index
    counts = np.zeros(len(weights), dtype=np.int64)
    dataset_index = np.empty(size, dtype=np.int64)
    sample_index = np.empty(size, dtype=np.int64)
    for n in range(size):
        i = int(np.argmax(weights * max(n, 1.0) - counts))
        dataset_index[n] = i
        sample_index[n] = counts[i]
        counts[i] += 1
    return dataset_index, sample_index


def _old_build(self, shuffle: bool, blend_in_corpus: bool, seed: int) -> np.ndarray:
    size = sum(s.num_samples for s in self.shards)
    corpus_of = np.array([self.corpus_names.index(e.corpus) for e in self.entries])
    weights = np.array([e.weight for e in self.entries])
    corpus_weights = np.array([weights[corpus_of == c].sum() for c in range(len(self.corpus_names))])
    corpus_idx, _ = _old_greedy_blend(corpus_weights, size)
    out = np.empty((size, 3), dtype=np.int64)
    out[:, 0] = corpus_idx
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(s.num_samples) if shuffle else np.arange(s.num_samples) for s in self.shards]
    for c in range(len(self.corpus_names)):
        members = np.flatnonzero(corpus_of == c)
        where = np.flatnonzero(corpus_idx == c)
        local, draw = _old_greedy_blend(weights[members], len(where))
        if not blend_in_corpus:
            order = np.argsort(local, kind="stable")
            local, draw = local[order], draw[order]
        if shuffle and blend_in_corpus:
            order = rng.permutation(len(where))
            local, draw = local[order], draw[order]
        shard_ids = members[local]
        out[where, 1] = shard_ids
        for s in members:
            sel = shard_ids == s
            n = self.shards[s].num_samples
            out[where[sel], 2] = perms[s][draw[sel] % n]
    return out


# ---- fixtures -----------------------------------------------------------------------------------------

def _write(root: Path, name: str, rows) -> Path:
    """``rows``: (weight, corpus, tokens) per shard; each shard's documents are 3..19 tokens long."""
    lines = []
    for i, (weight, corpus, n_tokens) in enumerate(rows):
        prefix = root / f"{name}-{i}"
        rng = np.random.default_rng(i)
        with MegatronWriter(prefix, np.uint16) as w:
            pos = 0
            while pos < n_tokens:
                n = min(int(rng.integers(3, 20)), n_tokens - pos)
                w.add_document(np.arange(pos, pos + n) % 60000)
                pos += n
        lines.append(f"{weight} {prefix.name} {corpus}\n")
    path = root / f"{name}.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


CASES = {
    # one corpus, one shard of exactly one sample (size 1)
    "one-sample": [(1.0, "A", L + 1)],
    "one-corpus": [(1.0, "A", 400), (3.0, "A", 90), (0.5, "A", 30)],
    # B's weight >> its size: drawn more than it has samples (repeats); A's shards drawn less
    "two-corpora": [(1.0, "A", 500), (2.0, "A", 800), (3.0, "B", 700)],
    # A is one shard drawn fewer times than it has samples (its corpus weight is below its size share)
    "undersampled-single": [(1.0, "A", 3000), (1.0, "B", 200), (1.0, "B", 100)],
    "oversampled": [(1.0, "A", 3000), (1.0, "A", 2000), (50.0, "B", 2 * L + 1)],
    "three-corpora": [(0.3, "A", 300), (1.7, "B", 900), (0.2, "C", 40), (2.2, "A", 250), (1.0, "C", 610),
                      (0.01, "B", 20), (4.0, "C", 9)],
    # more corpora than _positions compares one by one (it sorts instead)
    "many-corpora": [(0.5 + (i % 5), f"C{i % 11}", 60 + 37 * i) for i in range(23)],
    # interleaved corpus names, tiny shards of one or two samples
    "tiny": [(1.0, "X", L + 1), (2.0, "Y", 2 * L + 1), (1.0, "X", 2 * L + 1), (5.0, "Z", L + 1)],
}


@pytest.fixture(scope="module")
def lists(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speedup")
    return {name: _write(root, name, rows) for name, rows in CASES.items()}


def _loader(path: Path, cache: Path, **kw) -> BlendCorpusLoader:
    return BlendCorpusLoader(file_list=path, seq_len=L, local_batch_size=1, dp_rank=0, dp_world_size=1,
                             split="100,0,0", cache_dir=cache, **kw)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("blend_in_corpus", [True, False])
def test_blend_is_bitwise_the_old_one(lists, tmp_path, name, shuffle, blend_in_corpus):
    loader = _loader(lists[name], tmp_path, shuffle_sample_in_corpus=shuffle, blend_sample_in_corpus=blend_in_corpus,
                     seed=77)
    expected = _old_build(loader, shuffle, blend_in_corpus, 77)
    assert loader.blend.dtype == expected.dtype and loader.blend.shape == expected.shape
    np.testing.assert_array_equal(loader.blend, expected)
    assert len(np.unique(loader.blend[:, 1])) == len(CASES[name])  # every shard is drawn


def test_the_python_fallback_gives_the_same_blend(lists, tmp_path, monkeypatch):
    """Without megatron-core (here: the compiled path switched off) the build is still the same."""
    monkeypatch.setattr(plan, "FAST_BLEND_MIN_SIZE", 10**12)
    loader = _loader(lists["three-corpora"], tmp_path)
    np.testing.assert_array_equal(loader.blend, _old_build(loader, True, True, 1234))


@pytest.mark.parametrize("weights", [[1.0], [0.2, 0.5, 0.3], [1, 1], [1e-9, 1.0, 3.0], list(range(1, 41))])
@pytest.mark.parametrize("size", [0, 1, 2, 7, 1001, 60_000])
def test_greedy_blend_equals_megatron_at_every_size(weights, size, monkeypatch):
    helpers = pytest.importorskip("megatron.core.datasets.helpers_cpp")
    w = np.asarray(weights, np.float64) / np.sum(weights)
    ds, si = np.zeros(size, np.int16), np.zeros(size, np.int64)
    helpers.build_blending_indices(ds, si, w, len(w), size, False)
    for threshold in (1, 10**12):  # compiled, then the Python loop
        monkeypatch.setattr(plan, "FAST_BLEND_MIN_SIZE", threshold)
        if threshold > 1 and size * len(weights) > 10**6:
            continue  # the loop at this size is the slow path the compiled one replaces
        got_ds, got_si = greedy_blend(np.asarray(weights, np.float64), size)
        assert got_ds.dtype == np.int64 and got_si.dtype == np.int64
        np.testing.assert_array_equal(got_ds, ds)
        np.testing.assert_array_equal(got_si, si)


def test_the_compiled_blend_loads_without_importing_megatron_core():
    pytest.importorskip("megatron.core.datasets.helpers_cpp")  # installed (this test imports it only after)
    import subprocess
    import sys

    code = ("import sys; from titan_recipes.data.blendcorpus.plan import _compiled_blend; "
            "assert _compiled_blend() is not None; print('megatron.core' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_many_shards_log_a_summary(tmp_path, caplog):
    rows = [(1.0 if i % 2 else 40.0, "A", 2 * L + 1) for i in range(60)] + [(1.0, "B", 4000)]
    with caplog.at_level(logging.INFO, logger="titan_recipes.data.blendcorpus.loader"):
        loader = _loader(_write(tmp_path, "many", rows), tmp_path / "cache")
    np.testing.assert_array_equal(loader.blend, _old_build(loader, True, True, 1234))
    messages = [r.getMessage() for r in caplog.records]
    repeat = [m for m in messages if "samples repeat" in m]
    assert len(repeat) == 20 and any("more shards are drawn more times" in m for m in messages)
