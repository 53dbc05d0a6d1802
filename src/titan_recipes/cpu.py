"""Running torchtitan 0.2.2 on a machine without a GPU.

torchtitan 0.2.2 assumes CUDA in three places. Each fix below is a named, opt-in unit applied by
:func:`prepare_device` (called by :mod:`titan_recipes.trainer` and the test helpers) *before* torchtitan is imported; on a machine with
a GPU, :func:`prepare_torchtitan_import` only installs the triton stand-in when triton is missing and
:func:`use_cpu_device` is never called, so GPU runs use torchtitan unchanged.

1. ``import torchtitan`` imports triton through ``torchtitan/models/moe/kernels.py`` (pulled in by the
   float8 converter module). CPU torch wheels bring no triton. Faking ``triton`` itself would break
   ``torch._inductor``; instead we register a stand-in for that one torchtitan module
   (:func:`prepare_torchtitan_import`). Only MoE token permutation uses it, and the stand-in raises a
   clear error if called.
2. ``torchtitan.tools.utils`` computes ``device_type = _get_available_device_type() or "cuda"`` at import
   time, so the Trainer calls ``torch.cuda.set_device`` and dies. :func:`use_cpu_device` rebinds the
   module-level ``device_type``/``device_module`` to ``"cpu"`` and a small device module
   (:class:`CpuDeviceModule`) before the modules that copy them are imported. torchtitan then picks the
   gloo backend by itself (``Backend.default_device_backend_map["cpu"]``).
3. FSDP2 over gloo fails with ``Cannot use ReduceOp.PREMUL_SUM with Gloo`` because torchtitan sets the
   gradient divide factor to 1.0, which FSDP implements as a pre-multiplied sum. Asking FSDP for a plain
   SUM reduction (:func:`force_sum_reduction_for_gloo`) is mathematically identical (the factor is 1).
"""

from __future__ import annotations

import importlib.util
import os
import resource
import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_MOE_KERNELS = "torchtitan.models.moe.kernels"


def cuda_available() -> bool:
    """True when this process should train on the GPU (CUDA build and a visible device)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def _moe_kernels_stand_in() -> types.ModuleType:
    module = types.ModuleType(_MOE_KERNELS)
    module.__doc__ = "titan_recipes stand-in: triton is not installed, MoE token permutation is unavailable."

    def _unavailable(*args, **kwargs):
        raise RuntimeError(
            "torchtitan's MoE token-permutation kernel needs triton, which is not installed in this "
            "environment (CPU torch wheels ship without it). Dense models (llama3) do not use it; for MoE "
            "models install triton or run in the GPU image."
        )

    module.generate_permute_indices = _unavailable
    module.fill_indices_wrapper = _unavailable
    module.__all__ = ["generate_permute_indices", "fill_indices_wrapper"]
    return module


def prepare_torchtitan_import() -> None:
    """Pitfall 1: make ``import torchtitan`` work without triton. Idempotent; a no-op with triton."""
    if importlib.util.find_spec("triton") is not None or _MOE_KERNELS in sys.modules:
        return
    sys.modules[_MOE_KERNELS] = _moe_kernels_stand_in()


class _CpuProperties:
    def __init__(self, total_memory: int, name: str):
        self.total_memory = total_memory
        self.name = name


def _physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux. It is a process-lifetime peak: reset_peak_memory_stats cannot reset it.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CpuDeviceModule:
    """The subset of the ``torch.cuda`` API that torchtitan's Trainer and metrics call, for the CPU.

    Memory figures are the process's peak resident set size, reported both as "active" and "reserved";
    there is no allocator retry/OOM counter on the CPU, so those are 0.
    """

    def __getattr__(self, name):
        # Everything else (synchronize, current_stream, device_count, ...) comes from torch.cpu.
        import torch

        return getattr(torch.cpu, name)

    @staticmethod
    def set_device(device) -> None:
        return None

    @staticmethod
    def current_device() -> int:
        return 0

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def get_device_name(device=None) -> str:
        return f"CPU ({os.cpu_count()} logical cores)"

    @staticmethod
    def get_device_properties(device=None) -> _CpuProperties:
        return _CpuProperties(_physical_memory_bytes(), CpuDeviceModule.get_device_name())

    @staticmethod
    def reset_peak_memory_stats(device=None) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def memory_stats(device=None) -> dict[str, int]:
        peak = _peak_rss_bytes()
        return {
            "active_bytes.all.peak": peak,
            "reserved_bytes.all.peak": peak,
            "num_alloc_retries": 0,
            "num_ooms": 0,
        }


def prepare_device() -> None:
    """Everything a process needs before it imports ``torchtitan.train``: the triton stand-in, and on a
    machine without a usable GPU the CPU device (pitfall 2). Idempotent."""
    prepare_torchtitan_import()
    if not cuda_available():
        use_cpu_device()


def use_cpu_device() -> None:
    """Pitfall 2: make torchtitan see device type "cpu". Call before importing torchtitan.train.

    torchtitan modules copy ``device_type``/``device_module`` from ``torchtitan.tools.utils`` with
    ``from ... import`` when they are first imported; ``import torchtitan`` already imports
    ``torchtitan.distributed.parallel_dims``, so that copy is rebound too. Modules imported afterwards
    (train, metrics, distributed.utils) then copy the CPU values.
    """
    prepare_torchtitan_import()
    import torchtitan.distributed.parallel_dims as parallel_dims
    import torchtitan.tools.utils as tt_utils

    if isinstance(tt_utils.device_module, CpuDeviceModule):  # applied already: modules imported since copied "cpu"
        return
    module = CpuDeviceModule()
    tt_utils.device_type, tt_utils.device_module = "cpu", module
    parallel_dims.device_type = "cpu"
    late = [
        name
        for name in ("torchtitan.train", "torchtitan.components.metrics", "torchtitan.distributed.utils")
        if name in sys.modules
    ]
    if late:
        raise RuntimeError(
            f"use_cpu_device() must run before {late} are imported: they already copied "
            f"device_type={tt_utils.get_device_info()[0]!r}. Import titan_recipes.train (or titan_recipes.inject) first."
        )


def force_sum_reduction_for_gloo(model: "torch.nn.Module") -> int:
    """Pitfall 3: FSDP2 on gloo. Returns how many FSDP modules were switched to SUM reduction."""
    from torch.distributed.fsdp import FSDPModule

    switched = 0
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)
            switched += 1
    return switched
