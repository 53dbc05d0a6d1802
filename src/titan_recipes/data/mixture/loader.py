"""The mixture engine's training loader: ``training.dataset = "mixture"`` with a ``[mixture]`` section.

Every DP rank plans the same chunks (:class:`~.chunks.ChunkPlanner`, no communication) and reads its
contiguous block of each (:meth:`~.chunks.Chunk.shard`), so the ranks' documents are disjoint and
together are exactly the chunk. A rank reads its block's texts from the index
(:meth:`~.index.MixteraIndex.read_texts`), tokenizes each document with BOS and EOS (the run's
tokenizer) and packs the token stream into rows of ``seq_len + 1`` tokens (no padding, no overlap:
inputs are the first ``seq_len`` tokens, labels the last ``seq_len``; a document that does not fit
continues in the next row, and a block's last document continues into the rank's block of the next
chunk). Nothing is dropped.

Per-domain information for the per-domain loss: after each batch, ``loader.last_domain_ids`` is a
LongTensor[B] with each row's domain (the domain of most of its label tokens, ties to the lower id)
and ``loader.last_token_domain_ids`` a LongTensor[B, L] with each label token's domain; ids index
``loader.domains`` (the mixture's domains, sorted by name).

Checkpoint state is **global**: the ranks pack different documents, so they stand at different token
positions; at a save every rank all-gathers the positions of all DP ranks (one small object per rank)
and writes the same JSON string (DCP keeps one copy) under ``mixture_dp_rank_0``, the key every
checkpoint of this loader has had at any DP degree::

    {"version": 2, "fingerprint": "...", "dp_world_size": 2, "local_batch_size": 8, "global_batch_size": 16,
     "batches": 40, "ranks": [{"carry": [], "chunk_state": {...}, "item": 3, "offset": 17}, {...}],
     "mixture": {...}}   # "mixture": dynamic (ADO) mixtures only

A rank's position is the planner state before its current chunk, the position in its block of it
(document index, token offset), and ``carry``: documents (sample id, domain id, token offset) it must
read before its next chunk (see below). A resume with the same DP degree takes each rank's position
back: exact. A resume with another DP degree continues the same global order with no document lost or
repeated: the unread rest of every old rank (its carry, the rest of its current block and its blocks of
the chunks other ranks already started), in chunk order and old-rank order, is cut into one
contiguous piece per new rank as its carry; after it every new rank continues with the first chunk no
old rank had started, cut the new way. (Rows, and so losses, differ from an uninterrupted run with the
old degree, as they would with any packing; the documents do not.) Schedules and ADO place chunks on
training steps by the global batch (``local_batch_size x DP degree``): for them a change of the global
batch is refused with a DataError naming the DP degrees; a static mixture resumes with any. The
fingerprint covers the index's files (dataset, path, size, samples), the mixture, query, seed, chunk
size, the samples taken, the tokenizer and seq_len: a checkpoint written for other data or settings
refuses with FingerprintMismatchError. States written before this format (``mixture_dp_rank_<r>``, one
per rank, each rank's own position) still load with their DP degree (and a 1-rank one with any).

Workers: only ``training.dataloader.num_workers = 0`` (reading in the training process) is supported
in this slice; other values are a ConfigError.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.tokenizer import BaseTokenizer

from ...config import ConfigError
from ..common import DataError, FingerprintMismatchError, Workers, fingerprint, training_workers
from .ado import AdoMixture
from .chunks import ChunkPlanner
from .index import INDEX_FILE, MixteraIndex
from .mixture import Mixture, ScheduleMixture, StaticMixture
from .query import Query

logger = logging.getLogger(__name__)

_TOKENIZER_PROBE = "The quick brown fox, 1234 -- naïve café.\n\tEnd."


def tokenizer_fingerprint(tokenizer: BaseTokenizer) -> str:
    """A short hash of how ``tokenizer`` encodes a probe text, and its vocabulary size."""
    size = getattr(tokenizer, "get_vocab_size", lambda: None)()
    ids = tokenizer.encode(_TOKENIZER_PROBE, add_bos=True, add_eos=True)
    return fingerprint(vocab=size, probe=[int(i) for i in ids])


class MixtureLoader(BaseDataLoader):
    """Packed rows from the chunks of a mixture over a sample index (see the module docstring).

    Args:
        index: an open :class:`MixteraIndex` (read-only is enough).
        mixture: the weights (static or scheduled).
        tokenizer: the run's tokenizer; documents get BOS and EOS.
        seq_len: tokens per input row (rows hold ``seq_len + 1`` tokens).
        local_batch_size: rows per batch on this rank.
        dp_rank, dp_world_size: this rank and the DP degree.
        chunk_size, seed, query: the planner's (:class:`ChunkPlanner`).
        workers: only ``num_workers = 0`` is supported (ConfigError otherwise).
        legacy_rank_keys: how many old-format per-rank keys (``mixture_dp_rank_<r>``) the checkpoint to
            resume holds; ranks ``0 < r < legacy_rank_keys`` also ask for their own key, so that an old
            multi-rank checkpoint resumes with its DP degree (:func:`checkpoint_rank_keys` finds them).
    """

    state_key = "mixture"
    STATE_VERSION = 2

    def __init__(
        self,
        *,
        index: MixteraIndex,
        mixture: Mixture,
        tokenizer: BaseTokenizer,
        seq_len: int,
        local_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        chunk_size: int,
        seed: int,
        query: Query | None = None,
        workers: Workers | None = None,
        emit_domain_ids: bool = False,
        legacy_rank_keys: int = 0,
    ):
        if workers is not None and workers.num_workers:
            raise ConfigError(
                f"training.dataset = 'mixture' reads in the training process only in this version; "
                f"set {workers.setting}.num_workers = 0 (got {workers.num_workers})."
            )
        if seq_len <= 0 or local_batch_size <= 0:
            raise ConfigError(f"seq_len and local_batch_size must be positive, got {seq_len}, {local_batch_size}.")
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_world_size {dp_world_size}")
        if chunk_size < dp_world_size:
            raise ConfigError(
                f"mixture.chunk_size = {chunk_size} is smaller than the DP degree {dp_world_size}: some ranks "
                f"would get no documents. Use a chunk_size of at least {dp_world_size}."
            )
        self.index = index
        self.tokenizer = tokenizer
        self.seq_len = seq_len
        self.local_batch_size = local_batch_size
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.emit_domain_ids = emit_domain_ids
        self.mixture = mixture
        self.planner = ChunkPlanner(
            index, mixture, chunk_size=chunk_size, seed=seed, query=query,
            global_batch_size=local_batch_size * dp_world_size,
        )
        self.domains: list[Any] = list(self.planner.domains)
        self._domain_id = {d: i for i, d in enumerate(self.domains)}
        files, tok = index.files_fingerprint(), tokenizer_fingerprint(tokenizer)
        self.data_fingerprint = fingerprint(
            planner=self.planner.order_fingerprint, files=files, seq_len=seq_len, tokenizer=tok,
        )
        self._fingerprint_parts = dict(files=files, seq_len=seq_len, tokenizer=tok)
        self.legacy_rank_keys = legacy_rank_keys
        # Position: documents to read first (carried over from a resume with another DP degree), the
        # planner state before the current chunk, and where this rank stands in its block.
        self._carry: list[list[int]] = []  # [sample id, domain id, token offset] per document
        self._carry_tokens: list[np.ndarray] = []
        self._chunk_state: dict[str, Any] = self.planner.state_dict()
        self._item = 0
        self._offset = 0
        self._docs: list[np.ndarray] | None = None  # tokens of this rank's block of the current chunk
        self._doc_domains: list[int] = []
        self.batches = 0
        self.last_domain_ids: torch.Tensor | None = None
        self.last_token_domain_ids: torch.Tensor | None = None
        self.last_sample_ids: np.ndarray | None = None
        self.last_row_spans: list[list[tuple[int, int, int]]] = []
        """Per row of the last batch: the (sample id, first token, end token) pieces of documents it holds."""
        logger.info(
            "Mixture loader: dp_rank %d of %d, %d rows of %d tokens per batch, domains %s, fingerprint %s",
            dp_rank, dp_world_size, local_batch_size, seq_len + 1, self.domains, self.data_fingerprint,
        )

    @property
    def _rank_key(self) -> str:
        return f"{self.state_key}_dp_rank_{self.dp_rank}"

    @property
    def _global_key(self) -> str:
        return f"{self.state_key}_dp_rank_0"

    # -- reading ---------------------------------------------------------------------------------
    def _load_chunk(self) -> None:
        """Plan the chunk after ``_chunk_state`` and tokenize this rank's block of it."""
        if self.planner.state_dict() != self._chunk_state:  # only after a resume: the planner stands elsewhere
            self.planner.load_state_dict(self._chunk_state)
        chunk = self.planner.next_chunk()
        items = chunk.shard(self.dp_rank, self.dp_world_size)
        self._sample_ids = np.asarray([sid for _, sid in items], dtype=np.int64)
        texts = self.index.read_texts(self._sample_ids)
        self._docs = [
            np.asarray(self.tokenizer.encode(t, add_bos=True, add_eos=True), dtype=np.int64) for t in texts
        ]
        self._doc_domains = [self._domain_id[d] for d, _ in items]

    def _next_chunk(self) -> None:
        self._chunk_state = self.planner.state_dict()  # the planner stands after the current chunk
        self._item = self._offset = 0
        self._load_chunk()

    def _row(self) -> tuple[np.ndarray, np.ndarray, list[int], list[tuple[int, int, int]]]:
        """The next ``seq_len + 1`` tokens of this rank's stream, their domains, the documents used and
        the (sample id, start, end) token pieces taken from them."""
        need = self.seq_len + 1
        tokens, domains, ids, spans = [], [], [], []
        empty_blocks = 0
        while need:
            if self._carry:  # documents carried over from a resume with another DP degree come first
                sid, dom, start = self._carry[0]
                doc = self._carry_tokens[0]
                take = doc[start : start + need]
                tokens.append(take)
                domains.append(np.full(len(take), dom, dtype=np.int64))
                ids.append(sid)
                spans.append((sid, start, start + len(take)))
                need -= len(take)
                if start + len(take) >= len(doc):
                    self._carry.pop(0)
                    self._carry_tokens.pop(0)
                else:
                    self._carry[0] = [sid, dom, start + len(take)]
                continue
            if self._docs is None:
                self._load_chunk()
            if self._item >= len(self._docs):
                empty_blocks = empty_blocks + 1 if not self._docs else 0
                if empty_blocks > 1000:
                    raise DataError("The mixture planner keeps giving this rank no documents; check chunk_size.")
                self._next_chunk()
                continue
            doc = self._docs[self._item]
            take = doc[self._offset : self._offset + need]
            tokens.append(take)
            domains.append(np.full(len(take), self._doc_domains[self._item], dtype=np.int64))
            ids.append(int(self._sample_ids[self._item]))
            spans.append((ids[-1], self._offset, self._offset + len(take)))
            need -= len(take)
            self._offset += len(take)
            if self._offset >= len(doc):
                self._item += 1
                self._offset = 0
        return np.concatenate(tokens), np.concatenate(domains), ids, spans

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        if self.batches:
            logger.info(
                "Mixture loader resumes at batch %d: %d carried document(s), then chunk %d, document %d, "
                "token %d of dp_rank %d's block", self.batches, len(self._carry), self._chunk_state["next_chunk"],
                self._item, self._offset, self.dp_rank,
            )
        while True:
            rows, doms, sample_ids, spans = [], [], [], []
            for _ in range(self.local_batch_size):
                row, dom, ids, row_spans = self._row()
                rows.append(row)
                doms.append(dom)
                sample_ids.append(ids[0])
                spans.append(row_spans)
            self.last_row_spans = spans
            batch = torch.from_numpy(np.stack(rows))
            token_domains = torch.from_numpy(np.stack(doms)[:, 1:].copy())
            counts = torch.zeros(len(rows), len(self.domains), dtype=torch.long).scatter_add_(
                1, token_domains, torch.ones_like(token_domains))  # label tokens per domain, per row
            self.last_token_domain_ids = token_domains
            self.last_domain_ids = counts.argmax(1)  # first maximum: ties go to the lower id
            self.last_sample_ids = np.asarray(sample_ids, dtype=np.int64)
            self.batches += 1  # advance before yielding: a checkpoint after this batch records it
            inputs = {"input": batch[:, :-1]}
            if self.emit_domain_ids:  # consumed (popped) by the trainer's per-domain loss
                inputs["domain_ids"] = token_domains
            yield inputs, batch[:, 1:]

    # -- dynamic mixtures (ADO) --------------------------------------------------------------------
    @property
    def planned_chunks(self) -> int:
        """How many chunks this rank has planned (chunks ``0 .. planned_chunks - 1``)."""
        return self.planner.next_chunk_index

    def apply_weights(self, weights: Any, from_chunk: int) -> None:
        """Give the dynamic mixture new weights (in the order of :attr:`domains`) for chunks
        ``from_chunk`` on; ``from_chunk`` must not have been planned by any rank."""
        if not self.mixture.dynamic:
            raise TypeError(f"{self.mixture!r} is not a dynamic mixture")
        if from_chunk < self.planned_chunks:
            raise ValueError(f"chunk {from_chunk} is already planned on dp_rank {self.dp_rank}")
        self.mixture.apply(weights, from_chunk)

    # -- checkpointing ---------------------------------------------------------------------------
    def position(self) -> dict[str, Any]:
        """This rank's place in the global order (JSON-able): see the module docstring."""
        return {"carry": [list(c) for c in self._carry], "chunk_state": self._chunk_state,
                "item": self._item, "offset": self._offset}

    def _gather_positions(self) -> list[dict[str, Any] | None]:
        """Every DP rank's :meth:`position`, by DP rank: all-gathered over the default process group
        (every rank of every parallel dimension calls it, as DCP calls ``state_dict`` on every rank;
        ranks of one DP rank hold the same position). Without a process group only this rank's is known."""
        import torch.distributed as dist

        mine = (self.dp_rank, self.position())
        if self.dp_world_size > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        positions: list[dict[str, Any] | None] = [None] * self.dp_world_size
        for rank, pos in gathered:
            if positions[rank] is None:
                positions[rank] = pos
        return positions

    def state_dict(self) -> dict[str, Any]:
        state = {
            "version": self.STATE_VERSION,
            "fingerprint": self.data_fingerprint,
            "dp_world_size": self.dp_world_size,
            "local_batch_size": self.local_batch_size,
            "global_batch_size": self.local_batch_size * self.dp_world_size,
            "batches": self.batches,
            "ranks": self._gather_positions(),
        }
        if self.mixture.dynamic:
            state["mixture"] = self.mixture.state_dict()
        out = {self._global_key: json.dumps(state, sort_keys=True)}
        if 0 < self.dp_rank < self.legacy_rank_keys:  # resuming an old per-rank checkpoint: ask for our key too
            out[self._rank_key] = out[self._global_key]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._global_key not in state_dict:
            raise DataError(
                f"Checkpoint has no '{self._global_key}' data-loader state (keys: {sorted(state_dict)}): it was "
                f"written by another loader. Start a fresh run directory, or set "
                f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data from the beginning."
            )
        state = _decode(state_dict[self._global_key])
        if "version" not in state:  # written before version 2: one key per rank, each rank's own position
            state = self._from_legacy(state, state_dict)
        if state["fingerprint"] != self.data_fingerprint:
            raise FingerprintMismatchError(
                f"Mixture loader: the checkpoint's data fingerprint {state['fingerprint']} does not match the "
                f"configured data ({self.data_fingerprint}): the index's files, the mixture, query, seed, "
                f"chunk size, tokenizer or seq_len changed since it was written. Resuming would train on "
                f"another sample order. Restore the settings, or set checkpoint.exclude_from_loading = "
                f"['dataloader'] to restart the data deliberately."
            )
        old_world, positions = int(state["dp_world_size"]), state["ranks"]
        missing = [r for r, p in enumerate(positions) if p is None]
        if len(positions) != old_world or missing:
            raise DataError(
                f"Mixture loader: the checkpoint holds no position for DP rank(s) {missing} of its DP degree "
                f"{old_world}; it was not written by a complete job. Resume from another checkpoint."
            )
        gbs = self.local_batch_size * self.dp_world_size
        if state["global_batch_size"] != gbs and not isinstance(self.mixture, StaticMixture):
            raise DataError(
                f"Mixture loader: the checkpoint was written with DP degree {old_world} x local_batch_size "
                f"{state['local_batch_size']} = global batch {state['global_batch_size']}; this run has DP degree "
                f"{self.dp_world_size} x {self.local_batch_size} = {gbs}. A {type(self.mixture).__name__} places "
                f"chunks on training steps by the global batch, so it needs the same one: set "
                f"training.local_batch_size = {state['global_batch_size'] // self.dp_world_size} (when that divides), "
                f"or resume with DP degree {old_world}."
            )
        if self.mixture.dynamic:  # before re-planning: the chunks may use adapted weights
            self.mixture.load_state_dict(state["mixture"])
        if old_world == self.dp_world_size:
            mine = positions[self.dp_rank]
        else:
            mine = self._reshard(positions)
            logger.info(
                "Mixture loader: the checkpoint was written with DP degree %d, this run has %d: dp_rank %d "
                "first reads %d carried document(s) of the old ranks' unread rest, then chunk %d on.",
                old_world, self.dp_world_size, self.dp_rank, len(mine["carry"]), mine["chunk_state"]["next_chunk"],
            )
        self.batches = int(state["batches"])
        self._set_position(mine)
        self.legacy_rank_keys = 0  # later checkpoints of this run are of the current format

    def _from_legacy(self, state: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
        """A state written before version 2 (this rank's own position under ``mixture_dp_rank_<r>``) as a
        version-2 state. A 1-rank one is complete; a multi-rank one only for its own DP degree."""
        old_world = int(state["dp_world_size"])
        expected = self.legacy_fingerprint(self.local_batch_size * old_world)  # it covered the global batch
        if state["fingerprint"] != expected:
            raise FingerprintMismatchError(
                f"Mixture loader: the checkpoint's data fingerprint {state['fingerprint']} does not match the "
                f"configured data ({expected}): the index's files, the mixture, query, seed, chunk size, "
                f"tokenizer, seq_len or training.local_batch_size changed since it was written (a checkpoint of "
                f"this older format also needs the local batch size it was written with). Restore the "
                f"settings, or set checkpoint.exclude_from_loading = ['dataloader'] to restart the data deliberately."
            )
        if old_world > 1:
            raw = state_dict.get(self._rank_key) if self.dp_world_size == old_world else None
            if raw is None:
                raise DataError(
                    f"Mixture loader: the checkpoint was written with DP degree {old_world} by an older version that "
                    f"kept one state per DP rank; this run has DP degree {self.dp_world_size}. Resume it with DP "
                    f"degree {old_world} (its next checkpoint then resumes with any degree), or set "
                    f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data."
                )
            state = _decode(raw)
        pos = {"carry": [], "chunk_state": state["chunk_state"], "item": state["item"], "offset": state["offset"]}
        ranks: list[Any] = [pos] if old_world == 1 else [pos if r == self.dp_rank else {} for r in range(old_world)]
        out = {"version": self.STATE_VERSION, "fingerprint": self.data_fingerprint, "dp_world_size": old_world,
               "local_batch_size": self.local_batch_size, "global_batch_size": self.local_batch_size * old_world,
               "batches": state["batches"], "ranks": ranks}
        if "mixture" in state:
            out["mixture"] = state["mixture"]
        return out

    def legacy_fingerprint(self, global_batch_size: int) -> str:
        """The data fingerprint states before version 2 hold (it covered the global batch size)."""
        return fingerprint(planner=self.planner.fingerprint_for(global_batch_size), **self._fingerprint_parts)

    def _set_position(self, pos: dict[str, Any]) -> None:
        self.planner.load_state_dict(pos["chunk_state"])  # checks the planner's own fingerprint too
        self._chunk_state = pos["chunk_state"]
        self._item, self._offset = int(pos["item"]), int(pos["offset"])
        self._carry = [[int(s), int(d), int(o)] for s, d, o in pos["carry"]]
        self._carry_tokens = [
            np.asarray(self.tokenizer.encode(t, add_bos=True, add_eos=True), dtype=np.int64)
            for t in (self.index.read_texts(np.asarray([c[0] for c in self._carry], dtype=np.int64)) if self._carry else [])
        ]
        self._docs = None  # re-planned and re-tokenized on the next read
        if not self._carry:
            self._load_chunk()

    def _reshard(self, positions: list[dict[str, Any]]) -> dict[str, Any]:
        """This rank's position when the old ranks stood at ``positions``: the unread rest of every old rank
        (its carry; the rest of its block of its current chunk; its blocks of later chunks another old rank
        had started), in chunk order then old-rank order, cut into ``dp_world_size`` contiguous pieces;
        then the chunks after the last one any old rank had started."""
        old_world = len(positions)
        starts = [int(p["chunk_state"]["next_chunk"]) for p in positions]
        first, last = min(starts), max(starts)
        self.planner.load_state_dict(positions[starts.index(first)]["chunk_state"])
        chunks = {}
        for k in range(first, last + 1):
            chunks[k] = self.planner.next_chunk()
        after_last = self.planner.state_dict()
        rest: list[list[int]] = [list(c) for p in positions for c in p["carry"]]
        for k in range(first, last + 1):
            for r, p in enumerate(positions):
                if k < starts[r]:
                    continue
                block = chunks[k].shard(r, old_world)
                item, offset = (int(p["item"]), int(p["offset"])) if k == starts[r] else (0, 0)
                for j in range(item, len(block)):
                    domain, sid = block[j]
                    rest.append([int(sid), self._domain_id[domain], offset if j == item else 0])
        n, w, r = len(rest), self.dp_world_size, self.dp_rank
        return {"carry": rest[r * n // w : (r + 1) * n // w], "chunk_state": after_last, "item": 0, "offset": 0}


def _decode(raw: Any) -> dict[str, Any]:
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def checkpoint_rank_keys(job_config: Any) -> int:
    """How many old-format per-rank mixture keys (``dataloader.mixture_dp_rank_<r>``) the checkpoint this
    launch will resume from holds (0 when there is none, or it is of the current format, which has one
    key). Looked up in the DCP metadata of ``checkpoint.load_step`` or the newest ``step-N`` folder."""
    import pickle
    import re

    try:
        ckpt = job_config.checkpoint
        folder = Path(job_config.job.dump_folder, ckpt.folder)
        steps = {int(m.group(1)): p for p in folder.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))}
        step = ckpt.load_step if ckpt.load_step > 0 else max((s for s, p in steps.items() if (p / ".metadata").is_file()), default=None)
        if step is None or step not in steps:
            return 0
        keys = pickle.loads((steps[step] / ".metadata").read_bytes()).state_dict_metadata
    except Exception:  # no checkpoint folder or config, unreadable metadata: nothing to adapt to (the load reports it)
        return 0
    return len([k for k in keys if re.fullmatch(r"dataloader\.mixture_dp_rank_\d+", k)])


# -- building from the config -------------------------------------------------------------------------
def mixture_from_config(section: Any) -> Mixture:
    """The StaticMixture / ScheduleMixture of ``[mixture]`` (ConfigError naming the key otherwise)."""
    if not section.property:
        raise ConfigError("mixture.property is not set: name the property whose values are the domains "
                          "(e.g. 'redpajama_set_name').")
    if bool(section.weights) == bool(section.schedule):
        raise ConfigError("Set exactly one of mixture.weights (a static mixture) and mixture.schedule "
                          f"(weights by start step); got weights={section.weights!r}, schedule={section.schedule!r}.")
    if section.ado.enable and not section.weights:
        raise ConfigError("mixture.ado.enable = true needs the prior as mixture.weights (not mixture.schedule).")
    if section.weights:
        try:
            static = StaticMixture(section.weights, section.property)
        except ConfigError as e:
            raise ConfigError(f"mixture.weights: {e}") from None
        if not section.ado.enable:
            return static
        if not section.per_domain_loss:
            raise ConfigError("mixture.ado.enable = true needs mixture.per_domain_loss = true: ADO adapts the "
                              "weights from the per-domain losses.")
        settings = {k: v for k, v in dataclasses.asdict(section.ado).items() if k != "enable"}
        return AdoMixture(static, **settings)
    stages = []
    for key, weights in section.schedule.items():
        try:
            start = int(key)
        except ValueError:
            raise ConfigError(f"mixture.schedule: table key {key!r} is not a start step (an integer).") from None
        try:
            stages.append((start, StaticMixture(weights, section.property)))
        except ConfigError as e:
            raise ConfigError(f"mixture.schedule.{key}: {e}") from None
    try:
        return ScheduleMixture(sorted(stages, key=lambda s: s[0]))
    except ConfigError as e:
        raise ConfigError(f"mixture.schedule: {e}") from None


def query_from_config(groups: Any) -> Query | None:
    """``[mixture] query`` (a list of groups of ``[property, op, value]``) as a Query; None when empty."""
    if not groups:
        return None
    if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
        raise ConfigError(f"mixture.query must be a list of groups, each a list of [property, op, value]; "
                          f"got {groups!r}.")
    try:
        return Query(*groups)
    except ConfigError as e:
        raise ConfigError(f"mixture.query: {e}") from None


def index_from_config(section: Any) -> Any:
    """The index ``[mixture]`` names: a MixteraIndex opened read-only in this process (embedded mode), or
    a client of ``mixture.server`` (served mode, :mod:`.server`)."""
    if section.server:
        from .server import open_index as open_served

        return open_served(section.index_dir, section.server)
    if not section.index_dir:
        raise ConfigError("training.dataset = 'mixture' needs mixture.index_dir: the directory of a sample "
                          f"index ({INDEX_FILE}) written by `titan-recipes mixture register` (or "
                          f"MixteraIndex.register_dataset), or mixture.server = 'host:port' of a mixture server.")
    if not (Path(section.index_dir) / INDEX_FILE).is_file():
        raise ConfigError(f"mixture.index_dir = '{section.index_dir}' holds no {INDEX_FILE}; register a dataset "
                          f"there first (`titan-recipes mixture register`), or fix the path.")
    return MixteraIndex(section.index_dir, read_only=True)


def build_mixture_loader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> MixtureLoader:
    """``training.dataset = "mixture"``: check ``[mixture]``, open the index read-only, build the loader."""
    section, training = job_config.mixture, job_config.training
    if tokenizer is None:
        raise ConfigError("training.dataset = 'mixture' needs a tokenizer; set model.hf_assets_path.")
    mixture = mixture_from_config(section)
    query = query_from_config(section.query)
    if section.chunk_size <= 0:
        raise ConfigError(f"mixture.chunk_size must be positive, got {section.chunk_size}.")
    index = index_from_config(section)
    known = index.properties
    if section.property not in known:
        index.close()
        raise ConfigError(f"mixture.property = '{section.property}' is not a property of the index at "
                          f"{index.path}; it knows {sorted(known)}.")
    try:
        return MixtureLoader(
            index=index, mixture=mixture, tokenizer=tokenizer, seq_len=training.seq_len,
            local_batch_size=training.local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            chunk_size=section.chunk_size, seed=section.seed, query=query, workers=training_workers(job_config),
            emit_domain_ids=section.per_domain_loss, legacy_rank_keys=checkpoint_rank_keys(job_config),
        )
    except BaseException:
        index.close()
        raise


def merge_rank_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One checkpoint state from the ``state_dict()`` of each DP rank's loader taken without a process
    group (each then knows only its own position), as the all-gather of a distributed save makes it.
    For tests and tools that drive several ranks' loaders in one process."""
    decoded = [_decode(next(iter(s.values()))) for s in states]
    merged = dict(decoded[0])
    merged["ranks"] = [next(p for p in (d["ranks"][r] for d in decoded) if p is not None)
                       for r in range(merged["dp_world_size"])]
    return {f"{MixtureLoader.state_key}_dp_rank_0": json.dumps(merged, sort_keys=True)}
