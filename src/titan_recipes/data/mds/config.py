"""``[mosaic_dataloader]`` and ``[mosaic_tokenizer]``: the config sections of the MDS source, with the
tokenizer override ``[mosaic_tokenizer] name``."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass, field
from typing import Any

from ...errors import ConfigError


@dataclass
class MosaicDataset:
    """``[mosaic_dataloader.dataset]``: what the MDS loader (``training.dataset = "mds"``) reads, and in
    which order. Settings keep mosaicml-streaming's ``StreamingDataset`` names and defaults."""

    local: str = ""
    """Directory of one MDS dataset (with ``index.json``), e.g. written by scripts/mds_convert.py.
    Set either this or ``streams``; "" means unset."""

    streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A mixture of MDS datasets, one TOML table per stream: ``[mosaic_dataloader.dataset.streams.<name>]``
    with ``local`` (directory) and at most one of ``proportion`` (relative share of each epoch; all
    streams then need one), ``repeat`` (multiplier on the stream's samples) or ``choose`` (samples
    per epoch). No weight: every sample once per epoch. Streams are mixed IID within the epoch, and
    an epoch has exactly the weighted count from each stream (streaming's ``Stream`` semantics).
    ``remote`` (e.g. ``"s3://bucket/prefix"``, endpoint from the ``S3_ENDPOINT_URL`` environment
    variable) makes ``local`` a download cache: index.json when the loader is built, shards on first
    use, hash-checked. ``~`` and ``$VAR``/``${VAR}`` in a ``local`` path are expanded in each training
    process (``local = "${SLURM_TMPDIR}/mds/web"``: one cache per node on its own disk); an unset variable
    is a ConfigError. streaming's other ``Stream`` fields: ``split`` (a subdirectory of local and
    remote), ``download_retry``, ``download_timeout``, ``validate_hash``, ``keep_zip``. ``validate_hash =
    "xxh64"`` checks every shard file against index.json on its first use in each process, local ones
    too (streaming checks only downloads); without it a changed byte is caught only when it breaks a
    shard's structure or makes a token id >= the tokenizer's size (titan_recipes/data/integrity.py). Changing streams or weights changes the data fingerprint (paths do not).
    TOML only: the command line cannot express nested tables (``--help`` lists the key as ``{TOML only}``)."""

    non_iid_streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Non-IID data per data-parallel rank: ``[mosaic_dataloader.dataset.non_iid_streams.dp_rank_<N>.<stream>]``
    (or ``.default.<stream>`` for ranks without their own entry) lists the base ``streams`` that rank
    reads, optionally overriding ``proportion``/``repeat``/``choose`` (``local``/``remote`` are
    inherited). A rank with no entry and no ``default`` reads all base streams with their weights.
    Each stream's samples are split into contiguous, disjoint blocks among the ranks that read it,
    and each rank draws its own epochs from its blocks with streaming's weighting and a rank seed
    derived from ``shuffle_seed``; see titan_recipes.data.mds. Empty (default): IID, one global order.
    A checkpoint resumes only with the same DP degree. TOML only."""

    shuffle: bool = True
    """Shuffle each epoch (False: streams and shards in index order, with resampling still applied)."""

    shuffle_seed: int = 9176
    """Seed of stream resampling and shuffling (streaming's default). Changing it changes the data
    order and the fingerprint, so a checkpoint written with another seed refuses to resume."""

    shuffle_algo: str = "py1e"
    """streaming's shuffle algorithm (py1e, py1br, py1s, py2s, naive), applied with one canonical node
    to the global order. Part of the fingerprint."""

    shuffle_block_size: int = 262144
    """Shuffle block size in samples (streaming's default 1 << 18): larger mixes across more shards.
    Part of the fingerprint."""

    token_encoding_type: str = "int64"
    """The numpy integer dtype of ``tokens`` columns written as ``bytes`` (llm-foundry's key and default,
    ``int64``; older llm-foundry ``--concat_tokens`` datasets store the ids this way). ndarray columns
    carry their dtype and ignore it."""

    predownload: int = -1
    """Samples of this rank's order to prepare ahead of reading: a background thread downloads (remote
    streams) and decompresses (compressed shards) the shards of the next ``predownload`` samples while
    training runs. -1 (default) or 0: off, a shard is prepared when its first sample is read.
    Does not change the data order or the fingerprint."""


