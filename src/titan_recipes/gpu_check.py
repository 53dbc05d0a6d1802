"""The GPU check behind ``nox -s gpu``: train a recipe on this node's GPUs and report its throughput.

``titan-recipes image gpu RECIPE`` trains a recipe on the GPUs of this node through its ``run_train.sh``
with the overrides of the fixture entry for this GPU type, compares the losses
(:func:`titan_recipes.fixtures.check_run`) and prints :func:`throughput_summary` of the run's
``metrics.jsonl``.

Importing this module needs only the standard library; :func:`require_cuda` imports torch and
:func:`run_gpu_check` the fixtures module when they run, and :func:`throughput_summary` reads a run
without either.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .image import ContainerError
from .run_files import METRICS_FILE, MFU_KEY, PEAK_MEMORY_KEY, RUN_FILE, TFLOPS_KEY, TPS_KEY, read_metrics


@dataclass
class ThroughputSummary:
    """Per-device throughput of a run's logged training steps, the first ``warmup`` of them left out
    (they include compilation, allocator growth and data-loader start)."""

    steps: list[int]
    """Steps measured."""
    world_size: int
    tokens_per_s: float
    """Median over ``steps`` of torchtitan's ``throughput(tps)``: tokens per second per device."""
    mfu_percent: float | None
    """Median ``mfu(%)`` (model FLOPs utilisation against the device's peak bf16 FLOPS)."""
    tflops: float | None
    """Median achieved TFLOPS per device."""
    peak_memory_gib: float | None
    """Largest ``memory/max_reserved(GiB)`` of the measured steps."""

    def format(self) -> str:
        steps = f"step {self.steps[0]}" if len(self.steps) == 1 else f"steps {self.steps[0]}-{self.steps[-1]}"
        parts = [
            f"throughput {self.tokens_per_s:,.0f} tok/s per device (median of {steps}), "
            f"{self.tokens_per_s * self.world_size:,.0f} tok/s over {self.world_size} device(s)"
        ]
        if self.mfu_percent is not None:
            parts.append(f"MFU {self.mfu_percent:.1f}%")
        if self.tflops is not None:
            parts.append(f"{self.tflops:.1f} TFLOPS per device")
        if self.peak_memory_gib is not None:
            parts.append(f"peak reserved memory {self.peak_memory_gib:.2f} GiB")
        return "; ".join(parts)


def throughput_summary(run_dir: Path, warmup: int | None = None) -> ThroughputSummary:
    """Summarise ``run_dir/metrics.jsonl`` (rank 0's logged steps; ``run.json`` gives the world size).
    ``warmup`` logged steps are left out; the default is the run summary's (``records.WARMUP_STEPS``), so
    both report the same steps (the summary a mean, this the median, which one slow step cannot move)."""
    if warmup is None:
        from .records import WARMUP_STEPS  # imports torch: only when the default is asked for

        warmup = WARMUP_STEPS

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise ContainerError(f"{metrics} not found: is {run_dir} a titan-recipes run directory that logged steps?")
    rows = [row for row in read_metrics(metrics) if TPS_KEY in row]
    if warmup < 0:
        raise ContainerError(f"warmup must be >= 0 logged steps, got {warmup}.")
    if len(rows) <= warmup:
        raise ContainerError(
            f"{metrics} has {len(rows)} logged training step(s) and the first {warmup} are warm-up: nothing left to "
            f"measure. Train more steps (--training.steps) or log more often (--metrics.log_freq 1)."
        )
    measured = rows[warmup:]
    run_file = run_dir / RUN_FILE
    world_size = int(json.loads(run_file.read_text())["world_size"]) if run_file.is_file() else 1

    def median(key: str) -> float | None:
        values = [float(row[key]) for row in measured if key in row]
        return statistics.median(values) if values else None

    memory = [float(row[PEAK_MEMORY_KEY]) for row in measured if PEAK_MEMORY_KEY in row]
    return ThroughputSummary(
        steps=[int(row["step"]) for row in measured],
        world_size=world_size,
        tokens_per_s=median(TPS_KEY),
        mfu_percent=median(MFU_KEY),
        tflops=median(TFLOPS_KEY),
        peak_memory_gib=max(memory) if memory else None,
    )


def require_cuda() -> int:
    """Number of visible CUDA GPUs; a clear error when there are none."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    raise ContainerError(
        f"no CUDA GPU visible (torch.cuda.is_available() is False; torch {torch.__version__} is {build}, "
        f"python {sys.executable}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
        "Run this on a GPU node inside the image (srun --gpus-per-node=N --container-image=titan-recipes.sqsh "
        "/opt/venv/bin/titan-recipes image gpu recipes/debug), or `PYTHON=<python of a CUDA torch> nox -s gpu`; "
        "check the driver with nvidia-smi and that the container has GPU access (docker run --gpus all)."
    )


def gpu_train_command(recipe: Path, nproc: int, overrides: list[str], run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """``run_train.sh`` of ``recipe`` with ``overrides``, and the variables it reads."""
    script = Path(recipe) / "run_train.sh"
    if not script.is_file():
        raise ContainerError(f"{script} not found: RECIPE must be a recipe directory such as recipes/debug.")
    return [str(script), *overrides], {"NGPU": str(nproc), "RUN_DIR": str(run_dir), "PYTHON": sys.executable}


def run_gpu_check(recipe: Path, nproc: int | None, extra: list[str], runs: Path, warmup: int | None) -> int:
    """Train ``recipe`` on this node's GPUs, compare with its fixture for this GPU type, print throughput.
    Returns 0 on a fixture match, 1 on a mismatch or when the fixture has no entry for this key."""
    from . import fixtures as fx

    visible = require_cuda()
    nproc = nproc or visible
    if nproc > visible:
        raise ContainerError(f"--nproc {nproc} but only {visible} CUDA GPU(s) are visible on this node.")
    key = fx.current_key(nproc)
    try:
        entry = fx.get_entry(recipe, key)
    except fx.FixtureError as e:
        entry = None
        print(f"note: {e}", flush=True)
    overrides = (entry["overrides"] if entry else []) + extra
    run_dir = Path(runs) / f"{Path(recipe).resolve().name}-gpu{nproc}-{time.strftime('%Y%m%d-%H%M%S')}"
    command, env = gpu_train_command(recipe, nproc, overrides, run_dir)
    print(f"+ {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} {shlex.join(command)}", flush=True)
    proc = subprocess.run(command, env={**os.environ, **env})
    if proc.returncode != 0:
        raise ContainerError(f"training failed (exit {proc.returncode}); its log is {run_dir}/train.log")
    print(throughput_summary(run_dir, warmup=warmup).format())
    if entry is None:
        print(f"no fixture entry {key}: throughput measured, losses not checked (record one with "
              f"`titan-recipes fixtures regen {recipe} --nproc {nproc} --repeats 3`).")
        return 1
    if extra:
        print(f"note: extra overrides {extra} change the run, so its losses may differ from the fixture's.")
    result = fx.check_run(recipe, run_dir, key=key)
    print(result.table())
    print(f"run directory: {run_dir}")
    return 0 if result.ok else 1
