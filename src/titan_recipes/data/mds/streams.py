"""The ``[mosaic_dataloader]`` stream tables, parsed and checked: :class:`StreamSpec` per stream.

``dataset.local`` or ``dataset.streams.<name>`` (:func:`stream_specs`), ``dataset.non_iid_streams``
(:func:`non_iid_rank_streams`), ``validation_streams`` (:func:`validation_stream_specs`), the order
settings (:func:`check_order_settings`) and the worker keys; :func:`training_settings` runs them all
for ``training.dataset = "mds"``. Nothing here reads data files, so
:meth:`~titan_recipes.data.mds.config.MosaicDataloader.validate` runs it when the config is checked,
and the builders run it again. streaming is imported only to check ``validate_hash`` and
``shuffle_algo`` against its own lists.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

from ...errors import ConfigError
from .compat import import_streaming

if TYPE_CHECKING:
    from ..workers import Workers

STREAM_KEYS = (
    "local", "remote", "split", "proportion", "repeat", "choose", "download_retry", "download_timeout",
    "validate_hash", "keep_zip",
)
"""streaming's ``Stream`` fields, accepted in ``[mosaic_dataloader.dataset.streams.<name>]``."""
NON_IID_KEYS = ("proportion", "repeat", "choose")
"""What a ``non_iid_streams`` entry may override; everything else is the base stream's."""
VALIDATION_KEYS = tuple(k for k in STREAM_KEYS if k not in NON_IID_KEYS)
"""``[mosaic_dataloader.validation_streams.<name>]`` keys: a stream without weights."""


@dataclass(frozen=True)
class StreamSpec:
    """One MDS stream as configured: a local directory (the cache, when ``remote`` is set) and at most
    one weight."""

    name: str
    local: str
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None
    setting: str = ""
    """The config key it came from, for error messages (e.g. ``mosaic_dataloader.dataset.local``)."""
    remote: str | None = None
    """Remote directory (``s3://bucket/prefix``) that ``local`` caches; None: ``local`` is the data."""
    download_retry: int | None = None
    """Download attempts per file (streaming's default 2; streaming names it retry but counts attempts)."""
    download_timeout: float | None = None
    """Seconds allowed per shard download (streaming's default 60)."""
    validate_hash: str | None = None
    """Hash algorithm (one of streaming's) checked on every shard: a downloaded or compressed one before
    it is decompressed, and every raw shard file on its first use in each process (local data too:
    integrity.check_mds_shard). None: downloads are checked with xxh64 when the index lists it for every
    shard; local shards get only the structural checks."""
    keep_zip: bool | None = None
    """Keep a remote stream's compressed shards in ``local`` after decompressing (default False)."""

    @property
    def remote_setting(self) -> str:
        return self.setting.removesuffix(".local") + ".remote"


def stream_specs(dataset) -> list[StreamSpec]:
    """StreamSpecs from ``[mosaic_dataloader.dataset]``: its ``streams`` table, or its ``local`` path."""
    prefix = "mosaic_dataloader.dataset"
    if bool(dataset.local) == bool(dataset.streams):
        raise ConfigError(
            f"Set exactly one of {prefix}.local (one MDS directory) and {prefix}.streams.<name> (a "
            f"mixture); got local = {dataset.local!r} and streams = {sorted(dataset.streams)}."
        )
    if dataset.local:
        return [StreamSpec(name="default", local=expand_local(dataset.local, f"{prefix}.local"), setting=f"{prefix}.local")]
    return [
        parse_stream(name, fields, f"{prefix}.streams.{name}", STREAM_KEYS) for name, fields in dataset.streams.items()
    ]


