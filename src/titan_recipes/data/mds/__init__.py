"""Mosaic streaming (MDS) data: documents -> packed token samples in MDS shards, and a loader that reads them.

Select it with ``training.dataset = "mds"``; it is configured in ``[mosaic_dataloader]``
(:class:`titan_recipes.data.mds.config.MosaicDataloader`)::

    [mosaic_dataloader.dataset]
    shuffle_seed = 9176
    [mosaic_dataloader.dataset.streams.books]
    local = "/data/mds/books"
    proportion = 0.3
    [mosaic_dataloader.dataset.streams.web]
    local = "/data/mds/web"
    proportion = 0.7

**Format.** :func:`write_mds` tokenizes documents (JSONL, Parquet, a ``save_to_disk`` HF dataset or
blank-line separated ``.txt``; :func:`iter_input_documents`) with BOS and EOS,
concatenates them into one token stream and cuts windows ``tokens[k*L : k*L + L + 1]``
(``L = seq_len``, stride ``L``, exactly as :mod:`titan_recipes.data.text` does), written by
``streaming``'s own ``MDSWriter`` as column ``tokens`` = ``ndarray:int32:<L+1>``, with an ``xxh64``
hash per shard in ``index.json``. ``conversion.json`` beside ``index.json`` records how (tokenizer
hash, seq_len, inputs, counts).

**Other writers' layouts** (llm-foundry's converters, any ``streaming.MDSWriter`` script): ``tokens``
as an ndarray of any integer dtype and any length, ``tokens`` as bytes (``token_encoding_type``), or
``text`` tokenized on the fly (:mod:`~titan_recipes.data.mds.layouts`). Samples that are not all
``seq_len + 1`` tokens are read as one token stream in the epoch's order and cut into windows
(:mod:`~titan_recipes.data.mds.packing`); the global order, exact resume and DP elasticity hold.

**Order: design choice (b).** Samples are read with mosaicml-streaming's ``Stream`` (index parsing,
``MDSReader`` shard readers, zstd decompression) and mixed with streaming's own epoch algorithm
(``Stream.apply_weights`` for proportion/repeat/choose, ``get_sampling`` for partial repeats,
``get_shuffle`` with ``py1e``). With one canonical node this gives exactly the sample order a
single-process ``StreamingDataset`` yields (``tests/unit/data/test_mds.py`` checks it). That one
global order is cut into micro-batches by
:class:`~titan_recipes.data.global_order.GlobalOrderLoader` from torchtitan's ``dp_rank``/``dp_world_size``.
The state is ``consumed_samples`` + fingerprint, identical on every rank, so a resume with another DP
degree continues the same order.

``StreamingDataset`` itself (choice (a)) was tried first and rejected. Measured with 0.13.0 on one
machine, DP ranks presented to it as nodes through the environment variables:

* It partitions by the RANK/WORLD_SIZE/LOCAL_WORLD_SIZE environment variables, not by DP rank. TP/CP
  ranks of one DP group would have to share a rank (its ``replication`` argument only covers
  consecutive ranks, so not PP). Faking "one DP rank per node" on one machine makes every process a
  local leader, and they collide on shared memory:
  ``FileExistsError: [Errno 17] File exists: '/000021_locals'`` with 2 processes.
* Epochs are padded with repeated samples up to a multiple of ``num_canonical_nodes`` (100 samples,
  6 canonical nodes: 102 per epoch, 2 repeated). Ranks can finish an epoch at different steps after
  a resume with another world size (per-rank counts [14, 14, 12] after 2 -> 3 ranks). Some world
  sizes are refused outright ("Either canonical or physical nodes must be evenly divisible by the
  other" for 4 ranks with 6 canonical nodes).
* It never crosses an epoch inside one iterator. A micro-batch that spans epochs, and the resume
  state within it, would have to be stitched together outside it.
* Within one epoch a resume with another world size keeps the samples of each global step (ranks
  get them interleaved), but only with ``num_canonical_nodes`` fixed. Its default, the initial node
  count, makes the order depend on the first launch's size.
  It also needs ``dist`` (it calls ``init_process_group`` itself when WORLD_SIZE > 1) and leaves
  filelocks in ``/tmp``.

Checkpoint state (identical on every rank)::

    {"mds": {"consumed_samples": 4096, "fingerprint": "9f2c...", "num_samples": 1517}}

``num_samples`` is the epoch size after stream weighting. The fingerprint covers each stream's
``index.json`` (which has per-shard content hashes when written here), the stream weights and every
order setting. It does not cover paths or stream names, so data can move.

**Remote streams.** A stream with ``remote = "s3://bucket/prefix"`` uses ``local`` as its cache
(endpoint from ``S3_ENDPOINT_URL``, credentials as boto3 finds them; any scheme streaming's
``CloudDownloader`` knows works the same way, only S3 is tested). The loader downloads
``index.json`` (and ``conversion.json``, if there) when it is built, and each shard on demand, the
first time a rank reads one of its samples, with streaming's own ``Stream`` download code. Shards
are checked against their ``xxh64`` hash from ``index.json`` when it lists one for every shard. Each
file appears under its final name only when complete (boto3 and streaming write a temporary file and
rename it), and one file lock per ``local`` directory serialises downloads and decompression, so
ranks on one node can share ``local``. A cached ``index.json`` is trusted: point a new dataset at a
fresh ``local``. Nothing is evicted (no cache limit): ``local`` needs room for the whole stream.
Failures (unreachable endpoint, missing bucket/object, hash mismatch) raise DataError naming the
``remote`` setting and the endpoint. :func:`write_mds` writes to a remote ``out`` through
``MDSWriter``'s upload support.

**Non-IID streams per DP rank.** ``[mosaic_dataloader.dataset.non_iid_streams.dp_rank_<N>.<stream>]``
(or ``.default.<stream>``, for every rank without its own entry) replaces the one global order by one
order per data-parallel rank. Semantics, exactly:

* Rank ``r`` reads the streams listed in its entry (``dp_rank_r``, else ``default``; with neither, all
  base streams with their base weights). A listed stream inherits ``local``/``remote`` and, if the
  entry gives no weight, its weight from ``streams.<stream>``; a given ``proportion``/``repeat``/
  ``choose`` replaces the base weight.
* Disjointness: the samples of stream ``s`` (its sample ids, in index order) are cut into contiguous
  blocks of near-equal size, one per rank that reads ``s``, in rank order. A rank only ever reads its
  own blocks, so two ranks never read the same sample. Ranks that should overlap must say so in the
  config: list the same directory as two base streams.
* Rank ``r``'s epoch is streaming's algorithm applied to its blocks: ``Stream.apply_weights`` over the
  block sizes (so a proportion is a share of that rank's epoch, exact per epoch), ``get_sampling``
  over the shards clipped to the blocks, ``get_shuffle``, all with the rank seed
  ``sha256("<shuffle_seed>:dp_rank_<r>")`` (31 bits). Epoch sizes may differ between ranks; each rank
  wraps into its next epoch on its own.
* State: every rank has read ``consumed_samples / dp_world_size`` samples of its own order, so the
  state stays identical on every rank (plus every rank's epoch size and the DP degree) and resume is
  exact. The fingerprint covers every rank's plan. A resume with another DP degree is refused
  (DataError): it cannot keep each rank's plan.

**Validation.** ``validation.dataset = "mds"`` reads ``[mosaic_dataloader.validation_streams.<name>]``
(``local``, optional ``remote``) once per validation run, unshuffled, cut by DP rank
(:func:`build_mds_validation_loader`, :class:`MDSValidationLoader`).

**Workers and predownload.** ``[mosaic_dataloader] num_workers / prefetch_factor / pin_memory /
persistent_workers`` run the reads in torch DataLoader worker processes
(:class:`~titan_recipes.data.workers.Workers`): each worker reads whole micro-batches of the same
global order, so batches, losses and checkpoints are identical with any number of workers, and a
checkpoint written with one setting resumes exactly with another. ``dataset.predownload = N`` makes
a background thread of the training process download/decompress the shards of this rank's next
``N`` samples ahead of the reads (workers find them in ``local``). Nothing here uses streaming's
shared memory, so runs on one node cannot collide there; ranks sharing a ``local`` cache serialise
on its lock file.
"""

