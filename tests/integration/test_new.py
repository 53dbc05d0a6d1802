"""``titan-recipes new``, run records and the throughput benchmark, on two real launches.

One module fixture copies recipes/debug with ``titan-recipes new`` into a temporary directory and runs
``scripts/bench_recipe_throughput.py`` on the copy: the copy's own run_train.sh trains twice (as
configured, and with ``training.dataset = "random"``). Every test reads those two runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

from launching import DEBUG_RECIPE, REPO
from titan_recipes import cli
from titan_recipes import fixtures as fx
from titan_recipes.records import LOSS_KEY, PEAK_MEMORY_KEY, TPS_KEY, WARMUP_STEPS, read_metrics

pytestmark = pytest.mark.slow  # two real launches: 65 s measured on 2 cores shared with other work

STEPS = 4
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("new")
    copy = root / "my_exp"
    assert cli.main(["new", str(DEBUG_RECIPE), str(copy)]) == 0
    result = load_script("bench_recipe_throughput").main(
        ["--recipe", str(copy), "--steps", str(STEPS), "--warmup", "1", "--out", str(root / "bench")]
    )
    return copy, result


def test_new_copy_is_a_fresh_recipe(bench, capsys):
    copy, _ = bench
    assert json.loads((copy / "expected_loss.json").read_text()) == {"recipe": "my_exp", "entries": {}}
    assert (copy / "README.md").read_text().startswith("# my_exp recipe\n")
    toml = (copy / "train.toml").read_text()
    assert 'dump_folder = "runs/my_exp"' in toml and "titan-recipes my_exp:" in toml
    assert "runs/debug" not in toml
    # the empty fixture is valid and says clearly that there is nothing to verify against
    assert cli.main(["fixtures", "verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert f"has no entry '{fx.current_key(1)}' (has: [])" in err and "fixtures regen" in err


def test_new_refuses_an_existing_destination_and_a_non_recipe(bench, tmp_path, capsys):
    copy, _ = bench
    assert cli.main(["new", str(DEBUG_RECIPE), str(copy)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["new", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "has no run_train.sh" in capsys.readouterr().err


def test_copy_trains_unchanged(bench):
    copy, result = bench
    run_dir = result["recipe_run"]["run_dir"]
    info = json.loads(open(os.path.join(run_dir, "run.json")).read())
    assert info["config_file"] == str(copy / "train.toml")
    losses = [r[LOSS_KEY] for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]  # it learns


def test_run_record_has_overrides_hardware_and_container(bench):
    _, result = bench
    run_dir = result["recipe_run"]["run_dir"]
    info = json.loads(open(os.path.join(run_dir, "run.json")).read())
    assert info["overrides"] == {
        "job.dump_folder": run_dir, "training.steps": str(STEPS), "metrics.log_freq": "1", "checkpoint.no-enable": True,
    }
    assert "--job.config_file" in info["argv"]  # argv keeps everything; overrides leave the config file out
    hw = info["hardware"]
    assert hw["cpu_count"] == os.cpu_count() and hw["memory_gib"] > 0 and hw["gpus"] == []
    assert set(info["container"]) == {"runtime", "image", "digest", "slurm_job_id"}


def test_summary_of_a_completed_launch(bench):
    _, result = bench
    run_dir = result["recipe_run"]["run_dir"]
    summary = json.loads(open(os.path.join(run_dir, "summary.json")).read())
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    steady = [r[TPS_KEY] for r in rows if r["step"] >= 1 + WARMUP_STEPS]
    assert summary["exit_reason"] == "completed" and summary["error"] is None
    assert summary["final_step"] == STEPS == summary["training_steps"]
    assert summary["final_loss"] == rows[-1][LOSS_KEY]
    assert summary["tokens_per_s_mean"] == pytest.approx(sum(steady) / len(steady))
    assert summary["peak_memory_gib"] == max(r[PEAK_MEMORY_KEY] for r in rows)
    assert summary["wall_time_s"] > 0


def test_bench_compares_recipe_with_random_tokens(bench):
    copy, result = bench
    on_disk = json.loads((copy.parent / "bench" / "recipe_throughput.json").read_text())
    assert on_disk["ratio"] == pytest.approx(result["recipe_run"]["tokens_per_s"] / result["random_run"]["tokens_per_s"])
    assert on_disk["recipe_run"]["dataset"] == "tinyshakespeare" and on_disk["random_run"]["dataset"] == "random"
    assert on_disk["recipe_run"]["steps_measured"] == STEPS - 1
    assert on_disk["vs_anchor"] is None and "CPU" in on_disk["note"]  # no GPU target measured on a CPU
    real = [r[LOSS_KEY] for r in read_metrics(os.path.join(result["recipe_run"]["run_dir"], "metrics.jsonl"))]
    rand = [r[LOSS_KEY] for r in read_metrics(os.path.join(result["random_run"]["run_dir"], "metrics.jsonl"))]
    assert real[0] != rand[0]  # other data, same model


def test_runs_list_compare_plot(bench, capsys):
    copy, result = bench
    assert cli.main(["runs", "list", str(copy.parent / "bench")]) == 0
    out = capsys.readouterr().out
    for run in ("recipe_run", "random_run"):
        assert os.path.basename(result[run]["run_dir"]) in out
    assert out.count("completed") == 2 and "my_exp" in out
    assert cli.main(["runs", "compare", result["recipe_run"]["run_dir"], result["random_run"]["run_dir"]]) == 0
    out = capsys.readouterr().out
    assert "training.dataset" in out and '"random"' in out
    png = copy.parent / "loss.png"
    assert cli.main(["runs", "plot", result["recipe_run"]["run_dir"], "-o", str(png)]) == 0
    assert "no entry" in capsys.readouterr().out  # the copy's fixture is empty: the run alone
    assert png.read_bytes()[:8] == PNG_MAGIC
