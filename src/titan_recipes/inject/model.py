"""The model slots of an injected TrainSpec: a factory as ``model_cls``, its model args, and the
default ``parallelize_fn`` for a model that is not the config model's class (see titan_recipes.inject)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.nn as nn
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.protocols.model import BaseModelArgs
from torchtitan.protocols.train_spec import TrainSpec

from .. import cpu
from ..errors import ConfigError

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FactoryModelArgs(BaseModelArgs):
    """Model args for a factory given without ``model_args``: only the factory's name, for the log."""

    factory: str = ""
    """``module.qualname`` of the model factory."""

    def update_from_config(self, job_config, **kwargs) -> None:
        return None

    def get_nparams_and_flops(self, model: nn.Module, seq_len: int) -> tuple[int, int]:
        """Parameters, and training FLOPs per token estimated as 6 x parameters (forward + backward,
        attention not counted): pass the model's ``model_args`` for torchtitan's exact count."""
        n = sum(p.numel() for p in model.parameters())
        return n, 6 * n


class _FactoryModel:
    """The TrainSpec's ``model_cls``: ``model_cls(model_args)`` calls the user's factory and checks
    what the Trainer needs from the module."""

    def __init__(self, factory: Callable[..., nn.Module], with_args: bool):
        self.factory, self.with_args = factory, with_args

    def __call__(self, model_args) -> nn.Module:
        model = self.factory(model_args) if self.with_args else self.factory()
        name = _name(self.factory)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model factory {name} returned {type(model).__name__}, not a torch.nn.Module.")
        off_meta = sorted({str(p.device) for p in model.parameters() if p.device.type != "meta"})
        if off_meta:
            raise ValueError(
                f"model factory {name} created parameters on {off_meta}: it is called inside "
                f"torch.device('meta'); do not pass device= (the Trainer materialises the weights with "
                f"to_empty + init_weights, so weights created elsewhere would be discarded)."
            )
        if not callable(getattr(model, "init_weights", None)):
            raise TypeError(
                f"model factory {name} returned {type(model).__name__}, which has no init_weights(buffer_device=None) "
                f"method: torchtitan builds the model on the meta device and then initialises it with "
                f"init_weights. Add one (e.g. call reset_parameters() on each submodule that has it)."
            )
        return model


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def data_parallel(model: nn.Module, parallel_dims, job_config) -> nn.Module:
    """Default ``parallelize_fn`` for a model that is not the config model's class: FSDP2 (or HSDP)
    on the whole model, or DDP, with torchtitan's dtypes and gradient scaling. Tensor, context,
    pipeline and expert parallelism need a model-specific ``parallelize``."""
    from torch.distributed._composable.replicate import replicate
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torchtitan.models.llama3.infra.parallelize import disable_fsdp_gradient_division

    unsupported = {name: getattr(parallel_dims, name) for name in ("tp", "cp", "pp", "ep") if getattr(parallel_dims, name) > 1}
    if unsupported:
        raise ConfigError(
            f"The injected model {type(model).__name__} has no parallelize function, and the generic one "
            f"only does data parallelism, but the config asks for {unsupported}. Pass "
            f"parallelize=fn(model, parallel_dims, job_config) or set those parallelism degrees to 1."
        )
    if parallel_dims.fsdp_enabled:
        mesh = parallel_dims.get_mesh(["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"])
        training = job_config.training
        policy = MixedPrecisionPolicy(param_dtype=TORCH_DTYPE_MAP[training.mixed_precision_param],
                                      reduce_dtype=TORCH_DTYPE_MAP[training.mixed_precision_reduce])
        name = type(model).__name__  # fully_shard changes the class to FSDP<name>
        fully_shard(model, mesh=mesh, mp_policy=policy)
        disable_fsdp_gradient_division(model)  # the loss is already divided by the global token count
        logger.info("inject: FSDP on the whole %s (mesh %s)", name, mesh.mesh_dim_names)
    elif parallel_dims.dp_replicate_enabled:
        replicate(model, device_mesh=parallel_dims.get_mesh("dp_replicate"), bucket_cap_mb=100)
        logger.info("inject: DDP on %s", type(model).__name__)
    return model


def _parallelize(user_fn: Callable | None, base: TrainSpec):
    def parallelize(model, parallel_dims, job_config):
        if user_fn is not None:
            model = user_fn(model, parallel_dims, job_config)
        elif isinstance(model, base.model_cls):
            model = base.parallelize_fn(model, parallel_dims, job_config)
        else:
            model = data_parallel(model, parallel_dims, job_config)
        if dist.is_initialized() and dist.get_backend() == "gloo":
            cpu.force_sum_reduction_for_gloo(model)  # titan_recipes.cpu, pitfall 3; idempotent
        return model

    return parallelize