from ..source import DataSource, lazy_exports
from .config import MosaicDataloader, MosaicDataset, MosaicTokenizer, mosaic_tokenizer_path

SOURCE = DataSource(
    name="mds",
    build_loader="titan_recipes.data.mds.loader:build_mds_loader",
    build_validation_loader="titan_recipes.data.mds.loader:build_mds_validation_loader",
    sections={"mosaic_dataloader": MosaicDataloader, "mosaic_tokenizer": MosaicTokenizer},
    tokenizer_path=mosaic_tokenizer_path,
    build_tokenizer="titan_recipes.data.mds.config:build_mosaic_tokenizer",
    summary="Mosaic streaming MDS shards, local or remote (S3), IID or non-IID per DP rank",
)

_LAZY = {
    "compat": ("TESTED_STREAMING_VERSION", "import_streaming"),
    "format": ("CONVERSION_FILE", "SHARD_HASH", "TOKEN_DTYPE", "TOKENS_COLUMN", "read_index", "tokenizer_sha256"),
    "streams": ("STREAM_KEYS", "StreamSpec", "non_iid_rank_streams", "stream_specs"),
    "shards": ("DECOMPRESS_LOCK",),
    "loader": ("MDSLoader", "MDSValidationLoader", "build_mds_loader", "build_mds_validation_loader",
               "check_tokenizer_matches"),
    "inputs": ("HubDataset", "iter_documents", "iter_input_documents", "parse_document_range"),
    "writer": ("MdsWriteSummary", "check_compression", "write_mds"),
    "stats": ("MdsStats", "mds_stats"),
    "layouts": ("ACCEPTED_LAYOUTS", "Layout", "detect_layout", "encode_documents"),
    "packing": ("PackedStream", "SampleLengths"),
}
"""Public names of the submodules, imported on first access: ``import titan_recipes.data.mds`` stays
light (the config sections), and ``from titan_recipes.data.mds import write_mds`` still works."""
__getattr__, _LAZY_NAMES = lazy_exports(__name__, _LAZY)

__all__ = ["SOURCE", "MosaicDataloader", "MosaicDataset", "MosaicTokenizer", *_LAZY_NAMES]
