"""The debug_mds recipe trains for real through its run_train.sh (MDS data made by the script itself,
MDS validation) and matches its fixtures.

The data goes into a temporary DATA_DIR, read through a copy of the recipe's train.toml whose data
paths point there (the only change), so the tests never write into the repository.
"""

from __future__ import annotations

import json

import pytest

from launching import REPO, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics

RECIPE = REPO / "recipes" / "debug_mds"
DEFAULT_DATA_DIR = "data/debug_mds"


@pytest.fixture(scope="module")
def data_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("debug_mds")
    data_dir = root / "data"
    toml = (RECIPE / "train.toml").read_text()
    assert toml.count(f'"{DEFAULT_DATA_DIR}/') == 2  # train and val
    config = root / "train.toml"
    config.write_text(toml.replace(f'"{DEFAULT_DATA_DIR}/', f'"{data_dir}/'))
    return {"DATA_DIR": str(data_dir), "CONFIG_FILE": str(config)}


def check(run_dir, nproc: int) -> None:
    result = fx.check_run(RECIPE, run_dir, key=fx.current_key(nproc))
    assert result.ok, result.table()
    assert len(result.rows) == 20
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = [r for r in rows if "validation_metrics/loss" in r]
    assert [r["step"] for r in val] == [1, 10, 20]
    assert val[-1]["validation_metrics/loss"] < val[0]["validation_metrics/loss"]


def test_one_process_makes_its_data_and_matches_fixture(data_env, tmp_path):
    entry = fx.get_entry(RECIPE, fx.current_key(1))
    proc = launch(RECIPE, 1, tmp_path / "run", *entry["overrides"], env=data_env)
    assert_ok(proc)
    assert "converting assets/data/tinyshakespeare.txt documents [0:-200]" in proc.stdout
    data_dir = data_env["DATA_DIR"]
    train = json.loads((REPO / data_dir / "train" / "conversion.json").read_text())
    val = json.loads((REPO / data_dir / "val" / "conversion.json").read_text())
    assert (train["documents_range"], val["documents_range"]) == ([0, -200], [-200, None])
    assert (train["seq_len"], train["compression"], val["documents"]) == (256, "zstd", 200)
    check(tmp_path / "run", 1)


@pytest.mark.slow
def test_two_process_fsdp_matches_fixture(data_env, tmp_path):
    entry = fx.get_entry(RECIPE, fx.current_key(2))
    proc = launch(RECIPE, 2, tmp_path / "run", *entry["overrides"], env=data_env)
    assert_ok(proc)
    assert "Applied FSDP to the model" in proc.stdout
    check(tmp_path / "run", 2)
