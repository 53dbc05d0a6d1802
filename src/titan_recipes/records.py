"""Run records: what a launch was and what it measured, written into its dump folder (rank 0).

- ``run.json``: argv, resolved config, git SHA + dirty flag, package versions, host and device,
  written when the Trainer starts.
- ``metrics.jsonl``: one JSON object per logged step with full-precision metrics (loss, grad norm,
  throughput, ...). :mod:`titan_recipes.fixtures` reads the losses from here.

The metrics file is fed by wrapping the metric logger of torchtitan's MetricsProcessor, so every
value torchtitan sends to TensorBoard/W&B also lands in the JSONL, with no change to the train loop.
"""

from __future__ import annotations

import dataclasses
import json
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

METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
VERSIONED_PACKAGES = (
    "torch", "torchtitan", "torchdata", "tokenizers", "sentencepiece", "mosaicml-streaming", "numpy", "tyro",
)


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


def write_run_record(job_config, argv: list[str] | None = None) -> Path | None:
    """Write ``run.json`` into the dump folder (rank 0). Returns its path."""
    if not _is_rank0():
        return None
    folder = Path(job_config.job.dump_folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": list(sys.argv if argv is None else argv),
        "config_file": job_config.job.config_file,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "host": socket.gethostname(),
        "device": device_description(),
        "git": git_state(),
        "versions": package_versions(),
        "config": dataclasses.asdict(job_config),
    }
    path = folder / RUN_FILE
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return path


class JsonlMetricsLogger(BaseLogger):
    """Tee: forwards to the wrapped logger and appends ``{"step": n, ...metrics}`` to a JSONL file."""

    def __init__(self, inner: BaseLogger, path: Path):
        self.inner = inner
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.inner.log(metrics, step)
        row = {"step": step, **{k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self.inner.close()
        self._file.close()


def build_metrics_processor(job_config, parallel_dims, model_args=None, tag: str | None = None) -> MetricsProcessor:
    """torchtitan's metrics processor, with ``metrics.jsonl`` in the dump folder on rank 0."""
    processor = MetricsProcessor(job_config, parallel_dims, tag)
    if _is_rank0():
        name = METRICS_FILE if tag is None else f"metrics_{tag}.jsonl"
        processor.logger = JsonlMetricsLogger(processor.logger, Path(job_config.job.dump_folder) / name)
    return processor


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """One merged row per step of a ``metrics.jsonl``. Training and validation log separate rows for
    the same step, so rows are merged; a resumed run re-logs steps, so later values win."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                by_step.setdefault(int(row["step"]), {}).update(row)
    return [by_step[s] for s in sorted(by_step)]
