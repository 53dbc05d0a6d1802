"""Runs shared by several integration modules (each launch costs ~20 s of CI on 2 cores)."""

from __future__ import annotations

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
