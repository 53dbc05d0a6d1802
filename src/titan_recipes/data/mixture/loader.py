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

Checkpoint state is **per DP rank** (the ranks pack different documents, so they stand at different
token positions): under the key ``mixture_dp_rank_<r>``, a JSON string with the planner state before
the rank's current chunk, the position in the rank's block of it (document index, token offset), the
number of batches read, the DP degree and the fingerprint. A resume is exact; it needs the same DP
degree (DataError otherwise). The fingerprint covers the index's files (dataset, path, size, samples),
the mixture, query, seed, chunk size, the samples taken, the tokenizer and seq_len: a checkpoint
written for other data or settings refuses with FingerprintMismatchError.

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
    """

    state_key = "mixture"

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
        self.data_fingerprint = fingerprint(
            planner=self.planner.fingerprint, files=index.files_fingerprint(), seq_len=seq_len,
            tokenizer=tokenizer_fingerprint(tokenizer),
        )
        # Position: the planner state before the current chunk, and where this rank stands in its block.
        self._chunk_state: dict[str, Any] = self.planner.state_dict()
        self._item = 0
        self._offset = 0
        self._docs: list[np.ndarray] | None = None  # tokens of this rank's block of the current chunk
        self._doc_domains: list[int] = []
        self.batches = 0
        self.last_domain_ids: torch.Tensor | None = None
        self.last_token_domain_ids: torch.Tensor | None = None
        self.last_sample_ids: np.ndarray | None = None
        logger.info(
            "Mixture loader: dp_rank %d of %d, %d rows of %d tokens per batch, domains %s, fingerprint %s",
            dp_rank, dp_world_size, local_batch_size, seq_len + 1, self.domains, self.data_fingerprint,
        )

    @property
    def _rank_key(self) -> str:
        return f"{self.state_key}_dp_rank_{self.dp_rank}"

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

    def _row(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The next ``seq_len + 1`` tokens of this rank's stream, their domains, the documents used."""
        need = self.seq_len + 1
        tokens, domains, ids = [], [], []
        empty_blocks = 0
        while need:
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
            need -= len(take)
            self._offset += len(take)
            if self._offset >= len(doc):
                self._item += 1
                self._offset = 0
        return np.concatenate(tokens), np.concatenate(domains), ids

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        if self.batches:
            logger.info(
                "Mixture loader resumes at batch %d: chunk %d, document %d, token %d of dp_rank %d's block",
                self.batches, self._chunk_state["next_chunk"], self._item, self._offset, self.dp_rank,
            )
        while True:
            rows, doms, sample_ids = [], [], []
            for _ in range(self.local_batch_size):
                row, dom, ids = self._row()
                rows.append(row)
                doms.append(dom)
                sample_ids.append(ids[0])
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
    def state_dict(self) -> dict[str, Any]:
        state = {
            "fingerprint": self.data_fingerprint,
            "dp_world_size": self.dp_world_size,
            "batches": self.batches,
            "chunk_state": self._chunk_state,
            "item": self._item,
            "offset": self._offset,
        }
        if self.mixture.dynamic:
            state["mixture"] = self.mixture.state_dict()
        return {self._rank_key: json.dumps(state, sort_keys=True)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._rank_key not in state_dict:
            ours = sorted(k for k in state_dict if k.startswith(f"{self.state_key}_dp_rank_"))
            if ours:
                raise DataError(
                    f"Mixture loader: the checkpoint has state for {ours} but not for {self._rank_key}: it was "
                    f"written with another DP degree. The mixture loader's state is per DP rank; resume with "
                    f"the same DP degree, or set checkpoint.exclude_from_loading = ['dataloader'] to restart "
                    f"the data."
                )
            raise DataError(
                f"Checkpoint has no '{self._rank_key}' data-loader state (keys: {sorted(state_dict)}): it was "
                f"written by another loader. Start a fresh run directory, or set "
                f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data from the beginning."
            )
        raw = state_dict[self._rank_key]
        state = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        if state["fingerprint"] != self.data_fingerprint:
            raise FingerprintMismatchError(
                f"Mixture loader: the checkpoint's data fingerprint {state['fingerprint']} does not match the "
                f"configured data ({self.data_fingerprint}): the index's files, the mixture, query, seed, "
                f"chunk size, tokenizer or seq_len changed since it was written. Resuming would train on "
                f"another sample order. Restore the settings, or set checkpoint.exclude_from_loading = "
                f"['dataloader'] to restart the data deliberately."
            )
        if state["dp_world_size"] != self.dp_world_size:
            raise DataError(
                f"Mixture loader: the checkpoint was written with DP degree {state['dp_world_size']}, this run has "
                f"{self.dp_world_size}; the mixture loader's state is per DP rank, resume with the same degree."
            )
        if self.mixture.dynamic:  # before re-planning: the current chunk may use adapted weights
            self.mixture.load_state_dict(state["mixture"])
        self.planner.load_state_dict(state["chunk_state"])  # checks the planner's own fingerprint too
        self._chunk_state = state["chunk_state"]
        self._item, self._offset = int(state["item"]), int(state["offset"])
        self.batches = int(state["batches"])
        self._docs = None  # re-planned and re-tokenized on the next read
        self._load_chunk()


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
            emit_domain_ids=section.per_domain_loss,
        )
    except BaseException:
        index.close()
        raise
