"""Chunks: the global sample order of a mixture, planned chunk by chunk from the index.

A :class:`ChunkPlanner` delivers chunks ``k = 0, 1, 2, ...`` of ``chunk_size`` sample ids. Chunk ``k``
holds :func:`~.mixture.chunk_counts` samples of each domain (under the weights the mixture has at the
chunk's step), taken in order from that domain's seeded permutation, then shuffled together with a
seed of their own. Each domain has a cursor (samples taken so far); position ``c`` of a domain with
``n`` samples is item ``c % n`` of the domain's permutation for epoch ``c // n``, so within an epoch
of a domain no sample is taken twice. A domain that runs out starts a new epoch (a new permutation)
and logs a warning; a domain with a positive weight and no samples is an error at construction.

Splitting among readers: every DP rank (and loader worker) plans every chunk itself (planning is
cheap and needs no communication) and keeps a contiguous block of it (:meth:`Chunk.shard`). With
``W`` ranks of ``N`` workers each, the chunk is cut into ``W * N`` near-equal contiguous blocks; rank
``r``'s workers hold blocks ``r * N ... r * N + N - 1``, which together are exactly rank ``r``'s block
of a ``W``-way split. Blocks of a chunk (not whole chunks per rank) keep every global batch close to
the mixture, and all ranks advance through chunks in lockstep, so the state below is the same on
every rank. Shards of one chunk are disjoint and their union is the chunk.

Checkpoint state (identical on every rank; plain JSON-able values)::

    {"fingerprint": "3c9d...", "mixture_id": "a1b2...", "next_chunk": 12,
     "cursors": {"RedPajamaC4": 61, "RedPajamaGithub": 36, "RedPajamaWikipedia": 23}}

Schedules are by training step: chunk ``k`` starts at global sample ``k * chunk_size``, which is in step
``k * chunk_size // global_batch_size`` (``global_batch_size`` defaults to ``chunk_size``: one chunk
per step).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, FingerprintMismatchError
from ..state import fingerprint
from .reader import IndexReader
from .mixture import Mixture, chunk_counts
from .query import Query

logger = logging.getLogger(__name__)

_SHUFFLE_STREAM = 0x43484E4B  # separates the within-chunk shuffle seeds from the domain permutation seeds


@dataclass(frozen=True)
class Chunk:
    """Chunk ``index`` of the global order: ``items`` are ``(domain, sample id)`` pairs."""

    index: int
    items: tuple[tuple[Any, int], ...]
    counts: dict[Any, int]
    """Samples per domain (``chunk_counts`` of the weights in force)."""

    def shard(
        self, dp_rank: int, dp_world_size: int, worker_id: int = 0, num_workers: int = 1
    ) -> tuple[tuple[Any, int], ...]:
        """The contiguous block of ``items`` that worker ``worker_id`` of DP rank ``dp_rank`` reads."""
        if not 0 <= dp_rank < dp_world_size:
            raise ValueError(f"dp_rank {dp_rank} out of range for dp_world_size {dp_world_size}")
        if not 0 <= worker_id < num_workers:
            raise ValueError(f"worker_id {worker_id} out of range for num_workers {num_workers}")
        parts = dp_world_size * num_workers
        part = dp_rank * num_workers + worker_id
        n = len(self.items)
        return self.items[part * n // parts : (part + 1) * n // parts]


def _domain_seed(domain: Any) -> int:
    return zlib.crc32(str(domain).encode())  # stable across processes, unlike hash()


class ChunkPlanner:
    """Plans the chunks of ``mixture`` over the samples of ``index`` that match ``query``.

    Args:
        index: the sample index (read-only is enough).
        mixture: a StaticMixture or ScheduleMixture over one property of the index.
        chunk_size: samples per chunk.
        seed: seeds the per-domain permutations and the within-chunk shuffles. Changing it changes
            the data order (and the fingerprint).
        query: which samples take part (None: all); the mixture's domains are taken among them.
        global_batch_size: samples per training step, to place chunks on a schedule's steps
            (default ``chunk_size``).
    """

    def __init__(
        self,
        index: IndexReader,
        mixture: Mixture,
        *,
        chunk_size: int,
        seed: int,
        query: Query | None = None,
        global_batch_size: int | None = None,
    ):
        if chunk_size <= 0:
            raise ConfigError(f"chunk_size must be positive, got {chunk_size}.")
        if global_batch_size is not None and global_batch_size <= 0:
            raise ConfigError(f"global_batch_size must be positive, got {global_batch_size}.")
        self.mixture = mixture
        self.chunk_size = chunk_size
        self.seed = seed
        self.query = query or Query()
        self.global_batch_size = global_batch_size or chunk_size
        self.domains = mixture.domains
        self.ids = index.sample_ids_by_value(mixture.property, self.domains, self.query)
        empty = [d for d in self.domains if len(self.ids[d]) == 0]
        if empty:
            available = index.domain_counts(mixture.property, self.query)
            raise DataError(
                f"Mixture domain(s) {empty} of {mixture.property!r} have positive weight but no samples "
                f"matching {self.query} in {index.path}. Domains with samples: {available}. Fix the weights "
                f"or the query, or register the missing data."
            )
        id_hash = hashlib.sha256()
        for d in self.domains:
            id_hash.update(self.ids[d].tobytes())
        order = dict(mixture=mixture.to_dict(), query=self.query.to_list(), seed=seed, chunk_size=chunk_size,
                     sizes=[[d, len(self.ids[d])] for d in self.domains], ids=id_hash.hexdigest())
        self.order_fingerprint = fingerprint(**order)
        """Hash of what decides the chunks' contents (not the global batch size, which only places chunks
        on a schedule's steps): a resume with another DP degree keeps it. Written into the state."""
        self._order_parts = order
        self.fingerprint = self.fingerprint_for(self.global_batch_size)
        """The hash that also covers ``global_batch_size``: states written before the order fingerprint
        carry it, and still load."""
        self.next_chunk_index = 0
        self.cursors: dict[Any, int] = {d: 0 for d in self.domains}
        self._perm_cache: dict[tuple[Any, int], np.ndarray] = {}
        logger.info(
            "Mixture over %s (%s), chunk_size %d, seed %d, query %s: samples per domain %s",
            mixture.property, mixture.mixture_id, chunk_size, seed, self.query,
            {d: len(self.ids[d]) for d in self.domains},
        )

    def fingerprint_for(self, global_batch_size: int) -> str:
        """:attr:`fingerprint` as a planner with another ``global_batch_size`` has it."""
        return fingerprint(**self._order_parts, global_batch_size=global_batch_size)

    def step_of_chunk(self, k: int) -> int:
        """The training step in which chunk ``k`` starts."""
        return k * self.chunk_size // self.global_batch_size

    def domain_order(self, domain: Any, epoch: int) -> np.ndarray:
        """The sample ids of ``domain`` in the order of its ``epoch`` (a seeded permutation)."""
        key = (domain, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 4 * len(self.domains):
                self._perm_cache.clear()
            rng = np.random.default_rng([self.seed, _domain_seed(domain), epoch])
            self._perm_cache[key] = rng.permutation(self.ids[domain])
        return self._perm_cache[key]

    def _take(self, domain: Any, start: int, count: int) -> list[int]:
        n = len(self.ids[domain])
        out: list[int] = []
        pos = start
        while len(out) < count:
            epoch, offset = divmod(pos, n)
            if offset == 0 and epoch > 0:
                logger.warning(
                    "Mixture domain %s=%r ran out after %d samples; starting its epoch %d: its samples repeat.",
                    self.mixture.property, domain, n, epoch,
                )
            take = min(count - len(out), n - offset)
            out.extend(self.domain_order(domain, epoch)[offset : offset + take].tolist())
            pos += take
        return out

    def next_chunk(self) -> Chunk:
        """Plan chunk ``next_chunk_index`` from the current cursors, then advance them."""
        k = self.next_chunk_index
        counts = chunk_counts(self.mixture.weights_for_chunk(k, self.step_of_chunk(k)), self.chunk_size)
        items: list[tuple[Any, int]] = []
        for domain, count in counts.items():
            items.extend((domain, sid) for sid in self._take(domain, self.cursors[domain], count))
        order = np.random.default_rng([self.seed, _SHUFFLE_STREAM, k]).permutation(len(items))
        chunk = Chunk(k, tuple(items[i] for i in order), counts)
        for domain, count in counts.items():
            self.cursors[domain] += count
        self.next_chunk_index += 1
        return chunk

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.order_fingerprint,
            "mixture_id": self.mixture.mixture_id,
            "next_chunk": self.next_chunk_index,
            "cursors": {str(d): c for d, c in self.cursors.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["fingerprint"] not in (self.order_fingerprint, self.fingerprint):
            raise FingerprintMismatchError(
                f"Mixture planner state was written for other data or settings (fingerprint "
                f"{state['fingerprint']}, mixture {state.get('mixture_id')}) than configured ({self.order_fingerprint}, "
                f"mixture {self.mixture.mixture_id}): the mixture, query, seed, chunk size or indexed samples "
                f"changed. Resuming would follow another sample order; restore the settings, or restart the "
                f"data deliberately."
            )
        by_name = {str(d): d for d in self.domains}
        if set(state["cursors"]) != set(by_name):
            raise DataError(
                f"Mixture planner state has cursors for {sorted(state['cursors'])}, expected {sorted(by_name)}."
            )
        self.cursors = {by_name[k]: int(v) for k, v in state["cursors"].items()}
        self.next_chunk_index = int(state["next_chunk"])
        logger.info("Mixture planner resumes at chunk %d, domain cursors %s", self.next_chunk_index, state["cursors"])
