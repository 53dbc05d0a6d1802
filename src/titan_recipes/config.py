"""Our extension of torchtitan's JobConfig, loaded through ``[job] custom_config_module``.

Every recipe TOML sets::

    [job]
    custom_config_module = "titan_recipes.config"

so the TOML alone reproduces the run. torchtitan merges the dataclasses below into its own JobConfig
(``ConfigManager._merge_configs``); each section is a TOML table and a ``--section.key`` CLI flag.

torchtitan rejects unknown TOML keys itself (naming them), but it does not check value types: a TOML
``steps = "10"`` would flow into the Trainer as a string. :func:`validate_job_config` walks the parsed
config and raises :class:`ConfigError` naming ``section.key``, the expected type and the value.
"""


import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any

from typeguard import TypeCheckError, check_type


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the key and how to fix it."""


@dataclass
class TextData:
    """``[text_data]``: the packed plain-text loader (embedded datasets and local .txt/.jsonl files)."""

    shuffle: bool = True
    """Visit the fixed-length windows of each epoch in a seeded random order (False: file order)."""

    seed: int = 1234
    """Seed of the window order. Changing it changes data order, and the data fingerprint, so a
    checkpoint written with another seed refuses to resume."""

    document_separator: str = "\n\n"
    """How a plain-text file is split into documents (each gets BOS/EOS). Ignored for JSONL, where
    every line is one document with a ``text`` field."""


@dataclass
class Launch:
    """``[launch]``: what this launch does within a run; a run may span several launches."""

    stop_at_step: int = -1
    """Stop after this step, right after its regular checkpoint, even if ``training.steps`` is larger
    (-1: train to ``training.steps``). The LR schedule still follows ``training.steps``, so launching
    again in the same run directory continues the same run exactly. Must be a multiple of
    ``checkpoint.interval`` with checkpointing enabled, so that the stop point is always saved. For
    chunked Slurm jobs and for resume tests."""

    save_on_signal: bool = True
    """Stop cleanly when the process receives one of ``signals`` (Slurm preemption or ``scancel`` send
    SIGTERM, ``#SBATCH --signal=USR1@120`` sends SIGUSR1 before the time limit): the handler only sets
    a flag; at the next step boundary all ranks agree (an all-reduce MAX of one int per step over the
    default process group, so ranks signalled during different steps stop after the same step), save a
    full checkpoint at that step (model, optimizer, LR scheduler, data loader and step, even off
    ``checkpoint.interval`` and even with ``checkpoint.last_save_model_only``), write
    ``preempted.json`` into the run directory and exit with ``preempt_exit_code``. Launching again in
    the same run directory resumes from that checkpoint exactly. The check costs one 4-byte all-reduce
    and one host sync per step (microseconds on gloo and NCCL). The save must finish before the
    scheduler's SIGKILL (Slurm ``KillWait``, torchrun ``--shutdown-timeout``, both 30 s by default).
    False: the signals keep their default action and the process dies at once, losing the steps since
    the last regular checkpoint."""

    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signal names that trigger the save-and-exit of ``save_on_signal``. torchrun forwards SIGTERM,
    SIGINT, SIGHUP and SIGQUIT to its workers; it forwards SIGUSR1 only when started with
    ``--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1`` (or ``PET_SIGNALS_TO_HANDLE``), and
    otherwise dies of it (slurm/train.sbatch shows both). On the command line: ``--launch.signals
    SIGTERM,SIGUSR1``. Empty: no handler is installed."""

    preempt_exit_code: int = 143
    """Exit status of a training process that stopped for a signal (143 = 128 + SIGTERM, the shell's
    convention). torchrun reports 1 whatever its workers return once it was signalled itself, so job
    scripts that launch through torchrun look for ``preempted.json`` in the run directory instead
    (slurm/train.sbatch does)."""

    on_nonfinite: str = "stop"
    """What a non-finite (NaN or inf) loss or gradient norm does, checked on every rank after every step,
    before that step's checkpoint (titan_recipes.guard): ``"stop"`` raises at once with the step and the
    values, exits non-zero and records ``exit_reason = "diverged"`` in ``summary.json``; the step is not
    saved and earlier checkpoints stay, so a relaunch (after lowering ``optimizer.lr``, say) resumes from
    the last good one. ``"warn"`` logs a warning and trains on. In both modes a checkpoint whose weights
    are non-finite is never written. Costs one pass over the local gradients (as clipping does), one
    two-float all-reduce and one host sync per step."""


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
    use, hash-checked. streaming's other ``Stream`` fields: ``split`` (a subdirectory of local and
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


@dataclass
class MosaicTokenizer:
    """``[mosaic_tokenizer]`` (the Mosaic seed's table): the tokenizer of the MDS data, for
    ``training.dataset = "mds"``. Unset: ``model.hf_assets_path``."""

    name: str = ""
    """A local tokenizer, in the ``model.tokenizer_backend`` format (a directory with tokenizer.json, or
    a SentencePiece model). Replaces ``model.hf_assets_path`` for the tokenizer; nothing is downloaded
    from a hub. The MDS data's recorded tokenizer (conversion.json) must match it."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    """Tokenizer options. Only ``model_max_length`` is honoured (it must be >= training.seq_len); other
    keys are a ConfigError, since the MDS data is tokenized already."""


@dataclass
class BlendCorpus:
    """``[blendcorpus]``: the weighted Megatron-shard blend, used when ``training.dataset = "blendcorpus"``
    (titan_recipes/data/blend.py). Keys keep the BlendCorpus seed's names; each is honoured or rejected
    with ConfigError, never ignored."""

    data_file_list: str = ""
    """File list ("<weight> <path-prefix> <corpus>" per line, from scripts/blendcorpus.py file-list).
    "" means use ``training.dataset_path``; if both are set they must name the same file."""

    seq_length: int = 0
    """Tokens per sample. 0: use ``training.seq_len``; any other value must equal it (ConfigError
    otherwise: the loader cannot serve a different length than the model trains on)."""

    micro_batch_size: int = 0
    """Samples per rank per step. 0: use ``training.local_batch_size``; any other value must equal it."""

    num_workers: int = 0
    """Loader worker processes per rank (0: the value of ``training.dataloader.num_workers``). The
    other worker settings (prefetch_factor, pin_memory) come from ``[training.dataloader]``."""

    split: str = "98,1,1"
    """Train/valid/test shares of each shard's documents (contiguous ranges, Megatron's rounding). The
    training loader reads the train part. Part of the data fingerprint."""

    dataloader_type: str = "single"
    """Megatron's sampler: only "single" (sequential over the global blend order) is supported."""

    shuffle_sample_in_corpus: bool = True
    """Visit each shard's samples and each corpus's draws in a seeded permutation (False: in order)."""

    blend_sample_in_corpus: bool = True
    """Interleave a corpus's shards by weight (greedy); False reads them one after the other in
    file-list order, with the same per-shard counts."""

    append_eod: bool = False
    """Append ``eod_token_id`` after every document when packing samples. Leave False for shards from
    scripts/blendcorpus.py tokenize, which already end each document with EOD. True needs
    ``eod_token_id >= 0``."""

    provide_attention_mask: bool = False
    """Only False is supported: torchtitan passes extra input keys to the model forward (llama3
    rejects them); use the model's document-masked attention."""

    eod_token_id: int = -1
    """Token id appended when ``append_eod`` is True (-1: none)."""

    data_cache_path: str = ""
    """Directory of the blend index caches (``<hash>-blend.npy`` + ``<hash>-description.json``).
    "": ``blendcorpus_cache/`` beside the file list."""

    seed: int = 1234
    """Seed of the in-corpus shuffles. Changing it changes the data order and the fingerprint."""

    validation_split: str = "valid"
    """Which held-out part ``validation.dataset = "blendcorpus"`` reads: "valid" (the second share of
    ``split``) or "test" (the third). Same file list and blend settings as training; the split must
    hold at least one global validation batch (DataError otherwise)."""


