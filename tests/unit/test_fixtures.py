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


def _entry(losses, rtol=1e-6, atol=0.0):
    return {"nproc": 1, "overrides": [], "atol": atol, "rtol": rtol, "losses": {str(k): v for k, v in losses.items()}}


def test_one_rule_for_every_key():
    """|actual - expected| <= atol + rtol * |expected| at every step, at full precision."""
    entry = _entry({1: 8.0, 2: 4.0}, rtol=1e-6)
    assert fx.compare(entry, {1: 8.0 + 7.9e-6, 2: 4.0 - 3.9e-6}, "k").ok  # inside 8e-6 and 4e-6
    result = fx.compare(entry, {1: 8.0, 2: 4.0 + 4.1e-6}, "k")
    assert not result.ok
    assert [r.ok for r in result.rows] == [True, False]
    table = result.table()
    assert "MISMATCH: 1 of 2 steps differ" in table
    assert "4.10e-06" in table and "4.00e-06" in table  # |diff| against the tolerance, per step
    assert fx.compare(_entry({1: 8.0}, rtol=0.0, atol=1e-3), {1: 8.0009}, "k").ok
    assert not fx.compare(_entry({1: 8.0}, rtol=0.0, atol=1e-3), {1: 8.0011}, "k").ok


def test_the_rounding_boundary_case_of_issue_13():
    """7.206175327 against a recorded 7.2061749: exact-at-5-decimals called this a mismatch (7.20618 vs
    7.20617); 4e-7 apart is inside any measured CPU tolerance (rtol >= 4.8e-7 relative)."""
    entry = _entry({5: 7.2061749}, rtol=fx.RTOL_FLOOR)
    assert round(7.206175327, 5) != round(7.2061749, 5)
    assert fx.compare(entry, {5: 7.206175327}, "k").ok


def test_nan_never_matches():
    assert not fx.compare(_entry({1: 8.0}, rtol=1.0), {1: float("nan")}, "k").ok


def test_missing_and_extra_steps_are_mismatches():
    entry = _entry({1: 8.0, 2: 7.0})
    assert not fx.compare(entry, {1: 8.0}, "k").ok
    assert not fx.compare(entry, {1: 8.0, 2: 7.0, 3: 6.0}, "k").ok
    assert not fx.compare(_entry({}), {}, "k").ok  # nothing compared is not a match
    assert fx.compare(entry, {1: 8.0}, "k", steps=[1]).ok  # a chosen subset of the steps


def test_old_rounded_entries_must_be_re_recorded():
    old = {"nproc": 1, "overrides": [], "decimals": 5, "rtol": None, "losses": {"1": 8.13869}}
    with pytest.raises(fx.FixtureError, match="old format.*fixtures regen"):
        fx.compare(old, {1: 8.13869}, "cpu-torch2.13.0-1")


def test_tolerance_is_a_multiple_of_the_measured_spread_with_a_floor():
    base = {1: 8.0, 2: 6.0}
    spreads = {"aten-avx2": fx.spread(base, {1: 8.0, 2: 6.0 + 6e-6}), "threads-1": fx.spread(base, dict(base))}
    assert spreads["aten-avx2"]["steps_differing"] == 1 and spreads["threads-1"]["max_abs_diff"] == 0.0
    tol = fx.tolerance_from_spread(spreads, "cpu-kernel-variants")
    assert tol["rtol"] == pytest.approx(fx.TOLERANCE_MULTIPLE * 1e-6)
    assert tol["tolerance"]["max_abs_spread"] == pytest.approx(6e-6) and not tol["tolerance"]["floor_applied"]
    flat = fx.tolerance_from_spread({"threads-1": spreads["threads-1"]}, "cpu-kernel-variants")
    assert flat["rtol"] == fx.RTOL_FLOOR and flat["tolerance"]["floor_applied"]
    with pytest.raises(fx.FixtureError, match="different steps"):
        fx.spread(base, {1: 8.0})


