"""Build a run from objects: hand torchtitan's Trainer a model factory, optimizer, LR scheduler, data
loader, loss or validator built in Python, without registering anything or subclassing the Trainer.

    from titan_recipes import inject          # first: prepares torchtitan (CPU fixes) before it is imported

    inject.train(
        "recipes/debug/train.toml",           # or a dict of overrides, or a JobConfig
        overrides={"training": {"steps": 100}},
        optimizer=lambda named_params: Lion([p for _, p in named_params], lr=1e-4),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100),
    )

Every component left ``None`` comes from the job config exactly as in a recipe run (``model.name``,
``[optimizer]``, ``[lr_scheduler]``, ``training.dataset``, ...), so a TOML recipe plus one injected object
is the common case. The objects:

========================  ===================================================================================
``model``                 ``factory(model_args)`` (or ``factory()`` without ``model_args``) -> ``nn.Module``,
                          called inside ``torch.device("meta")``; the module needs ``init_weights(buffer_device=None)``
``model_args``            a torchtitan ``BaseModelArgs`` (e.g. ``llama3_args["debugmodel"]``): FLOP count,
                          ``attn_type``, vocab check; without it, FLOPs/token are estimated as 6 x parameters
``parallelize``           ``fn(model, parallel_dims, job_config) -> nn.Module``; default: the config model's own
                          (when the factory returns that class), else FSDP/DDP on the whole model
                          (:func:`~titan_recipes.inject.model.data_parallel`); pipeline parallelism keeps
                          the config model's ``pipelining_fn``, so it needs that model class
``optimizer``             ``factory(named_params) -> Optimizer | list[Optimizer]``, once per model part
``lr_scheduler``          ``factory(optimizer) -> torch.optim.lr_scheduler.LRScheduler``, once per optimizer
``dataloader``            an iterable of ``({"input": x}, labels)`` batches, or torchtitan's builder signature
                          ``factory(dp_world_size=, dp_rank=, tokenizer=, job_config=)``
``tokenizer``             a torchtitan ``BaseTokenizer``
``loss_fn``               ``fn(pred, labels) -> summed loss`` (torchtitan 0.2.2 divides by the global token count)
``validator``             torchtitan's ``build_validator_fn`` signature -> ``BaseValidator``
``on_unstateful_loader``  ``"error"`` (default) or ``"restart"``: what a loader without state means (below)
========================  ===================================================================================

Why a TrainSpec built on the fly, and no Trainer subclass or patch
------------------------------------------------------------------
torchtitan 0.2.2's Trainer builds every swappable part through ``TrainSpec`` slots
(``protocols/train_spec.py``) and never looks at the objects' classes, only at their contracts. So
:func:`build_train_spec` copies the config's TrainSpec (``recipes.llama3`` etc.) and replaces the slots
whose object the user gave; :func:`build_trainer` registers it under a private name
(``inject.<pid>.<n>``), points ``model.name`` at it, builds titan-recipes' own Trainer
(:class:`titan_recipes.trainer.RecipeTrainer`: torchtitan's Trainer plus config validation, run record,
``launch.stop_at_step`` and the preemption save) and removes the name again. The Trainer's loop,
parallelisms, checkpointing (:class:`~torchtitan.components.checkpoint.CheckpointManager`), metrics and
validation are torchtitan's, unchanged. Three contracts need an adapter, each a torchtitan subclass:

* Optimizers: torchtitan's ``OptimizersContainer`` instantiates ``Adam``/``AdamW`` itself.
  :class:`InjectedOptimizers` keeps its checkpoint contract (flattened, FQN-keyed state through
  ``get/set_optimizer_state_dict``, so a resume may change the parallelism) around the user's
  optimizers. FQNs must be unique across model parts, and every trainable parameter must be in
  exactly one optimizer; both are errors otherwise, since the FQN-keyed state would be ambiguous.
* LR schedulers: ``LRSchedulersContainer.__init__`` builds ``LambdaLR`` only. :class:`InjectedLRSchedulers`
  holds any ``LRScheduler`` and checkpoints each one's ``state_dict`` (pickled, so any class's state
  fits, with the class name checked on load). ``ReduceLROnPlateau`` is refused: the Trainer calls
  ``step()`` without a metric.
* Data loaders: torchtitan checkpoints ``trainer.dataloader`` as the ``dataloader`` entry. A loader that
  is a ``BaseDataLoader`` is used as is. Another ``Stateful`` loader is wrapped so that its state is
  kept per data-parallel rank (DCP deduplicates equal keys across ranks). A plain iterable cannot be
  resumed: it is an error while checkpointing is on, unless ``on_unstateful_loader="restart"`` accepts
  that a resume restarts the data (logged loudly at build and at load). :class:`ResumableLoader`
  makes a plain ``torch.utils.data.DataLoader`` resumable by counting batches (see there).

Layout: this module holds the API (config, TrainSpec, Trainer, processes); ``model.py`` the model
factory slots, ``optim.py`` the optimizer and scheduler containers, ``data.py`` the loader wrappers.

Processes and the process group: without torchrun (``python my_script.py``), :func:`train` sets the
variables torchtitan reads (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` on
a free port), only those that are absent, and removes them again afterwards. Under torchrun every process
runs the same script and torchtitan initialises the group. If a process group is already
initialised (by the user, or a notebook that trained before), torchtitan 0.2.2's ``init_distributed``
keeps it and warns that ``[comm]`` settings do not apply; :func:`train` then leaves it open, and
destroys only a group it created.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .device import NOT_READY  # first: the CPU fixes must precede every torchtitan import below

import torch.distributed as dist
import torch.nn as nn
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.config import ConfigManager
from torchtitan.protocols import train_spec as registry
from torchtitan.protocols.model import BaseModelArgs
from torchtitan.protocols.train_spec import TrainSpec, get_train_spec

from .. import preemption
from ..config import load_toml, validate_job_config
from ..errors import ConfigError
from ..specs import register_recipe_spec
from .data import UNSTATEFUL_LOADER_POLICIES, ResumableLoader, _is_loader_factory, wrap_loader
from .model import FactoryModelArgs, _FactoryModel, _name, _parallelize, data_parallel
from .optim import InjectedLRSchedulers, InjectedOptimizers, check_unique_fqns

logger = logging.getLogger(__name__)

CUSTOM_CONFIG_MODULE = "titan_recipes.config"
_spec_ids = itertools.count()


# -- job config --------------------------------------------------------------------------------------


def load_job_config(config: str | Path | Mapping[str, Any] | Any = None,
                    overrides: Mapping[str, Any] | Sequence[str] | None = None):
    """The job config, parsed by torchtitan's ConfigManager with titan-recipes' sections
    (``job.custom_config_module = "titan_recipes.config"`` unless the TOML names another module).

    ``config``: a TOML path, a dict (nested ``{"training": {"steps": 6}}`` or dotted
    ``{"training.steps": 6}``) applied over the defaults, a JobConfig instance (copied), or None
    (defaults). ``overrides``: a dict as above, or CLI-style ``["--training.steps", "6"]``.
    Unknown keys and wrongly typed values are ConfigErrors naming the key.
    """
    args: list[str] = []
    toml_module = None
    if isinstance(config, (str, Path)):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"Job config file not found: '{config}' (relative paths resolve from {Path.cwd()}).")
        toml_module = load_toml(path).get("job", {}).get("custom_config_module")  # ConfigError naming file:line
        args += ["--job.config_file", str(path)]
    if not toml_module:
        args += ["--job.custom_config_module", CUSTOM_CONFIG_MODULE]
    if overrides is not None and not isinstance(overrides, Mapping):
        args += [str(a) for a in overrides]
    job_config = ConfigManager().parse_args(args)
    if isinstance(config, Mapping):
        _apply_dict(job_config, config, "")
    elif config is not None and not isinstance(config, (str, Path)):
        if not dataclasses.is_dataclass(config) or not hasattr(config, "training"):
            raise ConfigError(
                f"config must be a TOML path, a dict of settings or a JobConfig, got {type(config).__name__}."
            )
        _copy_sections(job_config, config, "")
    if isinstance(overrides, Mapping):
        _apply_dict(job_config, overrides, "")
    validate_job_config(job_config)
    return job_config


def _field_names(obj: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(obj)]


def _apply_dict(target: Any, values: Mapping[str, Any], prefix: str) -> None:
    for key, value in values.items():
        head, _, rest = str(key).partition(".")
        if head not in _field_names(target):
            raise ConfigError(
                f"Unknown config key `{prefix}{key}`: [{prefix.rstrip('.') or 'top level'}] has "
                f"{sorted(_field_names(target))}."
            )
        current = getattr(target, head)
        if rest:
            _apply_dict(current, {rest: value}, f"{prefix}{head}.")
        elif dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            _apply_dict(current, value, f"{prefix}{head}.")
        else:
            setattr(target, head, copy.deepcopy(value))


def _copy_sections(target: Any, source: Any, prefix: str) -> None:
    for name in _field_names(source):
        if name not in _field_names(target):
            raise ConfigError(f"JobConfig field `{prefix}{name}` is not a titan-recipes/torchtitan config key.")
        value = getattr(source, name)
        if dataclasses.is_dataclass(value):
            _copy_sections(getattr(target, name), value, f"{prefix}{name}.")
        else:
            setattr(target, name, copy.deepcopy(value))


# -- the run -------------------------------------------------------------------------------------------


def build_train_spec(job_config, *, model: Callable[..., nn.Module] | None = None,
                     model_args: BaseModelArgs | None = None, parallelize: Callable | None = None,
                     optimizer: Callable | None = None, lr_scheduler: Callable | None = None,
                     dataloader: Any = None, tokenizer: Any = None, loss_fn: Callable | None = None,
                     validator: Callable | None = None, on_unstateful_loader: str = "error") -> TrainSpec:
    """The config's TrainSpec (``model.name``) with the slots of the given objects replaced."""
    base = get_train_spec(register_recipe_spec(job_config.model.name))
    replace: dict[str, Any] = {}
    if model is None and model_args is not None:
        raise ValueError("model_args was given without a model factory; pass model=factory as well.")
    if model is not None:
        args = model_args if model_args is not None else FactoryModelArgs(factory=_name(model))
        replace.update(model_cls=_FactoryModel(model, with_args=model_args is not None),
                       model_args={job_config.model.flavor: args})
    if model is not None or parallelize is not None:
        replace["parallelize_fn"] = _parallelize(parallelize, base)
        if parallelize is not None:
            replace["pipelining_fn"] = None
    if optimizer is not None:
        replace["build_optimizers_fn"] = lambda model_parts, *args, **kwargs: InjectedOptimizers(model_parts, optimizer)
    if lr_scheduler is not None:
        replace["build_lr_schedulers_fn"] = lambda optimizers, config, steps: InjectedLRSchedulers(optimizers, lr_scheduler)
    if dataloader is not None:
        checkpointing = job_config.checkpoint.enable

        def build_dataloader(dp_world_size: int, dp_rank: int, tokenizer, job_config):
            loader = dataloader
            if _is_loader_factory(dataloader):
                loader = dataloader(dp_world_size=dp_world_size, dp_rank=dp_rank, tokenizer=tokenizer, job_config=job_config)
            elif dp_world_size > 1 and not isinstance(dataloader, BaseDataLoader):
                raise ValueError(
                    f"dataloader is one {type(dataloader).__name__} object but the data-parallel degree is "
                    f"{dp_world_size}: every rank would read the same batches. Pass a factory "
                    f"dataloader(dp_world_size=, dp_rank=, tokenizer=, job_config=) that builds each rank's share."
                )
            return wrap_loader(loader, dp_rank=dp_rank, dp_world_size=dp_world_size,
                               checkpointing=checkpointing, on_unstateful_loader=on_unstateful_loader)

        replace["build_dataloader_fn"] = build_dataloader
    if tokenizer is not None:
        replace["build_tokenizer_fn"] = lambda job_config: tokenizer
    if loss_fn is not None:
        replace["build_loss_fn"] = lambda job_config, **_: loss_fn
    if validator is not None:
        replace["build_validator_fn"] = validator
    base_args_cls = type(next(iter(base.model_args.values())))
    if model is not None and type(model_args) is not base_args_cls:
        replace["state_dict_adapter"] = None  # the config model's HF adapter describes only its own model
    return dataclasses.replace(base, **replace)


