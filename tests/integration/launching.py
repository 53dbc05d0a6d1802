"""Shared helpers: launching recipes for real, as a user would (run_train.sh under torchrun)."""

from __future__ import annotations

import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
DEBUG_RECIPE = REPO / "recipes" / "debug"


def launch(recipe: Path, nproc: int, run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Train ``recipe`` through its run_train.sh; returns the completed process (stdout+stderr)."""
    from titan_recipes.fixtures import launch_recipe

    _, proc = launch_recipe(recipe, nproc, list(overrides), run_dir, env=env)
    return proc


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"training failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