@dataclass
class MosaicDataloader:
    """``[mosaic_dataloader]``: the Mosaic streaming (MDS) loader, used when ``training.dataset = "mds"``.
    Partitioned by torchtitan's data-parallel rank; its checkpoint state is global, so a resume with
    another DP degree continues the same sample order."""

    num_workers: int = 0
    """Loader worker processes per rank (0: read in the training process). Workers read whole
    micro-batches of the same global order, so losses and checkpoints do not depend on it. For
    ``training.dataset = "mds"`` these four keys replace torchtitan's ``[training.dataloader]``."""

    prefetch_factor: int = -1
    """Micro-batches each worker reads ahead (-1: torch's default, 2). Needs num_workers > 0."""

    pin_memory: bool = False
    """Pin batches in page-locked memory for faster copies to the GPU (no effect without CUDA)."""

    persistent_workers: bool = False
    """Accepted as in torch's DataLoader; the training loader is iterated once per launch, so its
    workers live for the whole launch either way. Needs num_workers > 0."""

    dataset: MosaicDataset = field(default_factory=MosaicDataset)
    """The data and its order: ``[mosaic_dataloader.dataset]``."""

    validation_streams: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Validation data, used when ``validation.dataset = "mds"``: one table per stream,
    ``[mosaic_dataloader.validation_streams.<name>]`` with ``local`` and optionally ``remote`` (as in
    ``dataset.streams``; no weights). Read once per validation run, every sample once in config and
    index order, unshuffled, cut by DP rank, with ``validation.seq_len`` (must match the conversion)
    and ``validation.local_batch_size``. TOML only."""

    def validate(self, job_config: Any) -> None:
        """The checks that need no data file, run with the config (``registry.validate_sections``):
        for ``training.dataset = "mds"`` the workers, streams, ``non_iid_streams`` and order settings;
        for an enabled ``validation.dataset = "mds"`` the ``validation_streams``. Nothing otherwise.
        The builders run them again, then check the data itself."""
        from .layouts import token_dtype
        from .streams import training_settings, validation_stream_specs  # reads no data file

        if job_config.training.dataset == "mds":
            training_settings(job_config)
            token_dtype(self.dataset.token_encoding_type)
        validation = getattr(job_config, "validation", None)
        if validation is not None and getattr(validation, "enable", False) and validation.dataset == "mds":
            validation_stream_specs(job_config)


@dataclass
class MosaicTokenizer:
    """``[mosaic_tokenizer]`` (the Mosaic seed's and llm-foundry's table): the run's tokenizer for
    ``training.dataset = "mds"``, loaded with ``transformers.AutoTokenizer`` from local files only
    (:mod:`titan_recipes.tokenizer.auto`). Unset: ``model.hf_assets_path`` with ``model.tokenizer_backend``.

    When ``name`` is set it is used whatever ``model.tokenizer_backend`` says: AutoTokenizer reads the
    directory's own format (tokenizer.json, or a SentencePiece tokenizer.model with its
    tokenizer_config.json), so the backend setting has nothing to choose."""

    name: str = ""
    """What llm-foundry users pass as ``tokenizer_name``: a HuggingFace hub name (e.g.
    ``meta-llama/Llama-3.2-1B``), resolved in the local HuggingFace cache only (``HF_HOME``/
    ``HF_HUB_CACHE``; download it on a login node with ``hf download NAME``), or a local directory that
    ``AutoTokenizer.from_pretrained`` loads. Replaces ``model.hf_assets_path`` for the tokenizer; never
    downloads. The MDS data's recorded tokenizer (conversion.json) must match it."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``AutoTokenizer.from_pretrained``, passed through as llm-foundry does
    (``model_max_length``, ``padding_side``, ``revision``, ...). ``model_max_length``, when given, must be
    >= training.seq_len; ``local_files_only`` can only be true. Needs ``name``."""

    def is_set(self) -> bool:
        return bool(self.name or self.kwargs)

    def validate(self, job_config: Any) -> None:
        """Set only for ``training.dataset = "mds"``, ``kwargs`` only with a ``name``, and
        ``model_max_length`` (when given) at least ``training.seq_len``."""
        if not self.is_set():
            return
        if job_config.training.dataset != "mds":
            raise ConfigError(
                f"[mosaic_tokenizer] is set but training.dataset = '{job_config.training.dataset}'; it configures the "
                f"tokenizer of the Mosaic (mds) loader. Remove it, or use model.hf_assets_path."
            )
        if not self.name:
            raise ConfigError(
                f"mosaic_tokenizer.kwargs = {self.kwargs} is set but mosaic_tokenizer.name is empty, so the kwargs "
                f"would be ignored. Set mosaic_tokenizer.name (a HuggingFace tokenizer name or a local directory), "
                f"or remove the kwargs to use model.hf_assets_path."
            )
        max_len = self.kwargs.get("model_max_length")
        if max_len is not None and (not isinstance(max_len, int) or max_len < job_config.training.seq_len):
            raise ConfigError(
                f"mosaic_tokenizer.kwargs.model_max_length = {max_len!r} is below training.seq_len = "
                f"{job_config.training.seq_len}; raise it or train on shorter samples."
            )
        if self.kwargs.get("local_files_only", True) is not True:
            raise ConfigError(
                f"mosaic_tokenizer.kwargs.local_files_only = {self.kwargs['local_files_only']!r}: tokenizers are "
                f"never downloaded during training. Remove the key, and download '{self.name}' on a login node "
                f"(`hf download {self.name}`) with the job's HF_HOME."
            )


def mosaic_tokenizer_path(job_config: Any) -> tuple[str, str] | None:
    """The MDS source's tokenizer override: ``([mosaic_tokenizer] name, "mosaic_tokenizer.name")`` (a
    hub name or a directory, as configured; :func:`build_mosaic_tokenizer` resolves and loads it), in
    place of ``model.hf_assets_path``. None when unset."""
    section = getattr(job_config, "mosaic_tokenizer", None)
    if section is None or not section.is_set():
        return None
    section.validate(job_config)
    return (section.name, "mosaic_tokenizer.name") if section.name else None


def build_mosaic_tokenizer(job_config: Any):
    """The MDS source's ``build_tokenizer``: ``AutoTokenizer.from_pretrained([mosaic_tokenizer] name,
    local_files_only=True, **kwargs)`` wrapped as a torchtitan tokenizer
    (:class:`~titan_recipes.tokenizer.auto.TransformersTokenizer`, whose ``source_dir`` is the resolved
    directory)."""
    from ...tokenizer.auto import build_auto_tokenizer

    section = job_config.mosaic_tokenizer
    section.validate(job_config)
    return build_auto_tokenizer(section.name, section.kwargs, "mosaic_tokenizer.name")
