"""A configuration error prints its message once, without tracebacks, and the launch exits non-zero
(2, titan_recipes.train.CONFIG_ERROR_EXIT): through the real run_train.sh (torchrun's failure report is
left off the console and kept in train.log), and from ``python -m titan_recipes.train`` alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launching import DEBUG_RECIPE, REPO, launch

from titan_recipes.train import CONFIG_ERROR_EXIT, CONFIG_ERROR_LINE

TORCHRUN_REPORT = ("Traceback (most recent call last)", "ChildFailedError", "failed (exitcode: 2)", "Root Cause")


def test_unknown_flag_through_run_train_sh(tmp_path):
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--training.stepz", "5")
    console = proc.stdout + proc.stderr
    assert proc.returncode == CONFIG_ERROR_EXIT, console[-4000:]
    assert console.count("Unrecognized options: --training.stepz") == 1, console[-4000:]
    assert console.count("--training.steps INT") == 1  # tyro's suggestion, once
    assert console.count(CONFIG_ERROR_LINE) == 1
    for line in TORCHRUN_REPORT:
        assert line not in console, f"{line!r} on the console:\n{console[-4000:]}"
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Unrecognized options: --training.stepz" in log and "ChildFailedError" in log  # the log keeps all


def test_config_error_from_the_trainer_is_one_message(tmp_path):
    """A ConfigError raised by our validation: message and CONFIG_ERROR_LINE on stderr, no traceback,
    and under torchrun the message in the worker's error file (TORCHELASTIC_ERROR_FILE)."""
    toml = tmp_path / "train.toml"
    toml.write_text((DEBUG_RECIPE / "train.toml").read_text().replace("steps = 20", 'steps = "twenty"'))
    error_file = tmp_path / "error.json"
    proc = subprocess.run(
        [sys.executable, "-m", "titan_recipes.train", "--job.config_file", str(toml),
         "--job.dump_folder", str(tmp_path / "run")],
        cwd=REPO, env={**os.environ, "TORCHELASTIC_ERROR_FILE": str(error_file)},
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == CONFIG_ERROR_EXIT, proc.stderr[-4000:]
    assert proc.stderr.count("ConfigError: Config key `training.steps` has the wrong type") == 1, proc.stderr[-4000:]
    assert "'twenty'" in proc.stderr and "--training.steps" in proc.stderr
    assert proc.stderr.rstrip().endswith(CONFIG_ERROR_LINE)
    assert "Traceback" not in proc.stderr + proc.stdout
    recorded = json.loads(error_file.read_text())["message"]["message"]
    assert recorded.startswith("ConfigError: Config key `training.steps`")