@dataclass
class Ado:
    """``[mixture.ado]``: Adaptive Data Optimization (Jiang et al. 2024, arXiv 2410.11820), as in Mixtera's
    ``AdoDynamicMixing``. Each step the trainer reduces the per-domain loss sums and token counts over
    the DP ranks; ADO fits a power law ``L_k(n) = eps_k + beta_k * n**-alpha_k`` per domain and moves
    the weights toward the domains whose loss still falls fastest. ``mixture.weights`` is the prior
    (the first weights). See titan_recipes/data/mixture/ado.py for the update and its differences to
    the paper."""

    enable: bool = False
    """Adapt the weights during training (needs ``mixture.weights``, not ``schedule``, and
    ``mixture.per_domain_loss = true``)."""

    warmup_steps: int = 500
    """Steps whose losses are not used for fitting (Mixtera: ``ignore_initial_steps``); the prior
    holds until ``warmup_steps + fit_interval`` steps have passed."""

    fit_interval: int = 1000
    """Steps between two power-law fits (Mixtera: ``scaling_law_update_interval``). Between fits the
    weights still change every step through the smoothing below."""

    subsample: int = 10
    """Use every n-th point of a domain's loss curve for the fit (Mixtera: ``subsampling_interval``)."""

    smoothing_window: int = 101
    """Savitzky-Golay window (cubic) applied to each domain's loss curve before fitting; odd, shortened
    to the data available; 0 or 1 disables it (Mixtera: ``savgol``, window 101)."""

    gamma1: float = 0.1
    """Smoothing of the credit-assignment score ``h(t) = gamma1 * pi(t) + (1 - gamma1) * h(t-1)``."""

    gamma2: float = 0.1
    """Smoothing of the policy ``pi(t) = gamma2 * rho(t) + (1 - gamma2) * pi_bar(t-1)``."""

    s: float = 0.5
    """Exponent of the credit-assignment score in ``rho_k ~ mu_k * h_k**s * (-dL_k/dn)``."""

    min_weight: float = 0.01
    """Every domain keeps at least this weight (Mixtera: ``delta_min``); needs ``min_weight * domains <= 1``."""

    count_normalizer: int = 1024
    """Token counts are divided by this before fitting (the paper's bounds assume samples of 1024
    tokens; Mixtera's ``count_normalizer``)."""


