"""The epoch order of an MDS stream mixture: streaming's weighting, sampling and shuffling, IID or non-IID.

:class:`EpochOrder` computes each epoch's sample ids exactly as mosaicml-streaming 0.13.0 does with
one canonical node: ``Stream.apply_weights`` for proportion/repeat/choose, ``get_sampling`` for
partial repeats of a shard, ``get_shuffle`` (``py1e`` by default). IID: one order over all streams,
shared by every DP rank. Non-IID (``non_iid_streams``): one order per DP rank over that rank's own,
disjoint blocks of each stream it reads, with a seed derived from ``shuffle_seed`` and the rank.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ...errors import ConfigError, DataError
from .shards import ShardSet, make_stream
from .streams import StreamSpec

if TYPE_CHECKING:
    from streaming.base.stream import Stream

logger = logging.getLogger(__name__)


class EpochOrder:
    """The sample ids of each epoch, over the samples of ``shards`` (numbered as :class:`ShardSet` does).

    Each epoch's order comes from streaming's own algorithm (weights -> per-shard sampling -> py1e
    shuffle with one canonical node), so it contains repeats when a stream is upsampled and leaves
    samples out when one is downsampled. ``epoch_size`` is that epoch size, not the count on disk.
    ``rank_streams`` (from ``non_iid_streams``; None: IID) gives DP rank ``dp_rank`` of
    ``dp_world_size`` its own order.
    """

    def __init__(
        self,
        st: Any,
        shards: ShardSet,
        *,
        shuffle: bool,
        shuffle_seed: int,
        shuffle_algo: str,
        shuffle_block_size: int,
        dp_rank: int,
        dp_world_size: int,
        rank_streams: dict[int | str, Sequence[StreamSpec]] | None = None,
    ):
        self.st = st
        self.shards = shards
        self.shuffle = shuffle
        self.shuffle_seed = shuffle_seed
        self.shuffle_algo = shuffle_algo
        self.shuffle_block_size = shuffle_block_size
        self.non_iid = rank_streams is not None
        self.non_iid_parts: dict[str, Any] | None = None
        """Non-IID: every rank's plan (seed, choose per stream, sample blocks) and the DP degree, for the fingerprint."""
        if not self.non_iid:
            self.order_seed = shuffle_seed
            self.epoch_size, self.choose_per_stream = self._weigh(
                shards.streams, shards.samples_per_stream, shuffle_seed, "mosaic_dataloader.dataset.streams"
            )
            # IID: every shard is one piece (zero-sample shards too: get_sampling sees them, as in streaming).
            self.pieces_per_stream = [
                [(int(shards.sample_offset_per_shard[k]), int(shards.samples_per_shard[k]))
                 for k in range(shards.shard_offset_per_stream[i], shards.shard_offset_per_stream[i + 1])]
                for i in range(len(shards.specs))
            ]
        else:
            plans = self._non_iid_plans(rank_streams, dp_world_size)
            self.order_seed, self.epoch_size, self.choose_per_stream, blocks = plans[dp_rank]
            self.epoch_size_per_rank = [plan[1] for plan in plans]
            self.pieces_per_stream = [self._clip_pieces(i, block) for i, block in enumerate(blocks)]
            self.non_iid_parts = {
                "dp_world_size": dp_world_size,
                "ranks": [{"seed": s, "choose": c, "blocks": b} for s, _, c, b in plans],
            }

    def _weigh(self, streams: list[Stream], samples: np.ndarray, seed: int, where: str) -> tuple[int, list[int]]:
        """streaming's ``Stream.apply_weights``: the epoch size and each stream's samples per epoch."""
        try:
            # streaming divides by the total choose, which is 0 for an empty epoch (refused below).
            with np.errstate(divide="ignore", invalid="ignore"):
                epoch_size = int(self.st.Stream.apply_weights(streams, samples, None, seed))
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        if epoch_size < 1:
            raise ConfigError(
                f"The stream weights give an empty epoch ({where}: choose "
                f"{[int(s.choose) for s in streams]}); set a positive proportion/repeat/choose."
            )
        return epoch_size, [int(s.choose) for s in streams]

    def _non_iid_plans(self, rank_streams: dict[int | str, Sequence[StreamSpec]], world: int) -> list[tuple]:
        """Per DP rank: (order seed, epoch size, choose per base stream, sample block per base stream).

        Computed for every rank on every rank (cheap: no data is read), so every rank validates the
        whole configuration and the fingerprint covers all ranks' plans.
        """
        names = [spec.name for spec in self.shards.specs]
        for key in rank_streams:
            if key != "default" and not (isinstance(key, int) and 0 <= key < world):
                raise ConfigError(
                    f"mosaic_dataloader.dataset.non_iid_streams.dp_rank_{key}: there are only {world} "
                    f"data-parallel ranks (dp_rank_0 .. dp_rank_{world - 1})."
                )
        per_rank = [list(rank_streams.get(r, rank_streams.get("default", self.shards.specs))) for r in range(world)]
        readers = [[r for r in range(world) if any(s.name == name for s in per_rank[r])] for name in names]
        offsets = np.concatenate([[0], np.cumsum(self.shards.samples_per_stream)])
        for name, ranks in zip(names, readers):
            if not ranks:
                logger.warning("MDS stream %s is read by no data-parallel rank (non_iid_streams).", name)
        plans = []
        for r, specs in enumerate(per_rank):
            blocks: list[tuple[int, int] | None] = [None] * len(names)
            for spec in specs:
                i = names.index(spec.name)
                n, k, j = int(self.shards.samples_per_stream[i]), len(readers[i]), readers[i].index(r)
                start, end = offsets[i] + n * j // k, offsets[i] + n * (j + 1) // k
                if end <= start:
                    raise DataError(
                        f"MDS stream '{spec.name}' has {n} samples, split over the {k} data-parallel ranks "
                        f"that read it (non_iid_streams): dp_rank {r} gets none. Let fewer ranks read it."
                    )
                blocks[i] = (int(start), int(end))
            seed = int(hashlib.sha256(f"{self.shuffle_seed}:dp_rank_{r}".encode()).hexdigest()[:8], 16) >> 1
            streams = [make_stream(self.st, spec) for spec in specs]
            samples = np.asarray([blocks[names.index(s.name)][1] - blocks[names.index(s.name)][0] for s in specs], np.int64)
            epoch, chosen = self._weigh(streams, samples, seed, f"mosaic_dataloader.dataset.non_iid_streams (dp_rank {r})")
            choose = [0] * len(names)
            for spec, c in zip(specs, chosen):
                choose[names.index(spec.name)] = c
            plans.append((seed, epoch, choose, blocks))
        return plans

    def _clip_pieces(self, stream_id: int, block: tuple[int, int] | None) -> list[tuple[int, int]]:
        """The stream's shards cut to the sample range ``block`` = [start, end) (non-zero pieces only)."""
        if block is None:
            return []
        pieces, shards = [], self.shards
        for k in range(shards.shard_offset_per_stream[stream_id], shards.shard_offset_per_stream[stream_id + 1]):
            lo = max(block[0], int(shards.sample_offset_per_shard[k]))
            hi = min(block[1], int(shards.sample_offset_per_shard[k] + shards.samples_per_shard[k]))
            if hi > lo:
                pieces.append((lo, hi - lo))
        return pieces

    def resample(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Shuffle units and sample ids of one epoch: ``StreamingDataset.resample_streams`` (0.13.0).

        Each shard contributes ``choose`` samples (streaming's ``get_sampling``): whole repeats of the
        shard, then a seeded random subset for the fractional part.
        """
        rng = np.random.default_rng(self.order_seed + epoch)
        units: list[int] = []
        ids: list[np.ndarray] = []
        for stream_choose, pieces in zip(self.choose_per_stream, self.pieces_per_stream):
            if not pieces:
                continue
            sizes = np.asarray([size for _, size in pieces], np.int64)
            chosen = self.st.get_sampling(sizes, stream_choose, 1, self.order_seed, epoch, self.shuffle)
            for (offset, size), choose in zip(pieces, chosen):
                if not size:
                    continue
                full, part = divmod(int(choose), int(size))
                units += [int(size)] * full + ([part] if part else [])
                ids += [offset + np.arange(size)] * full
                if part:
                    ids.append(np.sort(offset + rng.choice(size, part, False)))
        return np.asarray(units, np.int64), np.concatenate(ids).astype(np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        units, sample_ids = self.resample(epoch)
        if not self.shuffle:
            return sample_ids
        perm = self.st.get_shuffle(self.shuffle_algo, units, 1, self.order_seed, epoch, self.shuffle_block_size)
        return sample_ids[perm]
