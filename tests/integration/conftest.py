"""Runs shared by several integration modules (each launch costs ~20 s of CI on 2 cores)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from launching import DEBUG_RECIPE, SHORT, assert_ok, launch


@pytest.fixture(scope="session")
def short_debug_run(tmp_path_factory) -> Path:
    """One debug run with :data:`SHORT`, read by the HF export tests and scored by the eval tests (which
    add ``hf/`` and ``eval*`` files; nothing rewrites its checkpoints)."""
    run_dir = tmp_path_factory.mktemp("runs") / "debug-short"
    assert_ok(launch(DEBUG_RECIPE, 1, run_dir, *SHORT))
    return run_dir


@pytest.fixture
def small_fs(tmp_path):
    """A real 100 MiB tmpfs: one full checkpoint of the debug model (~75 MiB) fits, a second does not."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
