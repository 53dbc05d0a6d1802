"""Our TrainSpecs: torchtitan's own specs with the titan-recipes builders swapped in.

:func:`with_recipe_components` is model-agnostic: it takes any registered TrainSpec and returns a copy
whose tokenizer, dataloader and metrics builders are ours and whose ``parallelize_fn`` also works over
gloo. :func:`register_recipe_specs` registers ``recipes.<name>`` for each model in :data:`BASE_MODELS`;
a recipe selects one with ``model.name = "recipes.llama3"``.
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


VALIDATION_LOADERS = {"mds": build_mds_validation_loader}
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


def register_recipe_specs() -> list[str]:
    """Register ``recipes.<model>`` specs; idempotent. Returns the registered names."""
    from torchtitan.protocols import train_spec as registry

    names = []
    for model in BASE_MODELS:
        name = PREFIX + model
        if name not in registry._extra_train_specs:  # register_train_spec rejects duplicates
            register_train_spec(name, with_recipe_components(get_train_spec(model)))
        names.append(name)
    return names