@dataclass
class Mixture:
    """``[mixture]``: the Mixtera-style mixture engine (titan_recipes/data/mixture), used when
    ``training.dataset = "mixture"``. Samples come from a registered DuckDB sample index, in chunks
    whose per-domain counts follow the weights. Each key is honoured or rejected with ConfigError."""

    index_dir: str = ""
    """Directory holding ``index.duckdb`` (written by ``MixteraIndex.register_dataset``). Required;
    opened read-only."""

    property: str = ""
    """The property whose values are the domains, e.g. ``"redpajama_set_name"``. Required."""

    weights: dict[str, float] = field(default_factory=dict)
    """Static mixture: ``{domain value: weight}``, positive, summing to 1. Set this or ``schedule``.
    TOML only: ``[mixture.weights]`` with ``RedPajamaC4 = 0.6`` ... (quote values with odd characters)."""

    schedule: dict[str, dict[str, float]] = field(default_factory=dict)
    """Scheduled mixture: ``[mixture.schedule.<start_step>]`` tables of weights, e.g. ``[mixture.schedule.0]``
    and ``[mixture.schedule.1000]``; the first must start at step 0. Steps are counted in chunks
    planned: chunk ``k`` belongs to step ``k * chunk_size // (local_batch_size * dp degree)`` (one
    document per row; the loader packs documents, so this is the document position, not exactly the
    optimizer step). Set this or ``weights``. TOML only."""

    query: list[list[list[Any]]] = field(default_factory=list)
    """Which samples take part: a list of groups (OR), each a list of ``[property, op, value]`` clauses
    (AND), ops ``== != < > <= >= in`` (``in`` takes a list). Empty: all samples. Example:
    ``query = [[["quality", ">=", 0.5]], [["redpajama_set_name", "==", "RedPajamaBook"]]]``. TOML only."""

    chunk_size: int = 1024
    """Documents per chunk; each chunk follows the weights exactly (largest remainder) and is split
    among the DP ranks. Must be at least the DP degree. Part of the data fingerprint."""

    seed: int = 1234
    """Seed of the per-domain permutations and chunk shuffles. Part of the data fingerprint."""

    server: str = ""
    """Served mode: ``"host:port"`` of a ``titan-recipes mixture serve INDEX_DIR`` process that serves
    the index (queries and sample texts) over TCP; ``index_dir`` is then only used in messages. Empty:
    embedded mode (the index is opened in this process). Both give the same batches and checkpoints."""

    per_domain_loss: bool = True
    """Report each domain's mean loss and token count every logged step (metrics ``loss_domain/<d>``,
    ``tokens_domain/<d>``, ``mixture_weight/<d>``); ADO needs it. The training loss is then computed
    per token (cross-entropy with ``reduction="none"``, summed), which can differ from torchtitan's
    summed loss in the last float bits. Not available with pipeline or context parallelism, or with
    loss parallelism (set ``parallelism.disable_loss_parallel = true`` under tensor parallelism)."""

    ado: Ado = field(default_factory=Ado)


