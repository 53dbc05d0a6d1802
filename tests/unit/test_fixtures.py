"""fixtures: keys, comparison rules, the diff table and the CLI's exit codes."""

from __future__ import annotations

import json

import pytest

from titan_recipes import cli
from titan_recipes import fixtures as fx


@pytest.mark.parametrize(
    "device, torch_version, nproc, key",
    [
        ("cpu (2 cores)", "2.13.0+cpu", 1, "cpu-torch2.13.0-1"),
        ("cpu (64 cores)", "2.13.0", 2, "cpu-torch2.13.0-2"),
        ("NVIDIA H100 80GB HBM3", "2.11.0+cu130", 8, "h100-torch2.11.0+cu130-8"),
        ("NVIDIA H200", "2.11.0+cu130", 1, "h200-torch2.11.0+cu130-1"),
    ],
)
def test_fixture_key(device, torch_version, nproc, key):
    assert fx.fixture_key(device, torch_version, nproc) == key


def _entry(losses, decimals=5, rtol=None):
    return {"nproc": 1, "overrides": [], "decimals": decimals, "rtol": rtol, "losses": {str(k): v for k, v in losses.items()}}


def test_cpu_compare_is_exact_to_printed_precision():
    entry = _entry({1: 8.13869, 2: 8.08467})
    assert fx.compare(entry, {1: 8.138691, 2: 8.084668}, "k").ok  # same after rounding to 5 decimals
    result = fx.compare(entry, {1: 8.13869, 2: 8.08469}, "k")
    assert not result.ok
    assert [r.ok for r in result.rows] == [True, False]
    assert "MISMATCH: 1 of 2 steps differ" in result.table()


def test_missing_and_extra_steps_are_mismatches():
    entry = _entry({1: 8.0, 2: 7.0})
    assert not fx.compare(entry, {1: 8.0}, "k").ok
    assert not fx.compare(entry, {1: 8.0, 2: 7.0, 3: 6.0}, "k").ok
    assert not fx.compare(_entry({}), {}, "k").ok  # nothing compared is not a match


def test_gpu_compare_uses_relative_tolerance():
    entry = _entry({1: 10.0}, decimals=None, rtol=1e-3)
    assert fx.compare(entry, {1: 10.009}, "k").ok
    assert not fx.compare(entry, {1: 10.02}, "k").ok


def _fake_run(run_dir, losses, device="cpu (2 cores)", torch_version="2.13.0+cpu", world=1):
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"device": device, "versions": {"torch": torch_version}, "world_size": world, "git": {}}))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"step": step, fx.LOSS_KEY: loss}) + "\n")


def test_check_cli_exit_codes(tmp_path, capsys):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    (recipe / "expected_loss.json").write_text(json.dumps({"recipe": "r", "entries": {"cpu-torch2.13.0-1": _entry({1: 8.5, 2: 8.25})}}))
    _fake_run(tmp_path / "good", {1: 8.5, 2: 8.25})
    _fake_run(tmp_path / "bad", {1: 8.5, 2: 8.3})
    assert cli.main(["fixtures", "check", str(recipe), str(tmp_path / "good")]) == 0
    assert "MATCH" in capsys.readouterr().out
    assert cli.main(["fixtures", "check", str(recipe), str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "8.30000" in out and "NO" in out
    _fake_run(tmp_path / "other", {1: 8.5}, world=4)
    assert cli.main(["fixtures", "check", str(recipe), str(tmp_path / "other")]) == 2
    assert "no entry 'cpu-torch2.13.0-4'" in capsys.readouterr().err


def test_resumed_run_rows_are_deduplicated(tmp_path):
    _fake_run(tmp_path / "run", {1: 3.0, 2: 2.0})
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # a relaunch re-logs step 2
        f.write(json.dumps({"step": 2, fx.LOSS_KEY: 2.5}) + "\n")
    assert fx.run_losses(tmp_path / "run") == {1: 3.0, 2: 2.5}


def test_record_entry_needs_rtol_for_gpu_runs(tmp_path):
    _fake_run(tmp_path / "gpu", {1: 8.0}, device="NVIDIA H100 80GB HBM3", torch_version="2.11.0+cu130")
    with pytest.raises(fx.FixtureError, match="rtol"):
        fx.record_entry(tmp_path, tmp_path / "gpu", 1, [])


def test_record_entry_from_a_run(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    _fake_run(tmp_path / "run", {1: 8.123456789, 2: 7.0})
    key = fx.record_entry(recipe, tmp_path / "run", 1, ["--training.steps", "2"])
    entry = fx.get_entry(recipe, key)
    assert key == "cpu-torch2.13.0-1"
    assert entry["losses"] == {"1": 8.12346, "2": 7.0}
    assert entry["overrides"] == ["--training.steps", "2"]
    assert entry["provenance"]["command"].startswith("NGPU=1 ")
