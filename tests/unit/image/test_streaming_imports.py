"""What mosaicml-streaming's package ``__init__`` needs, in both locks: transformers (+ safetensors) at one
version in both, torchvision in the GPU lock only, built for the GPU lock's torch (env/README.md says why
the CPU lock cannot have it). And in this environment (.venv, from cpu.lock): transformers imports and
loads tokenizers without typer, and it is all streaming's text and dataloader modules need, so torchvision
is the one missing piece of ``import streaming``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from titan_recipes import image as c

REPO = Path(__file__).resolve().parents[3]
GPU_LOCK = REPO / "env" / "gpu.lock"
CPU_LOCK = REPO / "env" / "cpu.lock"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_transformers_is_pinned_alike_in_both_locks():
    gpu, cpu = c.read_lock(GPU_LOCK), c.read_lock(CPU_LOCK)
    for package in ("transformers", "safetensors"):
        assert package in cpu.pins and package in gpu.pins, package
        assert cpu.version(package) == gpu.version(package), package
    # transformers' runtime requirements are pinned too, except typer (its CLI only; see the lock headers)
    for package in ("huggingface_hub", "numpy", "packaging", "PyYAML", "regex", "tokenizers", "tqdm"):
        assert cpu.version(package) and gpu.version(package), package
    assert "typer" not in cpu.pins and "typer" not in gpu.pins


def test_gpu_torchvision_is_the_build_of_the_gpu_torch():
    gpu, cpu = c.read_lock(GPU_LOCK), c.read_lock(CPU_LOCK)
    torch, vision = gpu.version("torch"), gpu.version("torchvision")
    torch_release, _, torch_local = torch.partition("+")
    vision_release, _, vision_local = vision.partition("+")
    assert vision_local == torch_local == "cu130", (torch, vision)
    major, minor = map(int, torch_release.split(".")[:2])
    assert major == 2 and vision_release.startswith(f"0.{minor + 15}."), f"torchvision {vision} is not the release of torch {torch}"
    assert "torchvision" not in cpu.pins, "PyPI's torchvision wheels are CUDA builds; env/README.md"


def test_transformers_loads_a_tokenizer_without_typer():
    """typer is not pinned: block it and load the committed tokenizer with AutoTokenizer."""
    proc = _run(
        "import sys; sys.modules['typer'] = None\n"
        "import transformers\n"
        "from transformers import AutoTokenizer\n"
        "t = AutoTokenizer.from_pretrained('assets/tokenizers/shakespeare-bpe-2048', local_files_only=True)\n"
        "print(transformers.__version__, len(t))\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [c.read_lock(CPU_LOCK).version("transformers"), "2048"]


def test_streaming_text_and_dataloader_import_with_the_pinned_transformers():
    """Everything streaming's ``__init__`` imports works here except ``streaming.vision`` (torchvision).
    The package shell is registered without its ``__init__`` (as titan_recipes.data.mds.compat does), then
    ``streaming.base`` (whose real ``__init__`` imports the transformers-based dataloader), ``streaming.text``
    and ``streaming.multimodal`` are imported for real."""
    proc = _run(
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('streaming')\n"
        "shell = types.ModuleType('streaming'); shell.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['streaming'] = shell\n"
        "import streaming.base, streaming.text, streaming.multimodal\n"
        "from streaming.base import MDSWriter, StreamingDataset, StreamingDataLoader\n"
        "from streaming.text import StreamingC4\n"
        "assert 'transformers' in sys.modules\n"
        "try:\n"
        "    import streaming.vision\n"
        "except ModuleNotFoundError as e:\n"
        "    print('missing', e.name)\n"
        "else:\n"
        "    print('vision ok')\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] in (["missing", "torchvision"], ["vision", "ok"])