@dataclass
class Monitor:
    """``[monitor]``: the optimizer and activation monitors (titan_recipes/monitor.py). The keys keep the
    names of the FL seed fork, where they were top-level JobConfig fields; torchtitan 0.2.2 reads TOML
    tables only, so they live in this one table (``[monitor] optimizer_monitor_interval = 10``,
    ``--monitor.optimizer_monitor_interval 10``). Monitored steps are those with ``step % interval == 0``
    (steps count from 1); other steps cost one Python call per hook. Metrics go to torchtitan's metric
    logger (TensorBoard, W&B, ``metrics.jsonl``) from rank 0, and a one-line summary to the console."""

    optimizer_monitor_interval: int = 0
    """Every this many steps, log gradient, parameter and update norms and the optimizer state's
    statistics (``optim/...``), computed over the full tensors (FSDP shards are reduced). 0 (default):
    off, no hook is registered. The seed's default was 10; here monitoring is opt-in."""

    optimizer_monitor_only_global: bool = True
    """Log only the whole-model values (``optim/<metric>/global``). False adds one value per parameter
    (``optim/grad_norm/layers.0.attention.wq.weight``): about 10 metrics per parameter tensor."""

    optimizer_monitor_log_metrics: bool = True
    """Log parameter norms, update norms and ratios and the optimizer moments as well. False: gradient
    norms only (no parameter snapshot is taken, so a monitored step needs no extra memory)."""

    activation_monitor_enabled: bool = False
    """Collect statistics of module inputs and outputs (``act/<module>/<input|output>/<stat>``: L2 norm,
    max, min, mean, variance, skew, excess kurtosis) during the forward passes of monitored steps."""

    activation_monitor_interval: int = 25
    """Every this many steps when ``activation_monitor_enabled``; must then be >= 1."""

    activation_monitor_ignore_module_types: list[str] = field(default_factory=list)
    """Skip modules whose class matches one of these substrings, compared with the qualified class
    names of the module's type and its bases (``"Dropout"``, ``"RMSNorm"``,
    ``"torch.nn.modules.linear"``), as the key's name says (the seed's help text spoke of module
    names). An entry that matches no module of the model is a ConfigError (a typo would otherwise
    monitor everything). Command line: ``--monitor.activation_monitor_ignore_module_types RMSNorm,Embedding``."""


@dataclass
class Model:
    """Keys titan-recipes adds to torchtitan's ``[model]`` table (merged with torchtitan's fields)."""

    tokenizer_backend: str = "sptoken"
    """Which tokenizer ``model.hf_assets_path`` holds: ``sptoken``/``sentencepiece``/``sp``/``spm`` (the
    default, as in the BlendCorpus seed: a SentencePiece ``.model`` file or a directory with
    ``tokenizer.model``) or ``hf``/``huggingface`` (a directory with ``tokenizer.json``, torchtitan's
    format). ``tiktoken`` and unknown names are errors that list the valid values."""


@dataclass
class JobConfig:
    """Sections titan-recipes adds to torchtitan's JobConfig."""

    model: Model = field(default_factory=Model)

    text_data: TextData = field(default_factory=TextData)
    launch: Launch = field(default_factory=Launch)
    mosaic_dataloader: MosaicDataloader = field(default_factory=MosaicDataloader)
    mosaic_tokenizer: MosaicTokenizer = field(default_factory=MosaicTokenizer)
    blendcorpus: BlendCorpus = field(default_factory=BlendCorpus)
    mixture: Mixture = field(default_factory=Mixture)
    monitor: Monitor = field(default_factory=Monitor)


