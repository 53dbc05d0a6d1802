"""Out-of-range config values and broken TOML files are ConfigErrors naming the key (or file), the value
and what is allowed (issue 14). Built through torchtitan's ConfigManager, as a launch builds them; no
training."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from titan_recipes import inject
from torchtitan.config import ConfigManager

from titan_recipes.errors import ConfigError
from titan_recipes.config import check_config_file, load_toml, validate_values

REPO_ROOT = Path(__file__).resolve().parents[3]

CUSTOM = ["--job.custom_config_module", "titan_recipes.config"]


def parse(*args: str):
    return ConfigManager().parse_args([*CUSTOM, *args])


@pytest.fixture(autouse=True)
def no_world_size(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.mark.parametrize(
    "args, key, value",
    [
        (["--training.steps", "0"], "training.steps", "0"),
        (["--training.steps", "-5"], "training.steps", "-5"),
        (["--training.seq_len", "0"], "training.seq_len", "0"),
        (["--checkpoint.interval", "0"], "checkpoint.interval", "0"),
        (["--training.local_batch_size", "0"], "training.local_batch_size", "0"),
        (["--training.global_batch_size", "0"], "training.global_batch_size", "0"),
        (["--training.gc_freq", "0"], "training.gc_freq", "0"),
        (["--metrics.log_freq", "0"], "metrics.log_freq", "0"),
        (["--checkpoint.keep_latest_k", "-1"], "checkpoint.keep_latest_k", "-1"),
        (["--checkpoint.load_step", "-2"], "checkpoint.load_step", "-2"),
        (["--lr_scheduler.warmup_steps", "-1"], "lr_scheduler.warmup_steps", "-1"),
        (["--lr_scheduler.total_steps", "0"], "lr_scheduler.total_steps", "0"),
        (["--lr_scheduler.min_lr_factor", "1.5"], "lr_scheduler.min_lr_factor", "1.5"),
        (["--lr_scheduler.decay_ratio", "2"], "lr_scheduler.decay_ratio", "2"),
        (["--optimizer.lr", "-0.001"], "optimizer.lr", "-0.001"),
        (["--optimizer.lr", "nan"], "optimizer.lr", "nan"),
        (["--optimizer.eps", "-1e-8"], "optimizer.eps", "-1e-08"),
        (["--optimizer.weight_decay", "-0.1"], "optimizer.weight_decay", "-0.1"),
        (["--training.max_norm", "0"], "training.max_norm", "0"),
        (["--training.max_norm", "-1"], "training.max_norm", "-1"),
        (["--parallelism.tensor_parallel_degree", "0"], "parallelism.tensor_parallel_degree", "0"),
        (["--parallelism.data_parallel_shard_degree", "0"], "parallelism.data_parallel_shard_degree", "0"),
        (["--validation.enable", "--validation.freq", "0"], "validation.freq", "0"),
        (["--profiling.enable_profiling", "--profiling.profile_freq", "0"], "profiling.profile_freq", "0"),
    ],
)
def test_out_of_range_value_names_key_and_value(args, key, value):
    config = parse(*args)
    with pytest.raises(ConfigError) as excinfo:
        validate_values(config)
    message = str(excinfo.value)
    assert message.startswith(f"{key} must be"), message
    assert f"got {value}" in message, message


def test_defaults_and_every_recipe_pass(monkeypatch):
    validate_values(parse())
    for toml in sorted((REPO_ROOT / "recipes").glob("*/*.toml")):
        monkeypatch.setenv("WORLD_SIZE", "2")
        validate_values(parse("--job.config_file", str(toml)))


@pytest.mark.parametrize("args", [["--optimizer.lr", "0"], ["--training.max_norm", "inf"],
                                  ["--checkpoint.keep_latest_k", "0"], ["--lr_scheduler.warmup_steps", "0"],
                                  ["--validation.freq", "0"]])  # validation off: its keys are not used
def test_edge_values_that_mean_something_pass(args):
    validate_values(parse(*args))


def test_global_batch_size_must_divide_into_micro_batches(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = parse("--training.local_batch_size", "4", "--training.global_batch_size", "12")
    with pytest.raises(ConfigError, match=r"training\.global_batch_size \(12\) must be a multiple of "
                                          r"training\.local_batch_size \(4\) x the data-parallel degree \(2 .*= 8"):
        validate_values(config)
    config.training.global_batch_size = 16  # two accumulation steps
    validate_values(config)
    monkeypatch.setenv("WORLD_SIZE", "1")
    config.training.global_batch_size = 12
    validate_values(config)


def test_parallel_degrees_must_multiply_to_the_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    config = parse("--parallelism.data_parallel_shard_degree", "2")
    with pytest.raises(ConfigError, match=r"must equal WORLD_SIZE \(3\)"):
        validate_values(config)


_TRAINER_SCRIPT = """
import json, sys
from titan_recipes.trainer import RecipeTrainer  # first: it applies the CPU fixes before torchtitan is imported
from torchtitan.config import ConfigManager
from titan_recipes.errors import ConfigError