def non_iid_rank_streams(dataset, specs: Sequence[StreamSpec]) -> dict[int | str, list[StreamSpec]] | None:
    """``[mosaic_dataloader.dataset.non_iid_streams.<dp_rank_N | default>.<stream>]`` -> StreamSpecs per
    rank key (an int N, or ``"default"``); None when the table is empty (IID). Each entry names base
    streams and may override their weights; everything else is inherited from the base stream."""
    prefix = "mosaic_dataloader.dataset.non_iid_streams"
    if not dataset.non_iid_streams:
        return None
    if not dataset.streams:
        raise ConfigError(f"{prefix} needs mosaic_dataloader.dataset.streams.<name> to refer to.")
    base = {spec.name: spec for spec in specs}
    out: dict[int | str, list[StreamSpec]] = {}
    for rank_key, table in dataset.non_iid_streams.items():
        match = re.fullmatch(r"dp_rank_(\d+)", rank_key)
        if rank_key != "default" and not match:
            raise ConfigError(f"`{prefix}.{rank_key}`: keys are dp_rank_<N> or default, got '{rank_key}'.")
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"`{prefix}.{rank_key}` must be a non-empty table of stream names ({sorted(base)}).")
        rank_specs = []
        for name, fields in table.items():
            key = f"{prefix}.{rank_key}.{name}"
            if name not in base:
                raise ConfigError(f"`{key}`: no stream '{name}' in mosaic_dataloader.dataset.streams ({sorted(base)}).")
            if not isinstance(fields, dict):
                raise ConfigError(f"`{key}` must be a table of {list(NON_IID_KEYS)}, got {fields!r}.")
            unknown = sorted(set(fields) - set(NON_IID_KEYS))
            if unknown:
                raise ConfigError(
                    f"Unknown key(s) {unknown} in `{key}`; a rank may override only {list(NON_IID_KEYS)} "
                    f"(local/remote are the base stream's)."
                )
            for weight, value in fields.items():
                if isinstance(value, bool) or not isinstance(value, (int,) if weight == "choose" else (int, float)):
                    raise ConfigError(f"`{key}.{weight}` must be a number, got {type(value).__name__} {value!r}.")
            # An override of one weight replaces the base stream's weight (they are alternatives).
            weights = {w: getattr(base[name], w) for w in NON_IID_KEYS} if not fields else dict.fromkeys(NON_IID_KEYS)
            weights.update(fields)
            rank_specs.append(dataclasses.replace(base[name], setting=base[name].setting, **weights))
        out["default" if rank_key == "default" else int(match.group(1))] = rank_specs
    return out


def parse_stream(name: str, fields: Any, key: str, allowed: Sequence[str]) -> StreamSpec:
    """One ``[<key>]`` stream table -> StreamSpec, with errors naming ``key``."""
    if not isinstance(fields, dict):
        raise ConfigError(f"`{key}` must be a table of {list(allowed)}, got {fields!r}.")
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown key(s) {unknown} in `{key}`; valid keys: {list(allowed)}.")
    remote = fields.get("remote")
    if remote is not None and (not isinstance(remote, str) or "://" not in remote):
        raise ConfigError(f"`{key}.remote` must be a URL such as 's3://bucket/prefix', got {remote!r}.")
    local = fields.get("local")
    if not isinstance(local, str) or not local:
        raise ConfigError(
            f"`{key}.local` must be the path of an MDS directory (the download cache when "
            f"`{key}.remote` is set), got {local!r}."
        )
    local = expand_local(local, f"{key}.local")
    for weight, types_ in (("proportion", (int, float)), ("repeat", (int, float)), ("choose", (int,))):
        value = fields.get(weight)
        if value is not None and (isinstance(value, bool) or not isinstance(value, types_)):
            raise ConfigError(f"`{key}.{weight}` must be a number, got {type(value).__name__} {value!r}.")
    retry = fields.get("download_retry")
    if retry is not None and (isinstance(retry, bool) or not isinstance(retry, int) or retry < 1):
        # streaming 0.13 passes it to retry(num_attempts=...), which refuses 0.
        raise ConfigError(f"`{key}.download_retry` must be an integer >= 1 (streaming uses it as the number of "
                          f"download attempts), got {retry!r}.")
    for key_, types_, what in (("download_timeout", (int, float), "a number of seconds > 0"),
                               ("keep_zip", (bool,), "true or false"), ("split", (str,), "a subdirectory name")):
        value = fields.get(key_)
        if value is not None and (not isinstance(value, types_) or (isinstance(value, bool) and bool not in types_)):
            raise ConfigError(f"`{key}.{key_}` must be {what}, got {type(value).__name__} {value!r}.")
    validate_hash = fields.get("validate_hash")
    if validate_hash is not None:
        import_streaming()
        from streaming.base.hashing import get_hashes

        if validate_hash not in get_hashes():
            raise ConfigError(
                f"`{key}.validate_hash` = {validate_hash!r} is not one of streaming's hashes {sorted(get_hashes())}."
            )
    split = fields.get("split")
    if split:  # streaming reads <local>/<split> and <remote>/<split>; resolved here once
        local = os.path.join(local, split)
        remote = remote.rstrip("/") + "/" + split if remote else remote
    return StreamSpec(
        name=name, local=local, proportion=fields.get("proportion"), repeat=fields.get("repeat"),
        choose=fields.get("choose"), setting=f"{key}.local", remote=remote or None,
        download_retry=fields.get("download_retry"), download_timeout=fields.get("download_timeout"),
        validate_hash=validate_hash, keep_zip=fields.get("keep_zip"),
    )


_ENV_VAR = re.compile(r"\$(?:\{([^}]*)\}|(\w+))")


