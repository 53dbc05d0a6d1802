"""Options that need a CUDA GPU, refused with one message on a machine without one.

torchtitan accepts these settings anywhere and fails deep inside a CPU run, after the model is built:
torchao's float8 / MX training kernels (``model.converters``: H100-class GPUs), async tensor parallel
(CUDA symmetric memory), the CUDA memory snapshot, and ``checkpoint.async_mode = "async_with_pinned_mem"``
(its DCP stager copies with ``non_blocking=True`` into pinned memory; on CPU the first save fails with
``AssertionError: Non-blocking copy requires that the current accelerator is available.``, after
``checkpoint.interval`` steps of training). On a machine where
:func:`titan_recipes.cpu.cuda_available` is false, :func:`validate_device_options` names each such
setting and the fix before anything is built. Options that a CPU run can honour (``compile``,
``mixed_precision_param``, ``pin_memory`` -- a no-op without CUDA --, ``checkpoint.async_mode = "async"``)
pass.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

CUDA_ONLY_CONVERTERS = ("float8", "mx")
"""``model.converters`` entries that swap in torchao's low-precision training modules."""


def cuda_only_settings(config: Any) -> list[str]:
    """Each CUDA-only setting ``config`` turns on, as ``key = value`` plus why it needs CUDA."""
    found = []
    converters = [str(c).strip() for c in (getattr(config.model, "converters", None) or []) if str(c).strip()]
    for conv in converters:
        if set(conv.lower().split(".")) & set(CUDA_ONLY_CONVERTERS):  # e.g. quantize.linear.float8
            found.append(f"model.converters = {converters} ('{conv}': torchao low-precision training kernels need "
                         f"an SM 8.9+ CUDA GPU such as an H100)")
    if getattr(config.parallelism, "enable_async_tensor_parallel", False):
        found.append("parallelism.enable_async_tensor_parallel = true (CUDA symmetric memory)")
    if getattr(config.profiling, "enable_memory_snapshot", False):
        found.append("profiling.enable_memory_snapshot = true (torch.cuda.memory snapshots)")
    ckpt = getattr(config, "checkpoint", None)
    if getattr(ckpt, "enable", False) and str(getattr(ckpt, "async_mode", "")).lower() == "async_with_pinned_mem":
        found.append('checkpoint.async_mode = "async_with_pinned_mem" (pinned host memory and non-blocking copies '
                     'from an accelerator; on CPU use checkpoint.async_mode = "async", which writes in a background '
                     'thread just the same)')
    return found


def validate_device_options(config: Any, cuda: bool | None = None) -> None:
    """ConfigError listing the CUDA-only settings of ``config`` when there is no CUDA GPU (``cuda``:
    whether one is usable; None asks :func:`titan_recipes.cpu.cuda_available`)."""
    if cuda is None:
        from ..cpu import cuda_available

        cuda = cuda_available()
    if cuda:
        return
    found = cuda_only_settings(config)
    if found:
        raise ConfigError(
            "This run has no CUDA GPU (it trains on the CPU), and these settings need one: " + "; ".join(found)
            + ". Remove them from the config of CPU runs (for llama3_1b, its CPU config recipes/llama3_1b/smoke.toml "
            "has none) and keep them for the GPU run."
        )