out = {}
for name, args in json.loads(sys.argv[1]).items():
    config = ConfigManager().parse_args(args)
    try:
        RecipeTrainer(config)
        out[name] = "no error"
    except ConfigError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def test_the_trainer_refuses_before_building_anything(tmp_path):
    """The real RecipeTrainer raises the range errors before it writes anything (the run record, the
    lock) and before checkpoint.interval divides anything. In a fresh interpreter: RecipeTrainer must be
    built before any torchtitan module copies the device type, which the rest of a test session has
    long done."""
    import json
    import subprocess

    cases = {
        "training.steps": ["--training.steps", "0"],
        "training.seq_len": ["--training.seq_len", "0"],
        # launch.stop_at_step is checked against the interval: the range check must come first.
        "checkpoint.interval": ["--checkpoint.enable", "--checkpoint.interval", "0", "--launch.stop_at_step", "4"],
    }
    runs = {key: tmp_path / key.replace(".", "_") for key in cases}
    argv = {key: [*CUSTOM, "--job.config_file", str(REPO_ROOT / "recipes/debug/train.toml"),
                  "--job.dump_folder", str(runs[key]), *args] for key, args in cases.items()}
    proc = subprocess.run([sys.executable, "-c", _TRAINER_SCRIPT, json.dumps(argv)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    messages = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in cases:
        assert messages[key].startswith(f"{key} must be >= 1"), (key, messages[key])
        assert not runs[key].exists()  # refused before the run record is written


# -- TOML files ----------------------------------------------------------------------------------------


def test_toml_syntax_error_names_file_line_and_text(tmp_path):
    toml = tmp_path / "broken.toml"
    toml.write_text('[job]\ndescription = "x"\n\n[training]\nsteps 10\n', encoding="utf-8")
    with pytest.raises(ConfigError) as excinfo:
        load_toml(toml)
    message = str(excinfo.value)
    assert f"TOML syntax error in job config file {toml}:5:" in message
    assert "Expected '=' after a key" in message
    assert "line 5: steps 10" in message


def test_check_config_file_finds_the_flag_as_torchtitan_does(tmp_path):
    toml = tmp_path / "dup.toml"
    toml.write_text("[training]\nsteps = 1\nsteps = 2\n", encoding="utf-8")
    for args in (["--job.config_file", str(toml)], [f"--job.config-file={toml}", "--training.steps", "3"]):
        with pytest.raises(ConfigError, match=rf"(?s){toml}:3:10: Cannot overwrite a value.*line 3: steps = 2"):
            check_config_file(args)
    check_config_file(["--training.steps", "3"])  # no file: nothing to check
    with pytest.raises(ConfigError, match=r"Job config file not found: '.*missing\.toml'"):
        check_config_file(["--job.config_file", str(tmp_path / "missing.toml")])


def test_train_main_reports_the_toml_error_before_torchtitan_parses(tmp_path, monkeypatch):
    from titan_recipes import train

    toml = tmp_path / "broken.toml"
    toml.write_text("[training\nsteps = 10\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["titan_recipes.train", "--job.config_file", str(toml)])
    with pytest.raises(ConfigError, match=rf"TOML syntax error in job config file {toml}:1:"):
        train.main()


def test_toml_values_are_kept(tmp_path):
    toml = tmp_path / "ok.toml"
    toml.write_text("[training]\nsteps = 3\n", encoding="utf-8")
    assert load_toml(toml) == {"training": {"steps": 3}}


def test_inject_load_job_config_names_the_broken_file(tmp_path):
    toml = tmp_path / "broken.toml"
    toml.write_text('[training]\nsteps = "10\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"TOML syntax error in job config file {toml}:2:"):
        inject.load_job_config(toml)