def expand_local(value: str, key: str) -> str:
    """``~`` and ``$VAR`` / ``${VAR}`` in a ``local`` path, expanded in the training process.

    On a cluster the download cache of a ``remote`` stream belongs on each node's own disk:
    ``local = "${SLURM_TMPDIR}/mds/train"`` (or ``$TMPDIR``, ``$LOCAL_SCRATCH``) gives every node its own
    copy, expanded where the trainer runs, while the TOML stays one file for the whole job. A variable that
    is not set is an error, not an empty string: ``"${SLURM_TMPDIR}/mds"`` must not become ``"/mds"``."""
    missing = sorted({braced or bare for braced, bare in _ENV_VAR.findall(value) if (braced or bare) not in os.environ})
    if missing:
        raise ConfigError(
            f"`{key}` = {value!r} names environment variable(s) {missing} that are not set in the training "
            f"process. Export them in the job (e.g. `export TMPDIR=/local/scratch`), or write the path out."
        )
    return os.path.expanduser(os.path.expandvars(value))


def validation_stream_specs(job_config: Any) -> list[StreamSpec]:
    """StreamSpecs from ``[mosaic_dataloader.validation_streams.<name>]``, for ``validation.dataset = "mds"``."""
    validation = job_config.validation
    prefix = "mosaic_dataloader.validation_streams"
    if validation.dataset != "mds":
        raise ConfigError(f"build_mds_validation_loader needs validation.dataset = 'mds', got '{validation.dataset}'.")
    streams = job_config.mosaic_dataloader.validation_streams
    if not streams:
        raise ConfigError(
            f"validation.dataset = 'mds' needs at least one [{prefix}.<name>] table with `local` (and "
            f"optionally `remote`)."
        )
    return [parse_stream(name, fields, f"{prefix}.{name}", VALIDATION_KEYS) for name, fields in streams.items()]


def check_order_settings(*, shuffle_seed: int, shuffle_algo: str, shuffle_block_size: int, predownload: int) -> None:
    """ConfigError for an order setting of ``[mosaic_dataloader.dataset]`` out of range (streaming's
    shuffle algorithms are checked against its own list)."""
    if predownload < -1:
        raise ConfigError(f"mosaic_dataloader.dataset.predownload must be -1 (off) or >= 0, got {predownload}.")
    if shuffle_seed < 0:
        raise ConfigError(f"mosaic_dataloader.dataset.shuffle_seed must be >= 0, got {shuffle_seed}.")
    if shuffle_block_size < 1:
        raise ConfigError(
            f"mosaic_dataloader.dataset.shuffle_block_size must be positive, got {shuffle_block_size}."
        )
    import_streaming()
    from streaming.base.shuffle import algos as shuffle_algos

    if shuffle_algo not in shuffle_algos:
        raise ConfigError(
            f"mosaic_dataloader.dataset.shuffle_algo = '{shuffle_algo}' is not one of streaming's "
            f"shuffle algorithms {sorted(shuffle_algos)}."
        )


class TrainingSettings(NamedTuple):
    """``[mosaic_dataloader]`` parsed for ``training.dataset = "mds"``."""

    workers: Workers
    specs: list[StreamSpec]
    rank_streams: dict[int | str, list[StreamSpec]] | None
    """Non-IID streams per DP rank key; None: IID."""


def training_settings(job_config: Any) -> TrainingSettings:
    """Every check of ``[mosaic_dataloader]`` for ``training.dataset = "mds"`` that needs no data file:
    the worker keys (and none in ``[training.dataloader]``), the streams, ``non_iid_streams`` and the
    order settings. Checks against the data (index files, shards, tokenizer) run when the loader is built."""
    from ..workers import Workers, training_workers

    cfg = job_config.mosaic_dataloader
    workers = Workers(
        num_workers=cfg.num_workers, prefetch_factor=None if cfg.prefetch_factor == -1 else cfg.prefetch_factor,
        pin_memory=cfg.pin_memory, persistent_workers=cfg.persistent_workers, setting="mosaic_dataloader",
    )
    if training_workers(job_config) != Workers():
        raise ConfigError(
            "training.dataset = 'mds' takes its worker settings from [mosaic_dataloader] (num_workers, "
            "prefetch_factor, pin_memory, persistent_workers), not [training.dataloader]; move them there."
        )
    specs = stream_specs(cfg.dataset)
    rank_streams = non_iid_rank_streams(cfg.dataset, specs)
    dataset = cfg.dataset
    check_order_settings(shuffle_seed=dataset.shuffle_seed, shuffle_algo=dataset.shuffle_algo,
                         shuffle_block_size=dataset.shuffle_block_size, predownload=dataset.predownload)
    return TrainingSettings(workers, specs, rank_streams)
