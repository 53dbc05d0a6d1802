"""validate_job_config on the real merged JobConfig, and torchtitan's handling of our config module."""

from __future__ import annotations

import copy

import pytest

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.config import ConfigManager

from titan_recipes.errors import ConfigError
from titan_recipes.data.text.config import TextData
from titan_recipes.config import validate_job_config

CUSTOM = ["--job.custom_config_module", "titan_recipes.config"]


def parse(*args: str):
    return ConfigManager().parse_args([*CUSTOM, *args])


@pytest.fixture(scope="module")
def default_config():
    return parse()


@pytest.fixture
def config(default_config):
    return copy.deepcopy(default_config)


def test_custom_module_adds_text_data_with_defaults(default_config):
    assert isinstance(default_config.text_data, TextData)
    assert default_config.text_data.shuffle is True
    assert default_config.text_data.seed == 1234
    assert default_config.text_data.document_separator == "\n\n"
    # torchtitan's own sections are still there.
    assert isinstance(default_config.training.steps, int)


def test_without_the_custom_module_there_is_no_text_data():
    assert not hasattr(ConfigManager().parse_args([]), "text_data")


def test_cli_overrides_text_data():
    config = parse("--text_data.seed", "7", "--text_data.no-shuffle")  # tyro: booleans are flags
    assert config.text_data.seed == 7
    assert config.text_data.shuffle is False
    validate_job_config(config)


def test_correct_config_passes(default_config):
    validate_job_config(default_config)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("training", "steps", "10"),
        ("training", "seq_len", 2048.0),
        ("training", "dataset_path", 3),
        ("training", "dtype", "float16"),
        ("optimizer", "lr", "3e-4"),
        ("text_data", "seed", "1234"),
        ("text_data", "shuffle", "yes"),
        ("text_data", "document_separator", None),
        ("training", "steps", True),
    ],
)
def test_wrong_type_names_the_key(config, section, key, value):
    setattr(getattr(config, section), key, value)
    with pytest.raises(ConfigError, match=rf"`{section}\.{key}`") as excinfo:
        validate_job_config(config)
    message = str(excinfo.value)
    assert repr(value) in message
    assert f"--{section}.{key}" in message


def test_int_is_accepted_where_a_float_is_expected(config):
    config.optimizer.lr = 1
    validate_job_config(config)


def test_optional_field_accepts_none_and_str(config):
    config.training.dataset_path = None
    validate_job_config(config)
    config.training.dataset_path = "data/corpus.jsonl"
    validate_job_config(config)


def test_nested_section_is_checked(config):
    config.training.dataloader.num_workers = "2"
    with pytest.raises(ConfigError, match=r"`training\.dataloader\.num_workers`"):
        validate_job_config(config)


def test_toml_values_are_read_and_validated(tmp_path):
    toml = tmp_path / "ok.toml"
    toml.write_text(
        '[job]\ncustom_config_module = "titan_recipes.config"\n\n'
        "[training]\nsteps = 3\n\n[text_data]\nseed = 99\nshuffle = false\n",
        encoding="utf-8",
    )
    # The custom module named in the TOML alone is enough (no CLI flag).
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    assert config.training.steps == 3
    assert (config.text_data.seed, config.text_data.shuffle) == (99, False)
    validate_job_config(config)


@pytest.mark.filterwarnings("ignore:The field `training.steps` is annotated")  # tyro notices, accepts it
def test_toml_string_for_an_int_is_caught_by_validation(tmp_path):
    toml = tmp_path / "wrong_type.toml"
    toml.write_text('[training]\nsteps = "10"\n', encoding="utf-8")
    config = parse("--job.config_file", str(toml))
    assert config.training.steps == "10"  # torchtitan does not check value types...
    with pytest.raises(ConfigError, match=r"training\.steps"):  # ...so we do
        validate_job_config(config)


@pytest.mark.parametrize("table, key", [("training", "stepz"), ("text_data", "sead")])
def test_toml_unknown_key_is_rejected_by_torchtitan(tmp_path, table, key):
    toml = tmp_path / "unknown.toml"
    toml.write_text(f"[{table}]\n{key} = 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=key):
        parse("--job.config_file", str(toml))


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_stop_at_step_must_land_on_a_checkpoint(config):
    from titan_recipes.config import validate_launch

    config.checkpoint.enable = True
    config.checkpoint.interval = 10
    config.launch.stop_at_step = 10
    validate_launch(config)
    config.launch.stop_at_step = 15
    with pytest.raises(ConfigError, match=r"launch.stop_at_step = 15 needs .* multiple of checkpoint.interval"):
        validate_launch(config)
    config.launch.stop_at_step = 10
    config.checkpoint.enable = False
    with pytest.raises(ConfigError, match="checkpoint.enable = true"):
        validate_launch(config)
