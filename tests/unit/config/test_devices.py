"""CUDA-only options are refused on a machine without CUDA, before anything is built (issue 19)."""

from __future__ import annotations

import pytest
from configs import job_config

from titan_recipes.config import validate_config
from titan_recipes.config.devices import validate_device_options
from titan_recipes.cpu import cuda_available
from titan_recipes.errors import ConfigError

needs_cpu_only = pytest.mark.skipif(cuda_available(), reason="this machine has a CUDA GPU")


@needs_cpu_only
@pytest.mark.parametrize("converter", ["quantize.linear.float8", "quantize.grouped_mm.float8", "quantize.linear.mx"])
def test_float8_and_mx_converters_are_refused_naming_the_key(converter):
    config = job_config(model={"converters": [converter]})
    with pytest.raises(ConfigError, match=rf"model.converters = \['{converter}'\] .*need.*CUDA GPU.*smoke.toml"):
        validate_config(config)


@needs_cpu_only
@pytest.mark.parametrize("section,key", [("parallelism", "enable_async_tensor_parallel"),
                                         ("profiling", "enable_memory_snapshot")])
def test_other_cuda_only_switches_are_refused(section, key):
    with pytest.raises(ConfigError, match=rf"{section}.{key} = true"):
        validate_config(job_config(**{section: {key: True}}))


def test_every_cuda_only_setting_is_listed_in_one_message_and_a_gpu_accepts_them():
    config = job_config(model={"converters": ["quantize.linear.float8"]},
                        parallelism={"enable_async_tensor_parallel": True})
    with pytest.raises(ConfigError) as e:
        validate_device_options(config, cuda=False)
    assert "model.converters" in str(e.value) and "enable_async_tensor_parallel" in str(e.value)
    validate_device_options(config, cuda=True)


@needs_cpu_only
def test_options_a_cpu_run_honours_pass():
    """compile, bf16 parameters with fp32 reduction, pin_memory and async checkpointing are not refused
    (whether each trains correctly on CPU is tested where it runs)."""
    validate_config(job_config(compile={"enable": True}, training={"mixed_precision_param": "bfloat16",
                                                                   "mixed_precision_reduce": "float32"},
                               checkpoint={"async_mode": "async"}, mosaic_dataloader={"pin_memory": True}))


@needs_cpu_only
def test_pinned_memory_async_checkpointing_is_refused_with_the_cpu_alternative():
    """Without the check, the first interval save fails deep in DCP's stager ("AssertionError: Non-blocking
    copy requires that the current accelerator is available.", seen on the debug recipe, torch 2.13 CPU)."""
    config = job_config(checkpoint={"enable": True, "async_mode": "async_with_pinned_mem"})
    with pytest.raises(ConfigError, match=r'checkpoint.async_mode = "async_with_pinned_mem" .*use checkpoint.async_mode '
                                          r'= "async"'):
        validate_config(config)
    validate_device_options(config, cuda=True)
    validate_config(job_config(checkpoint={"enable": False, "async_mode": "async_with_pinned_mem"}))  # never used
