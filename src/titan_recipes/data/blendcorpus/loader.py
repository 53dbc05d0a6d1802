"""BlendCorpus: a weighted two-level blend of Megatron .bin/.idx shards (``training.dataset = "blendcorpus"``).

The file list (``training.dataset_path``, or ``[blendcorpus] data_file_list``) has one shard per line::

    <weight> <path-prefix> <corpus>        # '#' starts a comment; blank lines are skipped

as written by ``scripts/blendcorpus.py file-list``. What one epoch of the blend is:

1. Each shard's documents (one Megatron sequence each) are split train/valid/test by
   ``[blendcorpus] split`` (e.g. "98,1,1"; contiguous document ranges, Megatron's rounding). The
   training loader reads the train part (``split_index`` 0; 1 and 2 select valid and test). Its
   documents are packed into one stream (``eod_token_id`` appended after each when ``append_eod``)
   and cut into samples ``tokens[k*L : k*L + L + 1]`` (``L = seq_len``).
2. An epoch has as many samples as all shards together. Corpora get them by weight (a corpus weighs the
   sum of its shards' weights), then a corpus's shards by weight, each level with Megatron's greedy
   blending (at step ``n`` pick the dataset with the largest ``weight * max(n, 1) - count``, first on
   ties), so every prefix of the blend matches the weights within one sample. With
   ``blend_sample_in_corpus = false`` a corpus's draws read its shards one after the other (file-list
   order) instead of interleaved. A shard drawn more often than it has samples repeats them (logged).
3. ``shuffle_sample_in_corpus``: the samples of each shard are visited in a seeded permutation, and
   (when interleaving) the draws of each corpus are permuted too (seeded by ``seed``). Otherwise in
   order. The corpus level always keeps the greedy order.

The blend (corpus, shard, sample per global index) is cached in ``data_cache_path`` under a hash of
everything that shapes it (weights, corpora, shard names and document lengths, settings; not the
directory, so moved data keeps its fingerprint), with ``<hash>-description.json`` beside it
(Megatron's scheme), built once and then memory-mapped. Epochs after the first repeat the same order (logged by GlobalOrderLoader).

Batches are torchtitan's ``({"input": LongTensor[B, L]}, labels)``. The corpus of each row of the last
batch is :attr:`BlendCorpusLoader.last_corpus_ids` (LongTensor[B], indices into
:attr:`BlendCorpusLoader.corpus_names`): not an extra input key, because torchtitan's Trainer passes
extra input keys to the model's forward as keyword arguments, which llama3 rejects.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import ConfigError, DataError
from ..global_order import FinitePass, GlobalOrderLoader
from ..workers import Workers, training_workers
from .. import state as codec
from ..state import fingerprint
from ..integrity import check_token_ids
from ...prepare.manifest import check_prepared_blend
from .plan import SPLIT_NAMES, PackedShard, greedy_blend, parse_file_list, parse_split

logger = logging.getLogger(__name__)


class BlendCorpusLoader(GlobalOrderLoader):
    """Global blend of Megatron shards; see the module docstring for the order and the cache."""

    state_key = codec.BLENDCORPUS

    def __init__(
        self,
        *,
        file_list: str | Path,
        seq_len: int,
        local_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        split: str = "98,1,1",
        shuffle_sample_in_corpus: bool = True,
        blend_sample_in_corpus: bool = True,
        append_eod: bool = False,
        eod_token_id: int = -1,
        seed: int = 1234,
        cache_dir: str | Path | None = None,
        split_index: int = 0,
        workers: Workers | None = None,
    ):
        super().__init__(name=f"blendcorpus-{SPLIT_NAMES.get(split_index, split_index)}",
                         local_batch_size=local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
                         workers=workers)
        if append_eod and eod_token_id < 0:
            raise ConfigError("blendcorpus.append_eod = true needs blendcorpus.eod_token_id >= 0 (the id to append).")
        self.entries = parse_file_list(file_list)
        split_frac = parse_split(split)
        if split_index not in SPLIT_NAMES:
            raise ValueError(f"split_index must be one of {sorted(SPLIT_NAMES)}, got {split_index}")
        self.split_name = SPLIT_NAMES[split_index]
        self.shards = [PackedShard(e.prefix, seq_len, split_frac, append_eod, eod_token_id, split_index)
                       for e in self.entries]
        for e, s in zip(self.entries, self.shards):
            if s.num_samples == 0:
                raise DataError(f"{e.prefix}: its {self.split_name} split (blendcorpus.split = '{split}') has "
                                f"{s.num_tokens} tokens, fewer than one sample of seq_len + 1 = {seq_len + 1}. "
                                f"Remove it from {file_list} or use a smaller seq_len.")
        self.corpus_names = list(dict.fromkeys(e.corpus for e in self.entries))
        self.last_corpus_ids: torch.Tensor | None = None
        """Corpus (index into ``corpus_names``) of each row of the batch last yielded; None before."""
        self.seq_len = seq_len
        parts = dict(
            # Content, not location: moving the data keeps the fingerprint (and a resume) valid.
            shards=[(e.weight, Path(e.prefix).name, e.corpus, s.first_doc, s.end_doc, s.num_tokens, s.digest())
                    for e, s in zip(self.entries, self.shards)],
            seq_len=seq_len, split=split_frac, shuffle=shuffle_sample_in_corpus, blend=blend_sample_in_corpus,
            append_eod=append_eod, eod=eod_token_id, seed=seed, split_index=split_index, version=1,
        )
        # A file list written by `titan-recipes prepare blendcorpus`: its prefixes must still hold the
        # documents the preparation wrote; its content fingerprint joins the data fingerprint.
        prepared = check_prepared_blend(file_list, {Path(e.prefix).name: s.digest() for e, s in zip(self.entries, self.shards)})
        if prepared is not None:
            parts["prepared_content"] = prepared
        self._fingerprint = fingerprint(**parts)
        cache = Path(cache_dir) if cache_dir else Path(file_list).parent / "blendcorpus_cache"
        self.cache_path = cache / f"{self._fingerprint}-blend.npy"
        self.description_path = cache / f"{self._fingerprint}-description.json"
        if self.cache_path.is_file():
            self.blend = np.load(self.cache_path, mmap_mode="r")
            logger.info("BlendCorpus: reusing the blend index %s", self.cache_path)
        else:
            self.blend = self._build(shuffle_sample_in_corpus, blend_sample_in_corpus, seed)
            _atomic_save(cache, self.cache_path, self.blend, self.description_path, parts)
            logger.info("BlendCorpus: built the blend index %s (%d samples)", self.cache_path, len(self.blend))

    def _build(self, shuffle: bool, blend_in_corpus: bool, seed: int) -> np.ndarray:
        """Rows (corpus id, shard id, sample id within the shard), one per global index of an epoch.

        Vectorized over shards (one gather through the concatenated permutations), so the cost is
        O(samples) plus the greedy blends, not O(shards x samples): file lists of thousands of
        prefixes build in well under a second. The random draws (one permutation per shard in
        file-list order, then one per corpus) keep their order, so the result is unchanged."""
        num_samples = np.array([s.num_samples for s in self.shards], dtype=np.int64)
        size = int(num_samples.sum())
        corpus_of = np.array([self.corpus_names.index(e.corpus) for e in self.entries])
        weights = np.array([e.weight for e in self.entries])
        corpus_weights = np.array([weights[corpus_of == c].sum() for c in range(len(self.corpus_names))])
        corpus_idx, _ = greedy_blend(corpus_weights, size)
        rng = np.random.default_rng(seed)
        # Shard s's permutation is perm_flat[first[s] : first[s] + num_samples[s]].
        first = np.concatenate([[0], np.cumsum(num_samples)[:-1]])
        perm_flat = np.concatenate([rng.permutation(int(n)) for n in num_samples]) if shuffle else None
        shard_col, sample_col = np.empty(size, np.int64), np.empty(size, np.int64)
        drawn = np.zeros(len(self.shards), dtype=np.int64)
        for c, where in enumerate(_positions(corpus_idx, len(self.corpus_names))):
            members = np.flatnonzero(corpus_of == c)
            if len(members) == 1:  # what the general path computes, without its gathers
                s, n = int(members[0]), int(num_samples[members[0]])
                draw = rng.permutation(len(where)) if shuffle and blend_in_corpus else np.arange(len(where))
                k = draw % n if len(where) > n else draw
                shard_col[where] = s
                sample_col[where] = perm_flat[first[s] : first[s] + n][k] if shuffle else k
                drawn[s] += len(where)
                continue
            local, draw = greedy_blend(weights[members], len(where))
            if not blend_in_corpus:
                order = np.argsort(local, kind="stable")
                local, draw = local[order], draw[order]
            if shuffle and blend_in_corpus:
                order = rng.permutation(len(where))
                local, draw = local[order], draw[order]
            shard_ids = members[local]
            k = draw % num_samples[shard_ids]
            shard_col[where] = shard_ids
            sample_col[where] = perm_flat[first[shard_ids] + k] if shuffle else k
            drawn += np.bincount(shard_ids, minlength=len(self.shards))
        out = np.stack([corpus_idx, shard_col, sample_col], axis=1)
        self._log_draws(drawn, num_samples)
        return out

    def _log_draws(self, drawn: np.ndarray, num_samples: np.ndarray) -> None:
        """A line per shard drawn more (warning: samples repeat) or less (info) than its size, the
        first few of each kind and then a count, so thousands of shards do not flood the log."""
        limit = 20
        for level, which, what in (
            (logging.WARNING, np.flatnonzero(drawn > num_samples), "samples repeat (%.2f passes)"),
            (logging.INFO, np.flatnonzero(drawn < num_samples),
             "%.2f of a pass; its weight is below its size share"),
        ):
            if not logger.isEnabledFor(level):
                continue
            for s in which[:limit]:
                logger.log(level, f"BlendCorpus: shard %s is drawn %d times per epoch for %d samples; {what}.",
                           self.entries[s].prefix, drawn[s], num_samples[s], drawn[s] / num_samples[s])
            if len(which) > limit:
                logger.log(level, "BlendCorpus: %d more shards are drawn %s times than they have samples.",
                           len(which) - limit, "more" if level == logging.WARNING else "fewer")

    @property
    def num_samples(self) -> int:
        return len(self.blend)

    @property
    def data_fingerprint(self) -> str:
        return self._fingerprint

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.arange(len(self.blend))

    def sample(self, index: int) -> np.ndarray:
        _, shard, k = self.blend[index]
        tokens = self.shards[int(shard)].sample(int(k))
        check_token_ids(tokens, self.vocab_size, f"BlendCorpus shard {self.shards[int(shard)].shard.bin_path}, "
                        f"sample {int(k)}", "Re-run scripts/blendcorpus.py tokenize for this prefix with the "
                        "training tokenizer; the .bin format has no checksum, so an id changed within range "
                        "cannot be detected.")
        return tokens

    def on_batch(self, ids: np.ndarray) -> None:
        super().on_batch(ids)
        # The rows' sample ids are blend entries (corpus, shard, sample).
        self.last_corpus_ids = torch.from_numpy(np.asarray(self.blend[ids][:, 0], np.int64))


def _positions(ids: np.ndarray, n: int) -> list[np.ndarray]:
    """For each value ``0 <= v < n``, the increasing positions where ``ids == v``: a comparison per value
    for a few corpora (cheaper than sorting), one stable sort for many."""
    if n <= 8:
        return [np.flatnonzero(ids == v) for v in range(n)]
    order = np.argsort(ids, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=n))])
    return [order[bounds[v] : bounds[v + 1]] for v in range(n)]


def _atomic_save(cache: Path, path: Path, array: np.ndarray, description_path: Path, parts: dict[str, Any]) -> None:
    """Write via temporary files and rename, so concurrent ranks never read half a cache."""
    cache.mkdir(parents=True, exist_ok=True)
    for target, write in ((description_path, lambda f: f.write(json.dumps(parts, indent=2, default=str).encode())),
                          (path, lambda f: np.save(f, array))):
        fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)


def build_blendcorpus_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> BlendCorpusLoader:
    """``training.dataset = "blendcorpus"``: check every ``[blendcorpus]`` field against training's, build."""
    t, b = job_config.training, job_config.blendcorpus
    file_list = t.dataset_path or b.data_file_list
    if t.dataset_path and b.data_file_list and Path(t.dataset_path) != Path(b.data_file_list):
        raise ConfigError(f"training.dataset_path = '{t.dataset_path}' and blendcorpus.data_file_list = "
                          f"'{b.data_file_list}' disagree; set one of them (or both the same).")
    if not file_list:
        raise ConfigError("training.dataset = 'blendcorpus' needs a file list: set training.dataset_path "
                          "(or blendcorpus.data_file_list) to a '<weight> <prefix> <corpus>' file.")
    for key, value, theirs, their_key in (("seq_length", b.seq_length, t.seq_len, "training.seq_len"),
                                          ("micro_batch_size", b.micro_batch_size, t.local_batch_size, "training.local_batch_size")):
        if value not in (0, theirs):
            raise ConfigError(f"blendcorpus.{key} = {value} differs from {their_key} = {theirs}. Set it to 0 "
                              f"(use {their_key}) or to the same value; the loader cannot serve another size.")
    workers = training_workers(job_config)
    if b.num_workers:
        if workers.num_workers not in (0, b.num_workers):
            raise ConfigError(f"blendcorpus.num_workers = {b.num_workers} and training.dataloader.num_workers = "
                              f"{workers.num_workers} disagree; set one of them.")
        workers = dataclasses.replace(workers, num_workers=b.num_workers, setting="blendcorpus")
    if b.dataloader_type != "single":
        raise ConfigError(f"blendcorpus.dataloader_type = '{b.dataloader_type}': only 'single' (Megatron's "
                          f"sequential sampler over the global order) is supported; 'cyclic' is not.")
    if b.provide_attention_mask:
        raise ConfigError("blendcorpus.provide_attention_mask = true is not supported: torchtitan's Trainer "
                          "passes extra input keys to the model forward, which llama3 rejects. Use the "
                          "model's document-masked attention instead.")
    return BlendCorpusLoader(
        file_list=file_list, seq_len=t.seq_len, local_batch_size=t.local_batch_size, dp_rank=dp_rank,
        dp_world_size=dp_world_size, split=b.split, shuffle_sample_in_corpus=b.shuffle_sample_in_corpus,
        blend_sample_in_corpus=b.blend_sample_in_corpus, append_eod=b.append_eod, eod_token_id=b.eod_token_id,
        seed=b.seed, cache_dir=b.data_cache_path or None, workers=workers,
    )


