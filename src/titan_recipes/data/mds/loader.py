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
from .packing import PackedStream, SampleLengths
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

    Samples that are not all ``seq_len + 1`` tokens long (any other length, or ``text``) are packed
    (:mod:`~titan_recipes.data.mds.packing`): a "sample" of the global order is then a window of the
    packed stream, ``consumed_samples`` counts windows and ``num_samples`` is the windows of epoch 0.
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
        tokenizer: Any = None,
        token_encoding_type: str = "int64",
        progress: bool = True,
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
        self.data = ShardSet(st, streams, seq_len, self.seq_len_key, token_encoding_type)
        self.order = EpochOrder(
            st, self.data, shuffle=shuffle, shuffle_seed=shuffle_seed, shuffle_algo=shuffle_algo,
            shuffle_block_size=shuffle_block_size, dp_rank=dp_rank, dp_world_size=dp_world_size,
            rank_streams=rank_streams,
        )
        self._predownload = Predownload(self.data, name)
        self._tokenizer = tokenizer
        self.packed: PackedStream | None = None
        """The packed token stream, when the samples are not all windows (None: each sample is one)."""
        self._docs: dict[int, np.ndarray] = {}
        packing = self._plan_packing(tokenizer, progress)
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
            **({"packing": packing} if packing else {}),
        )
        for spec, choose, n in zip(self.specs, self.choose_per_stream, self.data.samples_per_stream):
            logger.info(
                "MDS stream %s (%s): %d samples on disk, %d per epoch%s",
                spec.name, spec.local, n, choose, f" on dp_rank {dp_rank} (non-IID)" if self.non_iid else "",
            )
        if self.packed is not None:
            logger.info(
                "Dataset %s: samples packed into windows of %d tokens (stride %d): %d documents and %d tokens "
                "in epoch 0, ~%d windows; layouts %s", self.name, seq_len + 1, seq_len, len(self.packed.epoch(0)[0]),
                self.packed.tokens_in_epoch(0), self.num_samples, [layout.describe() for layout in self.data.layouts],
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

    def _plan_packing(self, tokenizer: Any, progress: bool) -> dict[str, Any] | None:
        """Decide whether samples are windows as they are or packed (module docstring of ``packing``);
        when packed, count every sample's tokens and return what the fingerprint must cover."""
        window = self.seq_len + 1
        layouts = self.data.layouts
        if all(layout.kind == "tokens" and layout.fixed_len == window for layout in layouts):
            return None  # each sample is one window: nothing to count
        lengths = SampleLengths(self.data, tokenizer, progress)
        if all(layout.kind == "tokens" for layout in layouts) and np.all(lengths.lengths == window):
            return None
        counts = lengths.lengths.copy()
        for i, overlap in enumerate(self.data.window_len):
            if overlap is not None:  # converter windows overlap by one token: count their first L
                logger.warning(
                    "MDS stream %s holds windows converted for seq_len %d, but %s = %d: they are read as "
                    "their first %d tokens each and packed into windows of %d (convert with --seq-len %d to "
                    "skip this).", self.data.specs[i].name, overlap - 1, self.seq_len_key, self.seq_len,
                    overlap - 1, self.seq_len + 1, self.seq_len,
                )
                lo, hi = self.data.shard_offset_per_stream[i], self.data.shard_offset_per_stream[i + 1]
                first, last = self.data.sample_offset_per_shard[lo], self.data.sample_offset_per_shard[hi - 1] + self.data.samples_per_shard[hi - 1]
                counts[first:last] -= 1
        self.packed = PackedStream(counts, self.order.epoch_order)
        return {"layouts": [layout.describe() for layout in layouts], "tokenizer": lengths.tokenizer_fp,
                "overlapping_windows": self.data.window_len, "stride": self.seq_len}

    def _documents(self, sample_ids) -> dict[int, np.ndarray]:
        """Packed samples' tokens as they enter the stream (text tokenized, in one batch; converter windows
        less their last token). The last 256 read are kept: consecutive windows share documents."""
        out, text = {}, []
        for sid in dict.fromkeys(int(s) for s in sample_ids):
            if sid in self._docs:
                out[sid] = self._docs[sid]
            elif self.data.layouts[self.stream_of(sid)].kind == "text":
                text.append(sid)
            else:
                tokens = self.data.read_tokens(sid, self.vocab_size)
                out[sid] = tokens[:-1] if self.data.window_len[self.stream_of(sid)] is not None else tokens
        if text:
            from .layouts import encode_documents

            for sid, tokens in zip(text, encode_documents(self._tokenizer, [self.data.read_text(s) for s in text])):
                out[sid] = tokens
        self._docs.update(out)
        while len(self._docs) > 256:
            del self._docs[next(iter(self._docs))]
        return out

    def window_pieces(self, g: int) -> list[tuple[int, int, int]]:
        """``(sample_id, start, stop)`` slices of the documents that make up packed window ``g``."""
        return self.packed.pieces(g * self.seq_len, g * self.seq_len + self.seq_len + 1)

    def read_micro_batch(self, consumed: int) -> tuple[np.ndarray, np.ndarray]:
        if self.packed is None:
            return super().read_micro_batch(consumed)
        windows = [self.window_pieces(g) for g in self.rank_indices(consumed)]
        docs = self._documents(sid for w in windows for sid, _, _ in w)
        rows = np.stack([np.concatenate([docs[sid][a:b] for sid, a, b in w]) for w in windows]).astype(np.int64)
        return rows, np.asarray([w[0][0] for w in windows], np.int64)

    def epoch_of_index(self, g: int) -> int:
        return super().epoch_of_index(g) if self.packed is None else self.packed.epoch_of(g * self.seq_len)

    # -- GlobalOrderLoader -------------------------------------------------------------------------
    @property
    def num_samples(self) -> int:
        if self.packed is not None:
            return self.packed.tokens_in_epoch(0) // self.seq_len
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
        if self.packed is None:
            def shard_ids(start):
                return [self.spanner[self.global_index_to_sample(g)][0] for g in self.rank_indices(start)]
        else:
            def shard_ids(start):
                return [self.spanner[sid][0] for g in self.rank_indices(start) for sid, _, _ in self.window_pieces(g)]
        self._predownload.ahead(consumed, consumed + batches_ahead * step, step, shard_ids)


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


def _configured_tokenizer(tokenizer: Any, job_config: Any) -> tuple[str | None, str]:
    """The directory of the run's tokenizer and the setting that names it: a hub name in
    ``[mosaic_tokenizer] name`` resolves to its cached snapshot (the tokenizer's ``source_dir``)."""
    path, setting = tokenizer_path(job_config)
    source = getattr(tokenizer, "source_dir", None)
    return (str(source) if source else path), setting


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
        tokenizer=tokenizer,
        token_encoding_type=cfg.dataset.token_encoding_type,
    )
    # After the loader: it downloads a remote stream's index.json and conversion.json into local.
    check_tokenizer_matches(specs, *_configured_tokenizer(tokenizer, job_config))
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

    @property
    def num_samples(self) -> int:
        """Packed: every window that fits in the one pass (the stream does not wrap into a next epoch)."""
        if self.packed is not None:
            return (self.packed.tokens_in_epoch(0) - 1) // self.seq_len
        return self.order.epoch_size

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
        tokenizer=tokenizer,
        token_encoding_type=job_config.mosaic_dataloader.dataset.token_encoding_type,
    )
    check_tokenizer_matches(specs, *_configured_tokenizer(tokenizer, job_config))
    return loader
