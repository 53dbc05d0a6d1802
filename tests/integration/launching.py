"""Shared helpers: launching recipes for real, as a user would (run_train.sh under torchrun)."""

from __future__ import annotations

import filecmp
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


REPO = Path(__file__).resolve().parents[2]
DEBUG_RECIPE = REPO / "recipes" / "debug"
SHORT = ("--training.steps", "4", "--checkpoint.interval", "2")
"""4 steps of the debug recipe: a full checkpoint at step 2, the weights-only final save at step 4
(conftest.py's shared ``short_debug_run``)."""


def launch(recipe: Path, nproc: int, run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Train ``recipe`` through its run_train.sh; returns the completed process (stdout+stderr)."""
    from titan_recipes.fixtures import launch_recipe

    _, proc = launch_recipe(recipe, nproc, list(overrides), run_dir, env=env)
    return proc


def start_recipe(run_dir: Path, *overrides: str, nproc: int = 1, recipe: Path = DEBUG_RECIPE,
                 env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    """run_train.sh in a new session (its own process group, as a Slurm job step or a terminal starts it),
    not waited for; its output goes to ``<run_dir>.out`` beside the run directory. Returns both."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out = run_dir.parent / f"{run_dir.name}.out"
    full_env = {**os.environ, "NGPU": str(nproc), "RUN_DIR": str(run_dir), "PYTHON": sys.executable, **(env or {})}
    with out.open("w") as f:
        proc = subprocess.Popen([str(recipe / "run_train.sh"), *overrides], env=full_env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, out


def wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, log: Callable[[], str], timeout_s: float,
                  poll_s: float = 0.1) -> None:
    """Return once ``metrics`` (a run's metrics.jsonl) has logged ``step``; an AssertionError with the end of
    ``log()`` if the launch ends first or ``timeout_s`` passes."""
    from titan_recipes.records import read_metrics

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before step {step}:\n{log()[-6000:]}")
        if metrics.is_file() and any(r.get("step", 0) >= step for r in read_metrics(metrics)):
            return
        time.sleep(poll_s)
    raise AssertionError(f"step {step} not logged within {timeout_s} s:\n{log()[-6000:]}")


def finish(proc: subprocess.Popen, out: Path, timeout_s: float) -> str:
    """Wait for a launch started in its own session; kill its process group on a timeout. Returns its output."""
    import signal

    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return out.read_text()


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"training failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"


def assert_same_checkpoint(a: Path, b: Path) -> None:
    """Two DCP checkpoint directories hold bitwise-identical tensor files and the same state-dict
    layout. (.metadata also records the checkpoint's path and a random save id, so it is compared
    through its state-dict layout instead of byte for byte.)"""
    files = sorted(p.name for p in a.iterdir() if p.suffix == ".distcp")
    assert files and files == sorted(p.name for p in b.iterdir() if p.suffix == ".distcp")
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert mismatch == [] and errors == [], f"checkpoint files differ: {mismatch} {errors}"
    meta_a, meta_b = (pickle.loads((d / ".metadata").read_bytes()) for d in (a, b))
    assert meta_a.state_dict_metadata == meta_b.state_dict_metadata


# -- the process table, as a job scheduler sees it (Linux /proc) -----------------------------------------


def process_parents() -> dict[int, int]:
    """pid -> parent pid of every process, from one pass over /proc."""
    table = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                table[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return table


def process_children(pid: int, table: dict[int, int] | None = None) -> list[int]:
    table = process_parents() if table is None else table
    return [p for p, parent in table.items() if parent == pid]


def process_descendants(pid: int, table: dict[int, int] | None = None) -> list[int]:
    table = process_parents() if table is None else table
    out, todo = [], [pid]
    while todo:
        kids = process_children(todo.pop(), table)
        out += kids
        todo += kids
    return out


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""

