"""Our TrainSpecs: torchtitan's own specs with the titan-recipes builders swapped in.

:func:`with_recipe_components` is model-agnostic: it takes any registered TrainSpec and returns a copy
whose tokenizer, dataloader and metrics builders are ours and whose ``parallelize_fn`` also works over
gloo (the seed's ``get_mosaic_train_spec`` idea). A recipe selects it by config alone:
``model.name = "recipes.<base>"`` where ``<base>`` is any TrainSpec torchtitan can find (its models
``llama3``, ``qwen3``, ``deepseek_v3``, ..., its experiments, or one a user registered with
``register_train_spec``); :func:`register_recipe_spec` builds and registers it on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch.distributed as dist
from torchtitan.components.validate import BaseValidator, Validator
from torchtitan.protocols.train_spec import TrainSpec, get_train_spec, register_train_spec

from .cpu import force_sum_reduction_for_gloo
from .data import build_dataloader
from .data.blend import build_blendcorpus_validation_loader
from .data.mds import build_mds_validation_loader
from .records import build_metrics_processor
from .tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

PREFIX = "recipes."
BASE_MODELS = ("llama3",)


def _gloo_safe(parallelize_fn):
    @functools.wraps(parallelize_fn)
    def parallelize(model, parallel_dims, job_config):
        model = parallelize_fn(model, parallel_dims, job_config)
        if dist.is_initialized() and dist.get_backend() == "gloo":
            switched = force_sum_reduction_for_gloo(model)
            if switched:
                logger.info("gloo backend: %d FSDP modules reduce gradients with SUM (see titan_recipes.cpu)", switched)
        return model

    return parallelize


VALIDATION_LOADERS = {"mds": build_mds_validation_loader, "blendcorpus": build_blendcorpus_validation_loader}
"""``validation.dataset`` names served by our loaders; any other name goes to torchtitan's HF path."""


class RecipeValidator(Validator):
    """torchtitan's Validator, with the validation loader taken from :data:`VALIDATION_LOADERS`.

    ``Validator.__init__`` always builds torchtitan's HF validation loader, so for our datasets the
    attributes it sets are set here instead (the validate() loop itself is torchtitan's). The loaders
    restart at sample 0 on every ``iter()``, which is how validate() uses them.
    """

    _FORWARDED = (
        "parallel_dims", "loss_fn", "validation_context", "maybe_enable_amp", "metrics_processor",
        "pp_schedule", "pp_has_first_stage", "pp_has_last_stage",
    )

    def __init__(self, job_config, dp_world_size: int, dp_rank: int, tokenizer, **kwargs):
        builder = VALIDATION_LOADERS.get(job_config.validation.dataset)
        if builder is None:
            super().__init__(job_config=job_config, dp_world_size=dp_world_size, dp_rank=dp_rank, tokenizer=tokenizer, **kwargs)
            return
        BaseValidator.__init__(self, job_config)
        self.tokenizer = tokenizer
        for name in self._FORWARDED:
            setattr(self, name, kwargs.get(name))
        self.validation_dataloader = builder(dp_world_size, dp_rank, tokenizer, job_config)


def build_validator(**kwargs) -> RecipeValidator:
    if kwargs.get("metrics_processor") is None:
        raise ValueError("the validator needs the trainer's metrics_processor")
    return RecipeValidator(**kwargs)


def with_recipe_components(base: TrainSpec) -> TrainSpec:
    return dataclasses.replace(
        base,
        parallelize_fn=_gloo_safe(base.parallelize_fn),
        build_dataloader_fn=build_dataloader,
        build_tokenizer_fn=build_tokenizer,
        build_metrics_processor_fn=build_metrics_processor,
        build_validator_fn=build_validator,
    )


def register_recipe_spec(name: str) -> str:
    """Register ``recipes.<base>`` = :func:`with_recipe_components` of TrainSpec ``<base>``; idempotent.
    Names without the ``recipes.`` prefix are left alone (torchtitan's own specs). Returns ``name``."""
    from torchtitan.protocols import train_spec as registry

    from .config import ConfigError

    if not name.startswith(PREFIX) or name in registry._extra_train_specs:  # duplicates are rejected
        return name
    base = name[len(PREFIX):]
    try:
        spec = get_train_spec(base)
    except (ValueError, ModuleNotFoundError) as e:
        raise ConfigError(
            f"model.name = '{name}': '{base}' is not a TrainSpec torchtitan knows ({e}). Use recipes.<base> "
            f"with a torchtitan model (e.g. recipes.llama3, recipes.qwen3) or a spec registered with "
            f"torchtitan.protocols.train_spec.register_train_spec."
        ) from None
    register_train_spec(name, with_recipe_components(spec))
    return name


def register_recipe_specs(names: tuple[str, ...] = BASE_MODELS) -> list[str]:
    """Register ``recipes.<model>`` for each base model name; idempotent. Returns the names."""
    return [register_recipe_spec(PREFIX + model) for model in names]