def build_trainer(config, overrides=None, **components):
    """titan-recipes' Trainer (torchtitan's, with config validation, run record, ``launch.stop_at_step``
    and preemption saves) built with the injected ``components`` (see :func:`build_train_spec`), for
    callers that drive it themselves (``trainer.train()``, ``trainer.close()``). Absent distributed
    environment variables are set (:func:`distributed_env`) and left set."""
    if NOT_READY:
        raise RuntimeError(NOT_READY)
    from ..trainer import RecipeTrainer

    distributed_env()
    job_config = load_job_config(config, overrides)
    spec = build_train_spec(job_config, **components)
    name = f"inject.{os.getpid()}.{next(_spec_ids)}"
    logger.info("inject: model.name %r with %s injected runs as TrainSpec %r", job_config.model.name,
                sorted(k for k, v in components.items() if v is not None and k != "on_unstateful_loader"), name)
    job_config.model.name = name
    registry.register_train_spec(name, spec)
    try:
        return RecipeTrainer(job_config)
    finally:
        registry._extra_train_specs.pop(name, None)  # the Trainer holds the spec; the name was for this run


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def distributed_env() -> dict[str, str]:
    """Set the absent variables torchtitan reads; returns those it set. With a process group already
    initialised they come from it; with none and no ``WORLD_SIZE``, this is one process on this host."""
    env = os.environ
    if dist.is_initialized():
        defaults = {"RANK": str(dist.get_rank()), "WORLD_SIZE": str(dist.get_world_size())}
        defaults["LOCAL_RANK"] = env.get("RANK", defaults["RANK"])
    elif "WORLD_SIZE" not in env and "RANK" not in env:
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port())}
    else:
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise ConfigError(
                f"Distributed environment incomplete: {missing} unset while RANK/WORLD_SIZE are set "
                f"(RANK={env.get('RANK')}, WORLD_SIZE={env.get('WORLD_SIZE')}). Launch with torchrun, or unset "
                f"RANK and WORLD_SIZE for a single process."
            )
        defaults = {"LOCAL_RANK": env["RANK"]}
    added = {k: v for k, v in defaults.items() if k not in env}
    env.update(added)
    if added:
        logger.info("inject: set %s", " ".join(f"{k}={v}" for k, v in added.items()))
    return added


