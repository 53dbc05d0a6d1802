"""Run records: what a launch was and what it measured, written into its dump folder (rank 0).

- ``run.json``: argv, the command-line overrides (``--section.key value`` pairs) apart from argv,
  resolved config, git SHA + dirty flag, package versions, host, device, hardware (CPU model, cores,
  memory, GPUs) and container (runtime, image, digest: what is knowable, ``None`` otherwise), written
  when the Trainer starts.
- ``metrics.jsonl``: one JSON object per logged step with full-precision metrics (loss, grad norm,
  throughput, ...). :mod:`titan_recipes.fixtures` reads the losses from here.
- ``summary.json``: written when the Trainer closes (end of training, ``launch.stop_at_step``,
  preemption or an exception): final step and loss, mean tokens/s without the warm-up steps, wall
  time, peak memory, exit reason. A relaunch in the same directory rewrites it for its own launch.

The metrics file is fed by wrapping the metric logger of torchtitan's MetricsProcessor, so every
value torchtitan sends to TensorBoard/W&B also lands in the JSONL, with no change to the train loop.
The summary comes from :class:`RecipeMetricsProcessor`: the Trainer asks it ``should_log(step)`` every
step (so it knows the last step even between logged ones) and closes it in ``Trainer.close()``, which
torchtitan's ``main`` calls on success and, inside its ``except``, on failure.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torchtitan.components.metrics import BaseLogger, MetricsProcessor

from .run_files import (  # noqa: F401  (re-exported: the names every reader of a run uses)
    LOSS_KEY, METRICS_FILE, PEAK_MEMORY_KEY, RUN_FILE, SUMMARY_FILE, TPS_KEY, parse_overrides, read_metrics,
)

VERSIONED_PACKAGES = (
    "torch", "torchtitan", "torchdata", "tokenizers", "sentencepiece", "mosaicml-streaming", "numpy", "tyro",
)
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables that change which CPU kernels run, recorded in ``run.json``'s hardware."""
WARMUP_STEPS = 3
"""Steps at the start of each launch left out of the summary's mean tokens/s: the first steps compile
(``compile.enable``), warm up the allocator and fill the loader's prefetch queue."""
IMAGE_ENV = "TITAN_RECIPES_IMAGE"
"""Environment variable naming the container image (``repo:tag``) the run is in; the image sets it."""
IMAGE_DIGEST_ENV = "TITAN_RECIPES_IMAGE_DIGEST"
"""Environment variable holding the image digest (``sha256:...``); set by the image build or the job
script (a container cannot see its own digest)."""

