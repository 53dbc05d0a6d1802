"""Which checkpoint steps of a run ``titan-recipes eval`` scores: ``--steps all``, ``last`` or ``N,M``.

The steps a run has are its ``step-N`` checkpoint folders (under ``checkpoint.folder`` of the run's
``run.json``, ``checkpoint`` by default) that hold weights: full or weights-only. An incomplete one (an
interrupted save) is skipped by ``all`` and refused by name. Standard library only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..checkpoint_steps import checkpoint_steps
from ..errors import ConfigError
from ..run_files import RUN_FILE


def checkpoint_folder(run_dir: Path) -> Path:
    """``RUN_DIR/<checkpoint.folder>`` as the run recorded it in ``run.json`` (``checkpoint`` without one)."""
    folder = "checkpoint"
    run_file = Path(run_dir) / RUN_FILE
    if run_file.is_file():
        folder = json.loads(run_file.read_text()).get("config", {}).get("checkpoint", {}).get("folder") or folder
    return Path(run_dir) / folder


def available_steps(run_dir: Path) -> list[int]:
    """Steps with a usable (full or weights-only) checkpoint, ascending."""
    return sorted(step for step, kind in checkpoint_steps(os.fspath(checkpoint_folder(run_dir))) if kind != "incomplete")


def select_steps(spec: str, available: list[int], where: str = "the run") -> list[int]:
    """The steps ``spec`` names, ascending and without repeats: ``all``, ``last`` or a comma list of
    step numbers, each of which must be in ``available``."""
    if not available:
        raise ConfigError(f"{where} has no checkpoint to evaluate (no complete step-N folder); train with "
                          "checkpoint.enable = true and a checkpoint.interval below training.steps.")
    spec = spec.strip()
    if spec == "all":
        return sorted(available)
    if spec == "last":
        return [max(available)]
    try:
        wanted = sorted({int(s) for s in spec.split(",") if s.strip()})
    except ValueError:
        raise ConfigError(f"--steps {spec!r}: give 'all', 'last' or step numbers such as 10,20 "
                          f"(this run has {available}).") from None
    if not wanted:
        raise ConfigError(f"--steps {spec!r} names no step; give 'all', 'last' or step numbers (this run has {available}).")
    missing = [s for s in wanted if s not in available]
    if missing:
        raise ConfigError(f"--steps: {where} has no complete checkpoint for step(s) {missing}; "
                          f"it has {available} (pass --steps all or some of those).")
    return wanted