def train(config, overrides=None, **components):
    """Build the Trainer with the injected ``components`` and train: checkpoint load (resume), the
    training loop, checkpoint saves, validation, then close. Returns the closed Trainer (``.step``,
    ``.model_parts``, ...). A launch stopped by a preemption signal exits with
    ``launch.preempt_exit_code`` after saving, as a recipe launch does."""
    from torchtitan.tools.logging import init_logger

    init_logger()
    preemption.preempted.clear()  # a launch of this process that stopped for a signal earlier
    added = distributed_env()
    own_group = not dist.is_initialized()
    trainer = None
    try:
        trainer = build_trainer(config, overrides, **components)
        trainer.train()
    finally:
        if trainer is not None:
            trainer.close()
        if own_group and dist.is_initialized():
            dist.destroy_process_group()
        for key in added:
            os.environ.pop(key, None)
    if preemption.preempted:
        logger.info(preemption.preempted["line"])
        raise SystemExit(preemption.preempted["code"])
    return trainer


__all__ = [
    "UNSTATEFUL_LOADER_POLICIES", "FactoryModelArgs", "InjectedLRSchedulers", "InjectedOptimizers",
    "ResumableLoader", "build_train_spec", "build_trainer", "check_unique_fqns", "data_parallel",
    "distributed_env", "load_job_config", "train", "wrap_loader",
]