logger = logging.getLogger(__name__)


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def git_state(cwd: Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        # Expected-loss fixtures do not change a run, and `fixtures regen` edits one between its entries.
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                 ":(top,exclude,glob)**/expected_loss.json"],
                cwd=cwd, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
        return {"sha": sha, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"sha": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({os.cpu_count()} cores)"


def _read_os_release(path: Path) -> dict[str, str]:
    """``key=value`` lines (podman's /run/.containerenv, /etc/os-release) into a dict."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip('"') for k, _, v in (line.partition("=") for line in lines) if k}


def container_info(root: Path = Path("/"), env: dict[str, str] | None = None) -> dict[str, Any]:
    """The container the run is in, as far as it is knowable from inside; ``None`` fields otherwise.

    runtime: ``enroot`` (pyxis) when ENROOT_*/PYXIS_* variables are set, ``podman`` when
    ``/run/.containerenv`` exists (its ``image`` and ``imageid`` lines are read when podman writes them),
    ``docker`` when ``/.dockerenv`` exists. image / digest: from :data:`IMAGE_ENV` and
    :data:`IMAGE_DIGEST_ENV` when set (podman's ``imageid`` otherwise). ``slurm_job_id`` ties a pyxis run
    to ``sacct`` (``--container-image``)."""
    env = os.environ if env is None else env
    runtime = image = digest = None
    if any(k.startswith(("ENROOT_", "PYXIS_")) for k in env):
        runtime = "enroot"
    elif (root / "run" / ".containerenv").is_file():
        runtime = "podman"
        podman = _read_os_release(root / "run" / ".containerenv")
        image, digest = podman.get("image") or None, podman.get("imageid") or None
    elif (root / ".dockerenv").is_file():
        runtime = "docker"
    return {
        "runtime": runtime,
        "image": env.get(IMAGE_ENV) or image,
        "digest": env.get(IMAGE_DIGEST_ENV) or digest,
        "slurm_job_id": env.get("SLURM_JOB_ID"),
    }


def hardware() -> dict[str, Any]:
    """CPU model, cores (all, and those this process may use), memory and GPUs (name, GiB)."""
    cpu_model = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        memory = None
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": None if memory is None else round(memory, 1),
        "gpus": gpus,
        # What decides a CPU run's last bits (fixtures.cpu_variants): ATen's kernel level, the threads,
        # and the variables that limit them, when set.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
    }


def write_run_record(job_config, argv: list[str] | None = None) -> Path | None:
    """Write ``run.json`` into the dump folder (rank 0). Returns its path."""
    if not _is_rank0():
        return None
    folder = Path(job_config.job.dump_folder)
    folder.mkdir(parents=True, exist_ok=True)
    argv = list(sys.argv if argv is None else argv)
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": argv,
        "overrides": parse_overrides(argv[1:]),
        "config_file": job_config.job.config_file,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "host": socket.gethostname(),
        "device": device_description(),
        "hardware": hardware(),
        "container": container_info(),
        "git": git_state(),
        "versions": package_versions(),
        "config": dataclasses.asdict(job_config),
    }
    path = folder / RUN_FILE
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


@dataclasses.dataclass
class LaunchStats:
    """Running aggregates of one launch's logged rows, for its summary (constant memory however long
    the launch is)."""

    first_step: int | None = None
    """First step that logged a loss in this launch (a resumed launch starts past 1)."""
    final_loss: float | None = None
    final_loss_step: int | None = None
    tps_sum: float = 0.0
    """Sum of ``throughput(tps)`` over logged steps from ``first_step + WARMUP_STEPS`` on."""
    tps_count: int = 0
    peak_memory_gib: float | None = None

    def add(self, row: dict[str, Any]) -> None:
        if LOSS_KEY in row:
            if self.first_step is None:
                self.first_step = row["step"]
            self.final_loss, self.final_loss_step = row[LOSS_KEY], row["step"]
            if TPS_KEY in row and row["step"] >= self.first_step + WARMUP_STEPS:
                self.tps_sum += row[TPS_KEY]
                self.tps_count += 1
        if PEAK_MEMORY_KEY in row:
            self.peak_memory_gib = max(row[PEAK_MEMORY_KEY], self.peak_memory_gib or 0.0)

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> "LaunchStats":
        stats = cls()
        for row in rows:
            stats.add(row)
        return stats


class JsonlMetricsLogger(BaseLogger):
    """Tee: forwards to the wrapped logger and appends ``{"step": n, ...metrics}`` to a JSONL file;
    keeps this launch's :class:`LaunchStats` for the summary."""

    def __init__(self, inner: BaseLogger, path: Path):
        self.inner = inner
        self.stats = LaunchStats()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.inner.log(metrics, step)
        row = {"step": step, **{k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}}
        self.stats.add(row)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self.inner.close()
        self._file.close()


def summarize(
    stats: LaunchStats, *, last_step: int | None, training_steps: int, stop_at_step: int,
    preempted: bool, error: BaseException | None, wall_time_s: float,
) -> dict[str, Any]:
    """The ``summary.json`` of one launch. ``exit_reason``: ``diverged`` (a non-finite loss, gradient
    norm or weights stopped the run, titan_recipes.guard), ``disk_full`` (a checkpoint save ran out of
    space, titan_recipes.checkpointing), ``error`` (any other exception is propagating), ``preempted`` (a
    signal stop), ``completed`` (``training.steps`` reached), ``stop_at_step`` (``launch.stop_at_step``
    reached), else ``stopped``. An exception names its reason with an ``exit_reason`` attribute."""
    if error is not None:
        reason = getattr(error, "exit_reason", None) or "error"
    elif preempted:
        reason = "preempted"
    elif last_step is not None and last_step >= training_steps:
        reason = "completed"
    elif last_step is not None and stop_at_step > 0 and last_step >= stop_at_step:
        reason = "stop_at_step"
    else:
        reason = "stopped"
    return {
        "exit_reason": reason,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "first_step": stats.first_step,
        "final_step": last_step,
        "training_steps": training_steps,
        "final_loss": stats.final_loss,
        "final_loss_step": stats.final_loss_step,
        "tokens_per_s_mean": stats.tps_sum / stats.tps_count if stats.tps_count else None,
        "tokens_per_s_steps": stats.tps_count,
        "tokens_per_s_note": f"per device; mean over the logged steps after the first {WARMUP_STEPS} of this launch",
        "peak_memory_gib": stats.peak_memory_gib,
        "wall_time_s": round(wall_time_s, 3),
    }


class RecipeMetricsProcessor(MetricsProcessor):
    """torchtitan's MetricsProcessor that also writes ``summary.json`` when the Trainer closes it."""

    def __init__(self, job_config, parallel_dims, tag: str | None = None):
        super().__init__(job_config, parallel_dims, tag)
        self._start = time.perf_counter()
        self.last_step: int | None = None

    def should_log(self, step: int) -> bool:
        self.last_step = step  # the Trainer asks once per training step
        return super().should_log(step)

    def close(self) -> None:
        if isinstance(self.logger, JsonlMetricsLogger):
            self.write_summary(sys.exc_info()[1])
        super().close()

    def write_summary(self, error: BaseException | None) -> Path:
        from .preemption import PREEMPTED_FILE

        cfg = self.job_config
        launch = getattr(cfg, "launch", None)
        folder = Path(cfg.job.dump_folder)
        summary = summarize(
            self.logger.stats,
            last_step=self.last_step,
            training_steps=cfg.training.steps,
            stop_at_step=launch.stop_at_step if launch is not None else -1,
            preempted=(folder / PREEMPTED_FILE).is_file(),
            error=error,
            wall_time_s=time.perf_counter() - self._start,
        )
        path = folder / SUMMARY_FILE
        try:
            path.write_text(json.dumps(summary, indent=2) + "\n")
        except OSError as e:  # e.g. the disk is full: the launch's own error must stay the one raised
            logger.error("Could not write %s (%s); the launch's outcome was: %s", path, e, summary["exit_reason"])
        return path


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag: str | None = None) -> MetricsProcessor:
    """torchtitan's metrics processor, with ``metrics.jsonl`` (and, untagged, ``summary.json``) in the
    dump folder on rank 0."""
    processor = (RecipeMetricsProcessor if tag is None else MetricsProcessor)(job_config, parallel_dims, tag)
    if _is_rank0():
        name = METRICS_FILE if tag is None else f"metrics_{tag}.jsonl"
        processor.logger = JsonlMetricsLogger(processor.logger, Path(job_config.job.dump_folder) / name)
    return processor
