"""titan_recipes.cpu: torchtitan without triton and without a GPU.

use_cpu_device() rebinds torchtitan's module globals, so it runs in a subprocess only.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys

import pytest
import torch

import titan_recipes  # noqa: F401
from titan_recipes import cpu

KERNELS = "torchtitan.models.moe.kernels"
no_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is not None, reason="triton is installed")


@no_triton
def test_prepare_torchtitan_import_installs_a_stand_in():
    stand_in = sys.modules[KERNELS]
    assert "stand-in" in (stand_in.__doc__ or "")
    cpu.prepare_torchtitan_import()  # idempotent
    assert sys.modules[KERNELS] is stand_in
    # The module that imports the kernels (and so all of torchtitan's model code) imports.
    moe_utils = importlib.import_module("torchtitan.models.moe.utils")
    assert moe_utils.generate_permute_indices is stand_in.generate_permute_indices


@no_triton
@pytest.mark.parametrize("name", ["generate_permute_indices", "fill_indices_wrapper"])
def test_stand_in_raises_a_clear_error_when_called(name):
    with pytest.raises(RuntimeError, match="triton"):
        getattr(sys.modules[KERNELS], name)(1, 2)


def test_memory_stats_has_the_keys_torchtitan_reads():
    stats = cpu.CpuDeviceModule().memory_stats()
    assert set(stats) >= {"active_bytes.all.peak", "reserved_bytes.all.peak", "num_alloc_retries", "num_ooms"}
    assert stats["active_bytes.all.peak"] > 0
    assert stats["reserved_bytes.all.peak"] > 0
    assert stats["num_alloc_retries"] == stats["num_ooms"] == 0
    assert all(isinstance(v, int) for v in stats.values())


def test_peak_memory_grows_with_an_allocation():
    before = cpu.CpuDeviceModule.memory_stats()["active_bytes.all.peak"]
    block = torch.ones(96 * 1024 * 1024 // 4)  # 96 MiB touched
    after = cpu.CpuDeviceModule.memory_stats()["active_bytes.all.peak"]
    assert block.sum().item() == block.numel()
    assert after >= before
    assert after >= block.numel() * 4


def test_device_module_covers_what_the_trainer_calls():
    module = cpu.CpuDeviceModule()
    props = module.get_device_properties(0)
    assert props.total_memory > 0
    assert "CPU" in props.name
    assert module.is_available() is True
    assert module.current_device() == 0
    assert module.set_device(0) is None
    module.synchronize()  # falls through to torch.cpu
    assert module.device_count() >= 1


def test_force_sum_reduction_without_fsdp_modules_is_zero():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert cpu.force_sum_reduction_for_gloo(model) == 0


_SCRIPTS = {
    # Pitfall 2: use_cpu_device() before torchtitan.train makes every copy of device_type "cpu".
    "use_cpu_device": (
        "import titan_recipes.cpu as c\n"
        "c.use_cpu_device()\n"
        "import torchtitan.train\n"
        "import torchtitan.tools.utils as u, torchtitan.components.metrics as m\n"
        "import torchtitan.distributed.parallel_dims as p\n"
        "print(u.device_type, m.device_type, p.device_type, type(m.device_module).__name__)\n"
    ),
    # ...and called too late it refuses instead of leaving stale "cuda" copies behind.
    "too_late": (
        "import titan_recipes.cpu as c\n"
        "import torchtitan.train\n"
        "try:\n"
        "    c.use_cpu_device()\n"
        "except RuntimeError as e:\n"
        "    print('REFUSED', 'torchtitan.train' in str(e))\n"
    ),
    # Pitfall 3: a 1-process gloo group with real FSDP2 modules (3 fully_shard calls).
    "fsdp": (
        "import titan_recipes.cpu as c\n"
        "import torch, torch.distributed as dist\n"
        "from torch.distributed.fsdp import fully_shard\n"
        "from torch.distributed.device_mesh import init_device_mesh\n"
        "dist.init_process_group('gloo', store=dist.HashStore(), rank=0, world_size=1)\n"
        "mesh = init_device_mesh('cpu', (1,))\n"
        "m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))\n"
        "for layer in m:\n"
        "    fully_shard(layer, mesh=mesh)\n"
        "fully_shard(m, mesh=mesh)\n"
        "print('SWITCHED', c.force_sum_reduction_for_gloo(m))\n"
        "m(torch.randn(3, 4)).sum().backward()\n"
        "print('GRAD', m[0].weight.grad is not None)\n"
        "dist.destroy_process_group()\n"
    ),
}


@pytest.fixture(scope="module")
def subprocess_results() -> dict[str, subprocess.CompletedProcess]:
    """Run the scripts above in fresh interpreters, concurrently (each mostly imports torchtitan)."""
    procs = {
        name: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in _SCRIPTS.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_use_cpu_device_rebinds_torchtitan_device_type(subprocess_results):
    result = subprocess_results["use_cpu_device"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["cpu", "cpu", "cpu", "CpuDeviceModule"]


def test_use_cpu_device_after_torchtitan_train_is_an_error(subprocess_results):
    result = subprocess_results["too_late"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REFUSED True" in result.stdout


def test_force_sum_reduction_switches_every_fsdp_module(subprocess_results):
    result = subprocess_results["fsdp"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SWITCHED 3" in result.stdout
    assert "GRAD True" in result.stdout


def test_any_train_spec_gets_the_recipe_components_by_name():
    """model.name = "recipes.<base>" works for any TrainSpec torchtitan knows, not only llama3."""
    from torchtitan.protocols.train_spec import get_train_spec

    from titan_recipes.errors import ConfigError
    from titan_recipes.data.registry import build_dataloader
    from titan_recipes.specs import register_recipe_spec

    assert register_recipe_spec("recipes.qwen3") == "recipes.qwen3"
    assert register_recipe_spec("recipes.qwen3") == "recipes.qwen3"  # idempotent
    spec, base = get_train_spec("recipes.qwen3"), get_train_spec("qwen3")
    assert spec.build_dataloader_fn is build_dataloader and base.build_dataloader_fn is not build_dataloader
    assert spec.model_cls is base.model_cls
    assert dict(spec.model_args) == base.model_args  # the same flavor objects (llama3 adds '1B', qwen3 nothing)
    assert all(spec.model_args[f] is base.model_args[f] for f in base.model_args)
    assert register_recipe_spec("llama3") == "llama3"  # torchtitan's own names are left alone
    with pytest.raises(ConfigError, match=r"model.name = 'recipes.nope': 'nope' is not a TrainSpec"):
        register_recipe_spec("recipes.nope")