VALIDATION_SPLITS = {"valid": 1, "test": 2}


class BlendCorpusValidationLoader(FinitePass, BlendCorpusLoader):
    """A finite pass over the valid (or test) split of the blend (``validation.dataset = "blendcorpus"``).

    The same file list, ``[blendcorpus]`` settings and blend as training, with ``split_index`` 1 (or 2),
    read as a :class:`~titan_recipes.data.global_order.FinitePass` (equal batch counts on every rank,
    restarts at sample 0, no checkpoint state); ``last_corpus_ids`` as in training.
    """

    state_key = "blendcorpus_validation"

    def __init__(self, **kwargs):
        kwargs.setdefault("split_index", 1)
        split = kwargs.get("split", "98,1,1")
        super().__init__(**kwargs)
        self.init_finite_pass(
            f"BlendCorpus validation: the {self.split_name} split (blendcorpus.split = '{split}')",
            f"Give the {self.split_name} split a larger share or use a smaller validation.local_batch_size.",
        )


def build_blendcorpus_validation_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> BlendCorpusValidationLoader:
    """``validation.dataset = "blendcorpus"``: a finite, unshuffled-beyond-the-blend, DP-partitioned pass
    over the ``blendcorpus.validation_split`` ("valid" or "test") part of the training file list, with
    ``validation.seq_len`` and ``validation.local_batch_size``. For torchtitan's Validator
    (``build_validator_fn``); see :class:`BlendCorpusValidationLoader`."""
    t, v, b = job_config.training, job_config.validation, job_config.blendcorpus
    if v.dataset != "blendcorpus":
        raise ConfigError(f"build_blendcorpus_validation_loader needs validation.dataset = 'blendcorpus', got '{v.dataset}'.")
    split_name = getattr(b, "validation_split", "valid")
    if split_name not in VALIDATION_SPLITS:
        raise ConfigError(f"blendcorpus.validation_split = '{split_name}' must be one of {sorted(VALIDATION_SPLITS)}.")
    file_list = v.dataset_path or t.dataset_path or b.data_file_list
    if not file_list:
        raise ConfigError("validation.dataset = 'blendcorpus' needs a file list: set training.dataset_path "
                          "(or blendcorpus.data_file_list, or validation.dataset_path).")
    return BlendCorpusValidationLoader(
        file_list=file_list, seq_len=v.seq_len, local_batch_size=v.local_batch_size, dp_rank=dp_rank,
        dp_world_size=dp_world_size, split=b.split, shuffle_sample_in_corpus=b.shuffle_sample_in_corpus,
        blend_sample_in_corpus=b.blend_sample_in_corpus, append_eod=b.append_eod, eod_token_id=b.eod_token_id,
        seed=b.seed, cache_dir=b.data_cache_path or None, split_index=VALIDATION_SPLITS[split_name],
    )
