"""The mixture engine's training loader: ``training.dataset = "mixture"`` with a ``[mixture]`` section.

Every DP rank plans the same chunks (:class:`~.chunks.ChunkPlanner`, no communication) and reads its
contiguous block of each (:meth:`~.chunks.Chunk.shard`), so the ranks' documents are disjoint and
together are exactly the chunk. A rank reads its block's texts from the index
(:meth:`~.index.SampleIndex.read_texts`), tokenizes each document with BOS and EOS (the run's
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
read before its next chunk. A resume with the same DP degree takes each rank's position back: exact.
A resume with another DP degree continues the same global order with no document lost or repeated
(:func:`~.resume.reshard`; rows, and so losses, differ from an uninterrupted run with the old degree,
as they would with any packing; the documents do not). Schedules and ADO place chunks on training
steps by the global batch (``local_batch_size x DP degree``): for them a change of the global batch is
refused with a DataError naming the DP degrees; a static mixture resumes with any. The fingerprint
covers the index's files (dataset, path, size, samples), the mixture, query, seed, chunk size, the
samples taken, the tokenizer and seq_len: a checkpoint written for other data or settings refuses with
FingerprintMismatchError. The key and the encoding are the data checkpoint codec's
(:data:`titan_recipes.data.state.MIXTURE`). States written before this format (``mixture_dp_rank_<r>``,
one per rank, each rank's own position) still load with their DP degree (and a 1-rank one with any):
:mod:`.resume`.

Workers: only ``training.dataloader.num_workers = 0`` (reading in the training process) is supported
in this slice; other values are a ConfigError.
"""


from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np
import torch
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.tokenizer import BaseTokenizer

from ...errors import ConfigError, DataError
from .. import state as codec
from ..state import fingerprint
from ..workers import Workers, training_workers
from .chunks import ChunkPlanner
from .config import mixture_from_config, query_from_config
from .mixture import Mixture, StaticMixture
from .query import Query
from .reader import IndexReader, open_index
from .resume import FINGERPRINT_COVERS, WHAT, checkpoint_rank_keys, from_legacy, reshard

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
        index: an open index (:class:`~.reader.IndexReader`: embedded or served; read-only is enough).
        mixture: the weights (static or scheduled).
        tokenizer: the run's tokenizer; documents get BOS and EOS.
        seq_len: tokens per input row (rows hold ``seq_len + 1`` tokens).
        local_batch_size: rows per batch on this rank.
        dp_rank, dp_world_size: this rank and the DP degree.
        chunk_size, seed, query: the planner's (:class:`ChunkPlanner`).
        workers: only ``num_workers = 0`` is supported (ConfigError otherwise).
        legacy_rank_keys: how many old-format per-rank keys (``mixture_dp_rank_<r>``) the checkpoint to
            resume holds; ranks ``0 < r < legacy_rank_keys`` also ask for their own key, so that an old
            multi-rank checkpoint resumes with its DP degree (:func:`~.resume.checkpoint_rank_keys` finds them).
    """

    state_key = codec.MIXTURE
    STATE_VERSION = 2

    def __init__(
        self,
        *,
        index: IndexReader,
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
            "dp_world_size": self.dp_world_size,
            "local_batch_size": self.local_batch_size,
            "global_batch_size": self.local_batch_size * self.dp_world_size,
            "batches": self.batches,
            "ranks": self._gather_positions(),
        }
        if self.mixture.dynamic:
            state["mixture"] = self.mixture.state_dict()
        out = codec.encode(codec.MIXTURE, state, fingerprint=self.data_fingerprint, as_json=True)
        if 0 < self.dp_rank < self.legacy_rank_keys:  # resuming an old per-rank checkpoint: ask for our key too
            out[codec.mixture_rank_key(self.dp_rank)] = out[codec.MIXTURE]
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = codec.decode(state_dict, codec.MIXTURE, fingerprint=None, what=WHAT)
        if state is None:
            return
        if "version" not in state:  # written before version 2: one key per rank, each rank's own position
            state = from_legacy(self, state, state_dict)
        codec.check_fingerprint(state, self.data_fingerprint, what=WHAT, changed=FINGERPRINT_COVERS)
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
            mine = reshard(self, positions)
            logger.info(
                "Mixture loader: the checkpoint was written with DP degree %d, this run has %d: dp_rank %d "
                "first reads %d carried document(s) of the old ranks' unread rest, then chunk %d on.",
                old_world, self.dp_world_size, self.dp_rank, len(mine["carry"]), mine["chunk_state"]["next_chunk"],
            )
        self.batches = int(state["batches"])
        self._set_position(mine)
        self.legacy_rank_keys = 0  # later checkpoints of this run are of the current format

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


def build_mixture_loader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> MixtureLoader:
    """``training.dataset = "mixture"``: check ``[mixture]``, open the index read-only, build the loader."""
    section, training = job_config.mixture, job_config.training
    if tokenizer is None:
        raise ConfigError("training.dataset = 'mixture' needs a tokenizer; set model.hf_assets_path.")
    mixture = mixture_from_config(section)
    query = query_from_config(section.query)
    if section.chunk_size <= 0:
        raise ConfigError(f"mixture.chunk_size must be positive, got {section.chunk_size}.")
    index = open_index(section.index_dir, section.server)
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
