"""Bad input fails fast with a message that names the problem (each is a real launch)."""

from __future__ import annotations

from launching import DEBUG_RECIPE, launch


def _fails_with(proc, *needles):
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    for needle in needles:
        assert needle in out, f"{needle!r} not in output:\n{out[-3000:]}"


def test_unknown_toml_key(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text((DEBUG_RECIPE / "train.toml").read_text().replace("[training]\n", "[training]\nstepz = 3\n"))
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", env={"CONFIG_FILE": str(toml)})
    _fails_with(proc, "Invalid field names", "stepz")


def test_unknown_cli_flag(tmp_path):
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--training.stepz", "3")
    _fails_with(proc, "--training.stepz")


def test_wrong_type_in_toml(tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text((DEBUG_RECIPE / "train.toml").read_text().replace("steps = 20", 'steps = "twenty"'))
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", env={"CONFIG_FILE": str(toml)})
    _fails_with(proc, "ConfigError", "`training.steps`", "'twenty'")


def test_missing_tokenizer_path(tmp_path):
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--model.hf_assets_path", str(tmp_path / "no-tokenizer"))
    _fails_with(proc, "Tokenizer directory not found", "model.hf_assets_path", "no-tokenizer")


def test_missing_dataset(tmp_path):
    proc = launch(
        DEBUG_RECIPE, 1, tmp_path / "run", "--training.dataset", "text",
        "--training.dataset_path", str(tmp_path / "missing.jsonl"),
    )
    _fails_with(proc, "Dataset file not found", "missing.jsonl", "training.dataset_path")


def test_unknown_dataset_name(tmp_path):
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--training.dataset", "shakespeare_typo")
    _fails_with(proc, "shakespeare_typo", "tinyshakespeare")
