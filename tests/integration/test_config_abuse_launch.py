"""``--training.steps 0`` used to exit 0 without a word (issue 14): one real launch through run_train.sh
shows it now stops before the model is built, non-zero, naming the key and the value. The other
out-of-range values and the TOML syntax error are unit tests (tests/unit/test_config_abuse.py)."""

from __future__ import annotations

from launching import DEBUG_RECIPE, launch


def test_zero_steps_is_a_config_error_not_a_silent_success(tmp_path):
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--training.steps", "0")
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0, console[-4000:]
    assert "training.steps must be >= 1 (the number of optimizer steps to train), got 0" in console, console[-4000:]
    assert not (tmp_path / "run" / "checkpoint").exists()