def validate_launch(config: Any) -> None:
    _validate_signals(config.launch)
    if config.launch.on_nonfinite not in ("stop", "warn"):
        raise ConfigError(
            f'launch.on_nonfinite must be "stop" or "warn", got {config.launch.on_nonfinite!r}. Fix it in the '
            f"[launch] table of the TOML file or with --launch.on_nonfinite."
        )
    stop = config.launch.stop_at_step
    if stop == -1:
        return
    if stop <= 0:
        raise ConfigError(f"launch.stop_at_step must be -1 (off) or a positive step, got {stop}.")
    if not config.checkpoint.enable or stop % config.checkpoint.interval:
        raise ConfigError(
            f"launch.stop_at_step = {stop} needs checkpoint.enable = true and a multiple of "
            f"checkpoint.interval (= {config.checkpoint.interval}, enable = {config.checkpoint.enable}); "
            f"otherwise the launch would stop without saving its last steps."
        )


def validate_monitor(config: Any) -> None:
    """Checks of ``[monitor]`` that need no model (titan_recipes.monitor checks the ignore list against
    the model's modules)."""
    mon = config.monitor
    for key in ("optimizer_monitor_interval", "activation_monitor_interval"):
        if getattr(mon, key) < 0:
            raise ConfigError(f"monitor.{key} must be >= 0 (0: off), got {getattr(mon, key)}.")
    if mon.activation_monitor_enabled and mon.activation_monitor_interval == 0:
        raise ConfigError(
            "monitor.activation_monitor_enabled = true with monitor.activation_monitor_interval = 0 would "
            "collect nothing; set the interval to a step count >= 1 or disable the monitor."
        )
    bad = [t for t in mon.activation_monitor_ignore_module_types if not t.strip()]
    if bad:
        raise ConfigError(
            f"monitor.activation_monitor_ignore_module_types has empty entries "
            f"({mon.activation_monitor_ignore_module_types}); an empty substring would match every module."
        )
    enabled = mon.optimizer_monitor_interval > 0 or mon.activation_monitor_enabled
    if enabled and config.parallelism.pipeline_parallel_degree > 1:
        raise ConfigError(
            f"[monitor] does not support pipeline parallelism yet (parallelism.pipeline_parallel_degree = "
            f"{config.parallelism.pipeline_parallel_degree}): its global values would cover one stage only. "
            f"Set monitor.optimizer_monitor_interval = 0 and monitor.activation_monitor_enabled = false."
        )
    if mon.optimizer_monitor_interval > 0 and config.optimizer.early_step_in_backward:
        raise ConfigError(
            "monitor.optimizer_monitor_interval > 0 needs optimizer.early_step_in_backward = false: with "
            "the optimizer stepping inside backward there is no optimizer step to observe."
        )


