"""``python -m titan_recipes.train --help`` lists every key of the merged JobConfig, with or without a
config file: torchtitan's and every field of every dataclass in titan_recipes/config/ and the data sources' config.py (the list is
derived from the dataclasses, so a new key is checked without editing this test). ``titan-recipes
--help`` answers without importing torch, torchtitan, duckdb or matplotlib."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.config import ConfigManager, JobConfig

from titan_recipes import config as recipe_config
from titan_recipes import train
from titan_recipes.config import flags

REPO_ROOT = Path(__file__).resolve().parents[3]


def config_keys(cls: type, prefix: str = "") -> list[str]:
    """``section.key`` of every leaf field of a (nested) config dataclass."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation = hints[f.name]
        if dataclasses.is_dataclass(annotation):
            keys += config_keys(annotation, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def flag_pattern(key: str) -> re.Pattern:
    """``--section.key`` as tyro prints it: underscores may appear as hyphens (``--text-data.seed``)."""
    return re.compile("--" + re.escape(key).replace("_", "[-_]") + r"(?![\w.-])")


def test_the_key_list_covers_our_sections():
    """The derivation itself: our sections, their nested tables and the keys added to [model] are found."""
    keys = config_keys(recipe_config.JobConfig)
    for key in ("text_data.seed", "launch.stop_at_step", "mosaic_dataloader.dataset.streams",
                "mosaic_tokenizer.kwargs", "blendcorpus.split", "mixture.query", "mixture.ado.gamma1",
                "monitor.optimizer_monitor_interval", "model.tokenizer_backend"):
        assert key in keys
    assert not flag_pattern("mixture.query").search("--mixture.query-extra X")
    assert flag_pattern("text_data.seed").search("│ --text-data.seed INT   │")


@pytest.mark.parametrize("with_config", [False, True], ids=["no-config", "debug-config"])
def test_help_lists_every_key(with_config):
    args = ["--job.config_file", str(REPO_ROOT / "recipes" / "debug" / "train.toml")] if with_config else []
    # COLUMNS=80: one column of option boxes, wide enough that no flag name is wrapped.
    proc = subprocess.run(
        [sys.executable, "-m", "titan_recipes.train", *args, "--help"], cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "80"}, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = config_keys(recipe_config.JobConfig)
    every = config_keys(ConfigManager._merge_configs(JobConfig, recipe_config.JobConfig))
    assert set(ours) <= set(every) and len(every) > 200
    missing = [key for key in every if not flag_pattern(key).search(proc.stdout)]
    assert missing == [], f"--help does not list {missing}"
    for section in ("text-data", "mosaic-dataloader", "blendcorpus", "mixture", "launch", "monitor"):
        assert f"─ {section} options ─" in proc.stdout


def test_a_toml_only_key_is_listed_and_refused_on_the_command_line(capsys):
    """tyro cannot parse ``Any`` from a string; such a key gets a ``{TOML only}`` flag whose use is an
    error naming the flag and the fix, and its TOML value is kept when the flag is not used."""
    flags.register_toml_only_flags()
    with pytest.raises(SystemExit) as exit_info:
        ConfigManager().parse_args(["--job.custom_config_module", "titan_recipes.config", "--mixture.query", "[]"])
    assert exit_info.value.code == train.CONFIG_ERROR_EXIT
    err = capsys.readouterr().err
    assert "--mixture.query" in err and "set it in the TOML file" in err

    toml = REPO_ROOT / "recipes" / "debug_mds" / "train.toml"
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    streams = config.mosaic_dataloader.validation_streams or config.mosaic_dataloader.dataset.streams
    assert streams and all(isinstance(s, dict) and "local" in s for s in streams.values())


def test_the_config_module_is_added_unless_named(tmp_path):
    assert flags.with_config_module(["--help"]) == ["--help", "--job.custom_config_module", "titan_recipes.config"]
    named = ["--job.custom_config_module=my.module", "--help"]
    assert flags.with_config_module(named) == named
    toml = tmp_path / "own.toml"
    toml.write_text('[job]\ncustom_config_module = "my.module"\n', encoding="utf-8")
    assert flags.with_config_module(["--job.config_file", str(toml)]) == ["--job.config_file", str(toml)]
    bare = tmp_path / "bare.toml"
    bare.write_text("[training]\nsteps = 3\n", encoding="utf-8")
    assert flags.with_config_module([f"--job.config_file={bare}"])[-1] == "titan_recipes.config"


HEAVY = ("torch", "torchtitan", "duckdb", "pyarrow", "matplotlib")
"""What ``titan-recipes`` commands import when they run, never to print their help."""


@pytest.mark.parametrize("args", [["--help"], ["mixture", "--help"], ["runs", "--help"], ["fixtures", "--help"],
                                  ["new", "--help"], ["image", "--help"]], ids=" ".join)
def test_cli_help_imports_nothing_heavy(args):
    code = ("import sys\nfrom titan_recipes.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            f"    assert e.code == 0, e.code\nprint('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: titan-recipes" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "HEAVY []", proc.stdout[-2000:]


def test_python_m_cli_lists_every_group():
    proc = subprocess.run([sys.executable, "-m", "titan_recipes.cli", "--help"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for group in ("fixtures", "runs", "new", "mixture", "image"):
        assert f"\n    {group} " in proc.stdout, proc.stdout


def test_cli_serve_defaults_are_the_servers():
    """cli/mixture.py repeats the served-mode defaults so that its parser does not import the server."""
    from titan_recipes.cli import mixture as mixture_cli
    from titan_recipes.data.mixture import server

    assert (mixture_cli.DEFAULT_HOST, mixture_cli.DEFAULT_PORT) == (server.DEFAULT_HOST, server.DEFAULT_PORT)
