"""Reading MDS: the training loader (IID and non-IID stream mixtures), the validation loader, their builders.

:class:`MDSLoader` is a :class:`~titan_recipes.data.global_order.GlobalOrderLoader` made of a
:class:`~titan_recipes.data.mds.shards.ShardSet` (what is on disk, read and prepared shard by shard)
and an :class:`~titan_recipes.data.mds.order.EpochOrder` (streaming's epoch order over it); the
``[mosaic_dataloader]`` tables are parsed by :mod:`titan_recipes.data.mds.streams`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ConfigError, DataError
from ...tokenizer import tokenizer_path
from .. import state as codec
from ..global_order import FinitePass, GlobalOrderLoader
from ..state import fingerprint
from ..workers import Workers
from .compat import import_streaming
from .format import CONVERSION_FILE, tokenizer_sha256
from .order import EpochOrder
from .shards import Predownload, ShardSet
from .streams import StreamSpec, check_order_settings, training_settings, validation_stream_specs

logger = logging.getLogger(__name__)


class MDSLoader(GlobalOrderLoader):
    """Micro-batches of MDS token samples in streaming's epoch order, cut globally by DP rank.

    What it reads: :attr:`data`, the shards of ``streams`` (:class:`~.shards.ShardSet`). In which
    order: :attr:`order` (:class:`~.order.EpochOrder`), streaming's weights -> per-shard sampling ->
    py1e shuffle with one canonical node, so an epoch contains repeats when a stream is upsampled and
    leaves samples out when one is downsampled. ``num_samples`` is that epoch size, not the count on
    disk. With ``rank_streams`` (``non_iid_streams``) each DP rank has its own order.

    Checkpoint state (:mod:`titan_recipes.data.state`, key ``MDS``; identical on every rank)::

        {"mds": {"consumed_samples": 4096, "fingerprint": "9f2c...", "num_samples": 1517}}

    Non-IID: ``num_samples`` is every rank's epoch size (a list) and ``dp_world_size`` is added.
    """

    state_key = codec.MDS
    seq_len_key = "training.seq_len"
    """The setting ``seq_len`` comes from, for error messages."""

    def __init__(
        self,
        *,
        streams: Sequence[StreamSpec],
        seq_len: int,
        local_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        shuffle: bool = True,
        shuffle_seed: int = 9176,
        shuffle_algo: str = "py1e",
        shuffle_block_size: int = 1 << 18,
        name: str = "mds",
        rank_streams: dict[int | str, Sequence[StreamSpec]] | None = None,
        workers: Workers | None = None,
        predownload: int = -1,
    ):
        super().__init__(
            name=name, local_batch_size=local_batch_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            workers=workers,
        )
        check_order_settings(shuffle_seed=shuffle_seed, shuffle_algo=shuffle_algo,
                             shuffle_block_size=shuffle_block_size, predownload=predownload)
        if not streams:
            raise ConfigError("The MDS loader needs at least one stream.")
        self.predownload = max(predownload, 0)
        self.seq_len = seq_len
        st = import_streaming()
        self.data = ShardSet(st, streams, seq_len, self.seq_len_key)
        self.order = EpochOrder(
            st, self.data, shuffle=shuffle, shuffle_seed=shuffle_seed, shuffle_algo=shuffle_algo,
            shuffle_block_size=shuffle_block_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            rank_streams=rank_streams,
        )
        self._predownload = Predownload(self.data, name)
        non_iid_parts = self.order.non_iid_parts
        self._fingerprint = fingerprint(
            streams=[
                {"index": h, "proportion": s.proportion, "repeat": s.repeat, "choose": s.choose}
                for h, s in zip(self.data.index_hashes, self.specs)
            ],
            seq_len=seq_len,
            shuffle=shuffle,
            shuffle_seed=shuffle_seed,
            shuffle_algo=shuffle_algo,
            shuffle_block_size=shuffle_block_size,
            canonical_nodes=1,
            **({"non_iid": non_iid_parts} if non_iid_parts else {}),
        )
        for spec, choose, n in zip(self.specs, self.choose_per_stream, self.data.samples_per_stream):
            logger.info(
                "MDS stream %s (%s): %d samples on disk, %d per epoch%s",
                spec.name, spec.local, n, choose, f" on dp_rank {dp_rank} (non-IID)" if self.non_iid else "",
            )
        logger.info(
            "Dataset %s: %d stream(s), %d shards, %d samples of %d tokens per epoch, shuffle=%s "
            "(%s, seed %d, block %d, 1 canonical node), fingerprint %s",
            self.name, len(self.specs), len(self.shards), self.num_samples, seq_len + 1, shuffle,
            shuffle_algo, shuffle_seed, shuffle_block_size, self._fingerprint,
        )

    # -- what the shards and the order hold -----------------------------------------------------------
    specs = property(lambda self: self.data.specs, doc="The streams as configured (StreamSpec), in order.")
    streams = property(lambda self: self.data.streams, doc="streaming's ``Stream`` of each spec.")
    shards = property(lambda self: self.data.shards, doc="streaming's shard readers, all streams in order.")
    spanner = property(lambda self: self.data.spanner, doc="Sample id -> (shard id, row).")
    non_iid = property(lambda self: self.order.non_iid, doc="Each DP rank has its own order (non_iid_streams).")
    choose_per_stream = property(lambda self: self.order.choose_per_stream, doc="Samples per epoch of each stream.")

    def stream_of(self, sample_id: int) -> int:
        """Index (in :attr:`specs`) of the stream a sample id belongs to."""
        return self.data.stream_of(sample_id)

    # -- GlobalOrderLoader -------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        return self.order.epoch_size

    @property
    def data_fingerprint(self) -> str:
        return self._fingerprint

    def epoch_order(self, epoch: int) -> np.ndarray:
        return self.order.epoch_order(epoch)

    def sample(self, index: int) -> np.ndarray:
        return self.data.read(index, self.vocab_size)

    def rank_indices(self, consumed: int) -> range:
        """IID: this rank's block of the global batch. Non-IID: the next ``local_batch_size`` positions
        of this rank's own order (every rank has read ``consumed / dp_world_size`` samples)."""
        if not self.non_iid:
            return super().rank_indices(consumed)
        start = consumed // self.dp_world_size
        return range(start, start + self.local_batch_size)

    def state_dict(self) -> dict[str, Any]:
        if not self.non_iid:
            return super().state_dict()
        # Kept identical on every rank: every rank's epoch size, and the DP degree.
        position = {"consumed_samples": self.consumed_samples, "num_samples": list(self.order.epoch_size_per_rank),
                    "dp_world_size": self.dp_world_size}
        return codec.encode(self.state_key, position, fingerprint=self.data_fingerprint)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.non_iid:
            state = codec.decode(state_dict, self.state_key, fingerprint=None, what=f"Dataset {self.name}")
            saved = None if state is None else state.get("dp_world_size")
            if state is not None and saved != self.dp_world_size:
                raise DataError(
                    f"Dataset {self.name}: mosaic_dataloader.dataset.non_iid_streams gives each data-parallel "
                    f"rank its own sample plan, so it resumes only with the DP degree it was saved with "
                    f"({saved if saved is not None else 'a checkpoint without non_iid_streams'}); this run has "
                    f"{self.dp_world_size}. Resume with the same DP degree, or set "
                    f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data deliberately."
                )
        super().load_state_dict(state_dict)

    def before_batch(self, consumed: int) -> None:
        """``predownload``: queue the shards of this rank's next ``predownload`` samples for a
        background thread that downloads/decompresses them (:class:`~.shards.Predownload`), so reads
        find them ready. Failures there are logged and left to the read, which raises the DataError."""
        if not self.predownload:
            return
        step = self.local_batch_size * self.dp_world_size
        batches_ahead = -(-self.predownload // self.local_batch_size)
        self._predownload.ahead(
            consumed, consumed + batches_ahead * step, step,
            lambda start: [self.spanner[self.global_index_to_sample(g)][0] for g in self.rank_indices(start)],
        )


# ---------------------------------------------------------------------------------------------------
# From the job config
# ---------------------------------------------------------------------------------------------------


def check_tokenizer_matches(
    specs: Sequence[StreamSpec], hf_assets_path: str | None, setting: str = "model.hf_assets_path"
) -> None:
    """Refuse data tokenized with another tokenizer than the one at ``hf_assets_path`` (when recorded)."""
    if not hf_assets_path:
        return
    configured = tokenizer_sha256(hf_assets_path)
    if configured is None:
        return
    for spec in specs:
        conversion = Path(spec.local) / CONVERSION_FILE
        if not conversion.is_file():
            continue
        recorded = json.loads(conversion.read_text()).get("tokenizer", {})
        if recorded.get("tokenizer_json_sha256") not in (None, configured):
            raise DataError(
                f"MDS stream '{spec.name}' ({spec.local}) was tokenized with {recorded.get('path')} "
                f"(tokenizer.json sha256 {recorded['tokenizer_json_sha256'][:12]}...), but "
                f"{setting} = '{hf_assets_path}' has another tokenizer.json "
                f"({configured[:12]}...). Training would read the ids as other tokens. Point "
                f"{setting} at the conversion's tokenizer or convert the data again."
            )


def build_mds_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> MDSLoader:
    """``training.dataset = "mds"``: the loader configured by ``[mosaic_dataloader]``."""
    cfg = job_config.mosaic_dataloader
    workers, specs, rank_streams = training_settings(job_config)
    loader = MDSLoader(
        streams=specs,
        seq_len=job_config.training.seq_len,
        local_batch_size=job_config.training.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        shuffle=cfg.dataset.shuffle,
        shuffle_seed=cfg.dataset.shuffle_seed,
        shuffle_algo=cfg.dataset.shuffle_algo,
        shuffle_block_size=cfg.dataset.shuffle_block_size,
        name=job_config.training.dataset,
        rank_streams=rank_streams,
        workers=workers,
        predownload=cfg.dataset.predownload,
    )
    # After the loader: it downloads a remote stream's index.json and conversion.json into local.
    check_tokenizer_matches(specs, *tokenizer_path(job_config))
    return loader


# ---------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------


class MDSValidationLoader(FinitePass, MDSLoader):
    """A finite pass over validation MDS streams: every sample once, in index order, no shuffling.

    Streams are concatenated in config order; the pass is :class:`~titan_recipes.data.global_order.FinitePass`
    (equal batch counts on every rank, restarts at sample 0, no checkpoint state).
    """

    state_key = "mds_validation"  # never in a checkpoint: FinitePass keeps no state
    seq_len_key = "validation.seq_len"

    def __init__(self, **kwargs):
        super().__init__(shuffle=False, **kwargs)
        self.init_finite_pass(
            "Validation data", "Use more validation data or a smaller validation.local_batch_size."
        )


def build_mds_validation_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> MDSValidationLoader:
    """``validation.dataset = "mds"``: a finite, unshuffled, DP-partitioned pass over
    ``[mosaic_dataloader.validation_streams.<name>]`` (``local``, optional ``remote``), with
    ``validation.seq_len`` and ``validation.local_batch_size``. For torchtitan's Validator
    (``build_validator_fn``); see :class:`MDSValidationLoader`."""
    validation = job_config.validation
    specs = validation_stream_specs(job_config)
    loader = MDSValidationLoader(
        streams=specs,
        seq_len=validation.seq_len,
        local_batch_size=validation.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        name="mds_validation",
    )
    check_tokenizer_matches(specs, *tokenizer_path(job_config))
    return loader