def test_cpu_variants_cover_aten_levels_isa_limits_and_threads():
    names = [v.name for v in fx.cpu_variants("AVX512", True, 2)]
    assert names == ["aten-default", "aten-avx2", "mkl-onednn-avx2", "threads-1"]  # avx512 is the native run
    names = [v.name for v in fx.cpu_variants("AVX2", False, 1)]
    assert names == ["aten-default", "mkl-onednn-avx2", "threads-2"]  # no avx512 on this CPU
    names = [v.name for v in fx.cpu_variants("AVX2", True, 2)]
    assert "aten-avx512" in names and "aten-avx2" not in names


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
    assert "8.3000000" in out and "NO" in out
    _fake_run(tmp_path / "other", {1: 8.5}, world=4)
    assert cli.main(["fixtures", "check", str(recipe), str(tmp_path / "other")]) == 2
    assert "no entry 'cpu-torch2.13.0-4'" in capsys.readouterr().err


def test_resumed_run_rows_are_deduplicated(tmp_path):
    _fake_run(tmp_path / "run", {1: 3.0, 2: 2.0})
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:  # a relaunch re-logs step 2
        f.write(json.dumps({"step": 2, fx.LOSS_KEY: 2.5}) + "\n")
    assert fx.run_losses(tmp_path / "run") == {1: 3.0, 2: 2.5}


def test_record_entry_from_a_run(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    _fake_run(tmp_path / "run", {1: 8.123456789, 2: 7.0})
    spreads = {"aten-avx2": fx.spread({1: 8.123456789, 2: 7.0}, {1: 8.123456789, 2: 7.00001})}
    tol = fx.tolerance_from_spread(spreads, "cpu-kernel-variants")
    key = fx.record_entry(recipe, tmp_path / "run", 1, ["--training.steps", "2"], tol, spreads)
    entry = fx.get_entry(recipe, key)
    assert key == "cpu-torch2.13.0-1"
    assert entry["losses"] == {"1": 8.123456789, "2": 7.0}  # full precision, as logged
    assert entry["rtol"] == tol["rtol"] and entry["atol"] == 0.0
    assert entry["spread"]["aten-avx2"]["steps_differing"] == 1
    assert entry["overrides"] == ["--training.steps", "2"]
    assert entry["provenance"]["command"].startswith("NGPU=1 ")
    assert fx.check_run(recipe, tmp_path / "run").ok


def test_a_launch_is_judged_only_by_an_entry_with_its_overrides_and_config(tmp_path):
    recipe = tmp_path / "recipe"
    recipe.mkdir()
    entry = {**_entry({1: 8.5, 2: 8.25}), "provenance": {"config_file": "recipes/r/train.toml"}}
    (recipe / "expected_loss.json").write_text(json.dumps({"recipe": "r", "entries": {"cpu-torch2.13.0-1": entry}}))

    def run(name, overrides, config="train.toml"):
        _fake_run(tmp_path / name, {1: 8.5, 2: 8.25})
        info = json.loads((tmp_path / name / "run.json").read_text())
        info.update(overrides={"job.dump_folder": str(tmp_path / name), **overrides}, config_file=str(recipe / config))
        (tmp_path / name / "run.json").write_text(json.dumps(info))
        return tmp_path / name

    assert fx.applicable_entry(recipe, run("plain", {})) == ("cpu-torch2.13.0-1", "")
    key, why = fx.applicable_entry(recipe, run("steps", {"training.steps": "22"}))
    assert key is None and "overrides" in why
    key, why = fx.applicable_entry(recipe, run("other", {}, config="smoke.toml"))
    assert key is None and "smoke.toml" in why
    matched, table = fx.report_launch(str(recipe / "train.toml"), tmp_path / "plain")
    assert matched is True and "MATCH" in table
    matched, why = fx.report_launch(str(recipe / "train.toml"), tmp_path / "steps")
    assert matched is None and "overrides" in why
