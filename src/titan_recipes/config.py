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
    ``remote`` is not supported yet. Changing streams or weights changes the data fingerprint.
    TOML only: torchtitan's CLI parser (tyro) offers no ``--mosaic_dataloader.dataset.streams`` flag."""

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
    """Samples to prepare ahead of reading. Only -1 (off) is accepted until remote streams exist:
    local shards are read on demand; other values raise ConfigError."""


@dataclass
class MosaicDataloader:
    """``[mosaic_dataloader]``: the Mosaic streaming (MDS) loader, used when ``training.dataset = "mds"``.
    Partitioned by torchtitan's data-parallel rank; its checkpoint state is global, so a resume with
    another DP degree continues the same sample order."""

    num_workers: int = 0
    """Loader worker processes per rank. Only 0 (read in the training process) is supported yet;
    other values raise ConfigError."""

    dataset: MosaicDataset = field(default_factory=MosaicDataset)
    """The data and its order: ``[mosaic_dataloader.dataset]``."""


@dataclass
class JobConfig:
    """Sections titan-recipes adds to torchtitan's JobConfig."""

    text_data: TextData = field(default_factory=TextData)
    launch: Launch = field(default_factory=Launch)
    mosaic_dataloader: MosaicDataloader = field(default_factory=MosaicDataloader)


def validate_launch(config: Any) -> None:
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
