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
from torchtitan.protocols.train_spec import TrainSpec, get_train_spec, register_train_spec

from .cpu import force_sum_reduction_for_gloo
from .data import build_dataloader
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


def with_recipe_components(base: TrainSpec) -> TrainSpec:
    return dataclasses.replace(
        base,
        parallelize_fn=_gloo_safe(base.parallelize_fn),
        build_dataloader_fn=build_dataloader,
        build_tokenizer_fn=build_tokenizer,
        build_metrics_processor_fn=build_metrics_processor,
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
