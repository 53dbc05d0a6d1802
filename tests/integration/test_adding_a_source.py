"""docs/adding-a-data-source.md, checked: a source that lives in the test folder (``tiny_source/``)
registers through the one door (``titan_recipes.data.registry.register_source``), brings its config
section, is validated beside its fields, and trains the debug recipe through run_train.sh."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

from launching import DEBUG_RECIPE, assert_ok, launch

from titan_recipes.fixtures import run_losses

SOURCE_DIR = Path(__file__).resolve().parent / "tiny_source"
PYTHONPATH = os.pathsep.join([str(SOURCE_DIR), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)

IN_A_FRESH_PROCESS = """
import json, sys
from titan_recipes.data import registry
before = sorted(registry.SOURCES)
from torchtitan.config import ConfigManager
from titan_recipes.errors import ConfigError
from titan_recipes.config import validate_config
config = ConfigManager().parse_args(sys.argv[1:])
out = {"before": before, "after": sorted(registry.SOURCES), "stride": config.tiny_counting.stride,
       "source": registry.find_source("tiny_counting").summary}
config.tiny_counting.stride = 0
try:
    validate_config(config)
except ConfigError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_a_source_from_another_folder_registers_with_its_section():
    toml = DEBUG_RECIPE / "train.toml"
    proc = subprocess.run(
        [sys.executable, "-c", IN_A_FRESH_PROCESS, "--job.config_file", str(toml), "--job.custom_config_module",
         "tiny_counting.job_config", "--training.dataset", "tiny_counting", "--tiny_counting.stride", "5"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": PYTHONPATH}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "tiny_counting" not in out["before"] and "tiny_counting" in out["after"]
    assert out["stride"] == 5 and out["source"] == "counting token ids (a test source)"
    assert out["error"] == "tiny_counting.stride and tiny_counting.samples must be >= 1, got 0 and 64."


def test_the_debug_recipe_trains_on_the_tiny_source(tmp_path):
    run_dir = tmp_path / "run"
    proc = launch(
        DEBUG_RECIPE, 1, run_dir, "--job.custom_config_module", "tiny_counting.job_config",
        "--training.dataset", "tiny_counting", "--training.steps", "4", "--checkpoint.enable",
        "--checkpoint.interval", "2", env={"PYTHONPATH": PYTHONPATH, "TITAN_RECIPES_NO_FIXTURE_CHECK": "1"},
    )
    assert_ok(proc)
    losses = run_losses(run_dir)
    assert sorted(losses) == [1, 2, 3, 4] and all(math.isfinite(v) for v in losses.values())
    # step 2 is a full checkpoint (the last step's is model-only, checkpoint.last_save_model_only)
    meta = pickle.loads((run_dir / "checkpoint" / "step-2" / ".metadata").read_bytes())
    keys = sorted(k for k in meta.state_dict_metadata if k.startswith("dataloader."))
    assert keys == [f"dataloader.tiny_counting.{k}" for k in ("consumed_samples", "fingerprint", "num_samples")]
