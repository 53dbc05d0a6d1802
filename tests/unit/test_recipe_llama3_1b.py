"""recipes/llama3_1b: both TOMLs parse and validate, smoke.toml differs from train.toml only where its
comments say, run_train.sh picks the config by device, and the CPU fixtures name the config they ran.

run_train.sh is run for real with a stand-in interpreter (``PYTHON``) that reports a chosen GPU count
and prints the command it was asked to run, so the choice is tested without training; the real
training of smoke.toml is ``nox -s smoke`` (``fixtures verify``)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from titan_recipes.config import validate_job_config
from titan_recipes.cli.runs import flatten
from torchtitan.config import ConfigManager

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "llama3_1b"

SMOKE_DIFFERS = {
    "job.description", "metrics.log_freq", "model.flavor", "model.hf_assets_path", "optimizer.lr",
    "lr_scheduler.warmup_steps", "training.local_batch_size", "training.seq_len", "training.steps",
    "training.mixed_precision_param", "mosaic_dataloader.pin_memory", "mosaic_dataloader.dataset.local",
    "checkpoint.interval", "checkpoint.export_dtype", "compile.enable", "debug.deterministic",
}
"""What smoke.toml changes (its header comment explains each); everything else is train.toml's."""


def load(name: str):
    config = ConfigManager().parse_args(["--job.config_file", str(RECIPE / name)])
    validate_job_config(config)
    return config


def test_train_toml_is_the_1b_anchor_config():
    c = load("train.toml")
    assert (c.model.name, c.model.flavor) == ("recipes.llama3", "1B")
    assert (c.training.local_batch_size, c.training.seq_len, c.training.mixed_precision_param) == (4, 4096, "bfloat16")
    assert c.compile.enable and c.activation_checkpoint.mode == "none"
    assert c.parallelism.data_parallel_shard_degree == -1 and c.training.dataset == "mds"


def test_smoke_toml_has_train_tomls_structure():
    train, smoke = (flatten(dataclasses.asdict(load(n))) for n in ("train.toml", "smoke.toml"))
    assert {k for k in train if train[k] != smoke.get(k)} - {"job.config_file"} == SMOKE_DIFFERS
    assert smoke["model.flavor"] == "debugmodel" and smoke["compile.enable"] is False


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in: ``-c`` (run_train.sh's GPU count) prints FAKE_GPUS; anything else
    (the conversion, torchrun) prints its arguments."""
    script = tmp_path / "python"
    script.write_text('#!/usr/bin/env bash\nif [[ "$1" == "-c" ]]; then echo "${FAKE_GPUS}"; else echo "RUN: $*"; fi\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("gpus, config, nproc", [(0, "smoke.toml", "1"), (8, "train.toml", "8")])
def test_run_train_picks_the_config_by_device(tmp_path, fake_python, gpus, config, nproc):
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG_FILE", "NGPU")}
    env.update(PYTHON=str(fake_python), FAKE_GPUS=str(gpus), RUN_DIR=str(tmp_path / "run"),
               SMOKE_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.run([str(RECIPE / "run_train.sh"), "--training.steps", "2"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    torchrun = next(line for line in proc.stdout.splitlines() if "torch.distributed.run" in line)
    assert f"--nproc_per_node={nproc} " in torchrun
    assert f"--job.config_file {RECIPE / config} " in torchrun and torchrun.endswith("--training.steps 2")
    converts = [line for line in proc.stdout.splitlines() if "scripts/mds_convert.py" in line]
    assert len(converts) == (2 if config == "smoke.toml" else 0)  # train and val of the smoke data


def test_cpu_fixtures_are_smoke_runs_reproduced_by_their_command():
    entries = json.loads((RECIPE / "expected_loss.json").read_text())["entries"]
    cpu = {k: e for k, e in entries.items() if k.startswith("cpu-")}
    assert {e["nproc"] for e in cpu.values()} == {1, 2}
    for e in cpu.values():
        assert e["provenance"]["config_file"] == "recipes/llama3_1b/smoke.toml"
        assert e["provenance"]["command"] == f"NGPU={e['nproc']} recipes/llama3_1b/run_train.sh"
