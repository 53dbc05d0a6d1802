"""Shared helpers: launching recipes for real, as a user would (run_train.sh under torchrun)."""

from __future__ import annotations

import filecmp
import pickle
import subprocess
from pathlib import Path


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

