"""Ranges and relations of torchtitan's own keys that torchtitan 0.2.2 does not check (or checks with a
bare assert)."""

from __future__ import annotations

import math
import os
from typing import Any

from ..errors import ConfigError


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