def _validate_signals(launch: Any) -> None:
    import signal

    for name in launch.signals:
        sig = getattr(signal, name, None) if name.startswith("SIG") else None
        if not isinstance(sig, signal.Signals) or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(
                f"launch.signals: {name!r} is not a signal a process can catch; use names such as "
                f"\"SIGTERM\" and \"SIGUSR1\" (got {launch.signals})."
            )
    if not 1 <= launch.preempt_exit_code <= 255:
        raise ConfigError(
            f"launch.preempt_exit_code must be in 1..255 (an exit status), got {launch.preempt_exit_code}."
        )


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a merged dataclass can mix modules; fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def validate_job_config(config: Any, prefix: str = "") -> None:
    """Raise ConfigError for the first value whose type does not match its field annotation."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate_job_config(value, prefix=f"{key}.")
            continue
        annotation = hints.get(f.name, f.type)
        if isinstance(annotation, str):
            continue
        # TOML has no int/float distinction for whole numbers written as "1.0" vs "1"; accept ints
        # where floats are expected, as Python does.
        if annotation is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        try:
            if isinstance(value, bool) and annotation in (int, float):
                raise TypeCheckError("bool is not a number here")
            check_type(value, annotation)
        except TypeCheckError:
            raise ConfigError(
                f"Config key `{key}` has the wrong type: expected {_type_name(annotation)}, got "
                f"{type(value).__name__} {value!r}. Fix it in the [{key.rsplit('.', 1)[0]}] table of the "
                f"TOML file or override it with --{key}."
            ) from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


# -- values: ranges and relations torchtitan 0.2.2 does not check (or checks with a bare assert) -------


def validate_values(config: Any) -> None:
    """Raise ConfigError for a value of a torchtitan key that is out of range (the types are checked by
    :func:`validate_job_config` first). torchtitan 0.2.2 accepts these and then fails obscurely or
    trains nonsense: ``training.steps = 0`` exits 0 without a step, ``training.seq_len = 0`` and
    ``checkpoint.interval = 0`` raise a bare ZeroDivisionError, a negative ``training.max_norm`` flips
    the gradients' sign, a negative ``lr_scheduler.warmup_steps`` stretches the decay silently.
    Checks that depend on the world size use ``WORLD_SIZE`` (skipped when unset)."""
    t = config.training
    _at_least(config, "training.steps", 1, "the number of optimizer steps to train")
    _at_least(config, "training.seq_len", 1, "tokens per sample")
    _at_least(config, "training.local_batch_size", 1, "samples per rank per micro-batch")
    _at_least(config, "training.gc_freq", 1, "steps between Python garbage collections")
    _at_least(config, "metrics.log_freq", 1, "steps between two logged steps")
    _at_least(config, "checkpoint.interval", 1, "steps between two checkpoints")
    _at_least(config, "checkpoint.keep_latest_k", 0, "checkpoints kept; 0 keeps all")
    _at_least(config, "checkpoint.load_step", -1, "the step to load; -1 loads the latest")
    _at_least(config, "lr_scheduler.warmup_steps", 0, "steps of linear warmup; 0 for none")
    if config.lr_scheduler.total_steps is not None:
        _at_least(config, "lr_scheduler.total_steps", 1, "the schedule's length; unset follows training.steps")
    _finite_range(config, "optimizer.lr", 0.0, None, "the peak learning rate")
    _finite_range(config, "optimizer.eps", 0.0, None, "AdamW's epsilon")
    _finite_range(config, "optimizer.weight_decay", 0.0, None, "decoupled weight decay; 0 for none")
    _finite_range(config, "lr_scheduler.min_lr_factor", 0.0, 1.0, "the final LR as a fraction of optimizer.lr")
    if config.lr_scheduler.decay_ratio is not None:
        _finite_range(config, "lr_scheduler.decay_ratio", 0.0, 1.0,
                      "the share of the schedule spent decaying; unset decays after warmup")
    if math.isnan(t.max_norm) or t.max_norm <= 0:
        raise ConfigError(
            f"training.max_norm must be > 0 (the gradient norm to clip to; inf for no clipping), got "
            f"{t.max_norm}: clipping to 0 zeroes every gradient and a negative value flips their sign, so "
            f"the run would train nothing or ascend the loss. Fix it in [training] or with --training.max_norm."
        )
    _validate_batch(config)
    if config.validation.enable:
        _at_least(config, "validation.freq", 1, "steps between validations")
        _at_least(config, "validation.local_batch_size", 1, "validation samples per rank")
        _at_least(config, "validation.seq_len", 1, "tokens per validation sample")
        # validation.steps: torchtitan's Validation.__post_init__ rejects 0 and < -1 while parsing.
    if config.profiling.enable_profiling:
        _at_least(config, "profiling.profile_freq", 1, "steps between profiles")


def _get(config: Any, key: str) -> Any:
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _at_least(config: Any, key: str, low: int, meaning: str) -> None:
    value = _get(config, key)
    if value < low:
        raise ConfigError(
            f"{key} must be >= {low} ({meaning}), got {value}. Fix it in the [{key.rsplit('.', 1)[0]}] "
            f"table of the TOML file or with --{key}."
        )


def _finite_range(config: Any, key: str, low: float, high: float | None, meaning: str) -> None:
    value = _get(config, key)
    if math.isfinite(value) and low <= value and (high is None or value <= high):
        return
    allowed = f"a finite number >= {low}" if high is None else f"between {low} and {high}"
    raise ConfigError(
        f"{key} must be {allowed} ({meaning}), got {value}. Fix it in the [{key.rsplit('.', 1)[0]}] table "
        f"of the TOML file or with --{key}."
    )


def _validate_batch(config: Any) -> None:
    """torchtitan derives the gradient accumulation steps as global // (local x DP degree) and checks
    the division with bare asserts (gone under ``python -O``)."""
    p, t = config.parallelism, config.training
    degrees = {
        "data_parallel_replicate_degree": p.data_parallel_replicate_degree,
        "tensor_parallel_degree": p.tensor_parallel_degree,
        "pipeline_parallel_degree": p.pipeline_parallel_degree,
        "context_parallel_degree": p.context_parallel_degree,
        "expert_parallel_degree": p.expert_parallel_degree,
        "expert_tensor_parallel_degree": p.expert_tensor_parallel_degree,
    }
    for name, degree in degrees.items():
        if degree < 1:
            raise ConfigError(f"parallelism.{name} must be >= 1, got {degree}. Fix it with --parallelism.{name}.")
    shard = p.data_parallel_shard_degree
    if shard == 0 or shard < -1:
        raise ConfigError(
            f"parallelism.data_parallel_shard_degree must be -1 (all processes left after the other "
            f"degrees) or >= 1, got {shard}."
        )
    if t.global_batch_size == 0 or t.global_batch_size < -1:
        raise ConfigError(
            f"training.global_batch_size must be -1 (local_batch_size x data-parallel degree, no gradient "
            f"accumulation) or >= 1 samples, got {t.global_batch_size}."
        )
    world = os.environ.get("WORLD_SIZE")
    if not world or not world.isdigit():
        return
    world_size = int(world)
    others = p.data_parallel_replicate_degree * p.tensor_parallel_degree * p.pipeline_parallel_degree
    others *= p.context_parallel_degree
    if shard == -1:
        shard = world_size // others
    if shard < 1 or others * shard != world_size:
        raise ConfigError(
            f"The parallelism degrees do not multiply to the {world_size} processes of this job: "
            f"data_parallel_replicate_degree ({p.data_parallel_replicate_degree}) x data_parallel_shard_degree "
            f"({p.data_parallel_shard_degree}) x context_parallel_degree ({p.context_parallel_degree}) x "
            f"tensor_parallel_degree ({p.tensor_parallel_degree}) x pipeline_parallel_degree "
            f"({p.pipeline_parallel_degree}) must equal WORLD_SIZE ({world_size}). Change a degree or the "
            f"process count (NGPU)."
        )
    per_step = t.local_batch_size * p.data_parallel_replicate_degree * shard
    if t.global_batch_size > 0 and t.global_batch_size % per_step:
        raise ConfigError(
            f"training.global_batch_size ({t.global_batch_size}) must be a multiple of training.local_batch_size "
            f"({t.local_batch_size}) x the data-parallel degree ({per_step // t.local_batch_size} with "
            f"{world_size} processes) = {per_step}: it is reached by gradient accumulation over whole "
            f"micro-batches. Use a multiple of {per_step}, or -1 for no accumulation."
        )


# -- the TOML file: torchtitan reads it before our Trainer exists ---------------------------------------


_TOML_FLAGS = ("--job.config_file", "--job.config-file")


def config_file_from_args(args: list[str]) -> str | None:
    """The ``--job.config_file`` value in ``args``, found as torchtitan's ConfigManager finds it."""
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if eq and key in _TOML_FLAGS:
            return value
        if arg in _TOML_FLAGS and i + 1 < len(args):
            return args[i + 1]
    return None


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The tables of a TOML config file, or ConfigError naming the file, the line and what is wrong.

    torchtitan's ConfigManager logs a traceback and re-raises ``tomllib.TOMLDecodeError``, whose
    message ("Expected '=' after a key in a key/value pair (at line 3, column 8)") names no file."""
    import tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            f"Job config file not found: '{path}' (relative paths resolve from {os.getcwd()}); check "
            f"--job.config_file or CONFIG_FILE."
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"Job config file '{path}' is a directory; --job.config_file needs a .toml file.") from None
    except tomllib.TOMLDecodeError as e:
        where, text = "", ""
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        if m:
            lineno = int(m.group(1))
            where = f":{lineno}:{m.group(2)}"
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            if 0 < lineno <= len(lines):
                text = f"\n  line {lineno}: {lines[lineno - 1].rstrip()}"
        reason = re.sub(r"\s*\(at line \d+, column \d+\)|\s*\(at end of document\)", "", str(e))
        raise ConfigError(
            f"TOML syntax error in job config file {path}{where}: {reason}.{text}\nFix the file; "
            f"the TOML format is described at https://toml.io (strings need quotes, tables are [section])."
        ) from None


def check_config_file(args: list[str]) -> None:
    """Parse the ``--job.config_file`` named in ``args`` (if any) and raise ConfigError for a missing file
    or a TOML syntax error; train.main() calls it before torchtitan's ConfigManager reads the file."""
    path = config_file_from_args(args)
    if path is not None:
        load_toml(path)
