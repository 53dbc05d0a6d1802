"""Our TrainSpecs: torchtitan's own specs with the titan-recipes builders swapped in.

:func:`with_recipe_components` is model-agnostic: it takes any registered TrainSpec and returns a copy
whose tokenizer, dataloader and metrics builders are ours and whose ``parallelize_fn`` also works over
gloo (the seed's ``get_mosaic_train_spec`` idea). A recipe selects it by config alone:
``model.name = "recipes.<base>"`` where ``<base>`` is any TrainSpec torchtitan can find (its models
``llama3``, ``qwen3``, ``deepseek_v3``, ..., its experiments, or one a user registered with
``register_train_spec``); :func:`register_recipe_spec` builds and registers it on first use.

Model flavors torchtitan does not ship (Llama-3.2-1B: torchtitan 0.2.2's llama3 has debugmodel, 8B,
70B, 405B) live in :data:`EXTRA_FLAVORS` and are added to the ``recipes.<base>`` spec's flavor table
only, so torchtitan's own dicts stay untouched: ``model.name = "recipes.llama3"``, ``model.flavor =
"1B"``. An unknown flavor is a ConfigError listing the flavors the spec has (:class:`FlavorTable`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch.distributed as dist
from torchtitan.components.validate import BaseValidator, Validator
from torchtitan.models.llama3.model.args import RoPEScalingArgs, TransformerModelArgs
from torchtitan.protocols.model import BaseModelArgs
from torchtitan.protocols.train_spec import TrainSpec, get_train_spec, register_train_spec

from .cpu import force_sum_reduction_for_gloo
from .data.registry import build_dataloader, validation_builder
from .errors import ConfigError
from .records import build_metrics_processor
from .tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

PREFIX = "recipes."
BASE_MODELS = ("llama3",)

EXTRA_FLAVORS: dict[str, dict[str, BaseModelArgs]] = {
    "llama3": {
        # Llama-3.2-1B (meta-llama/Llama-3.2-1B config.json): 1,498,482,688 parameters with torchtitan's
        # untied output layer (HF ties it to the embedding: 1.24B). FFN hidden 8192 = 256-multiple of
        # 1.5 * 2/3 * 4 * 2048. Llama 3.2 scales RoPE by 32 (torchtitan's default RoPEScalingArgs has 8,
        # the Llama 3.1 value); the other scaling fields are Llama 3's.
        "1B": TransformerModelArgs(
            dim=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            vocab_size=128256,
            ffn_dim_multiplier=1.5,
            multiple_of=256,
            rope_theta=500000,
            rope_scaling_args=RoPEScalingArgs(
                scaling_factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
            ),
        ),
    },
}
"""Extra ``model.flavor`` entries per base TrainSpec name, merged into ``recipes.<base>`` only."""


class FlavorTable(dict):
    """A TrainSpec's ``model_args``: torchtitan's flavors plus :data:`EXTRA_FLAVORS`. The Trainer looks a
    flavor up with ``model_args[flavor]``; a missing one raises a ConfigError naming the choices
    instead of a bare KeyError."""

    def __init__(self, spec_name: str, flavors):
        super().__init__(flavors)
        self.spec_name = spec_name

    def __missing__(self, flavor):
        raise ConfigError(
            f"model.flavor = '{flavor}' is not a flavor of model.name = '{self.spec_name}'. "
            f"Available flavors: {sorted(self)}."
        )


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


class RecipeValidator(Validator):
    """torchtitan's Validator, with the validation loader of the data source ``validation.dataset`` names
    (its descriptor's ``build_validation_loader``); other names go to torchtitan's HF path.

    ``Validator.__init__`` always builds torchtitan's HF validation loader, so for our datasets the
    attributes it sets are set here instead (the validate() loop itself is torchtitan's). The loaders
    restart at sample 0 on every ``iter()``, which is how validate() uses them.
    """

    _FORWARDED = (
        "parallel_dims", "loss_fn", "validation_context", "maybe_enable_amp", "metrics_processor",
        "pp_schedule", "pp_has_first_stage", "pp_has_last_stage",
    )

    def __init__(self, job_config, dp_world_size: int, dp_rank: int, tokenizer, **kwargs):
        builder = validation_builder(job_config.validation.dataset)
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


def with_recipe_components(base: TrainSpec, name: str) -> TrainSpec:
    """``base`` with our builders, registered as ``name`` (``recipes.<base>``), whose flavor table adds
    :data:`EXTRA_FLAVORS` of ``<base>`` to the base's own."""
    extra = EXTRA_FLAVORS.get(name[len(PREFIX):] if name.startswith(PREFIX) else name, {})
    return dataclasses.replace(
        base,
        model_args=FlavorTable(name, {**base.model_args, **extra}),
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
    register_train_spec(name, with_recipe_components(spec, name))
    return name


def register_recipe_specs(names: tuple[str, ...] = BASE_MODELS) -> list[str]:
    """Register ``recipes.<model>`` for each base model name; idempotent. Returns the names."""
    return [register_recipe_spec(PREFIX + model) for model in names]
