"""titan_recipes/cli/runs.py on hand-made run directories: list, compare, plot and their errors. (On real launches:
tests/integration/test_new.py.)"""

from __future__ import annotations

import json

import pytest

from titan_recipes import cli
from titan_recipes import fixtures as fx
from titan_recipes.records import LOSS_KEY, TPS_KEY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(run_dir, recipe, losses: dict[int, float], *, steps: int, lr: float = 1e-3, summary: dict | None = None):
    run_dir.mkdir(parents=True)
    info = {
        "started": "2026-11-23T12:00:00+0000", "argv": [], "config_file": str(recipe / "train.toml"),
        "world_size": 1, "device": "cpu (2 cores)", "versions": {"torch": "2.13.0+cpu"},
        "git": {"sha": "0123456789abcdef", "dirty": False},
        "config": {"training": {"steps": steps}, "optimizer": {"lr": lr}},
    }
    (run_dir / "run.json").write_text(json.dumps(info))
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"step": step, LOSS_KEY: loss, TPS_KEY: 1000.0}) + "\n")
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def recipe(tmp_path):
    recipe = tmp_path / "recipes" / "toy"
    recipe.mkdir(parents=True)
    entry = {"nproc": 1, "overrides": [], "atol": 0.0, "rtol": 1e-6, "losses": {"1": 5.0, "2": 4.0, "3": 3.5},
             "provenance": {"command": "NGPU=1 recipes/toy/run_train.sh", "date": "2026-11-23"}}
    (recipe / fx.FIXTURE_FILE).write_text(json.dumps({"recipe": "toy", "entries": {"cpu-torch2.13.0-1": entry}}))
    return recipe


def test_list_summarizes_runs_with_and_without_summary(tmp_path, recipe, capsys):
    runs = tmp_path / "runs"
    make_run(runs / "toy-a", recipe, {1: 5.0, 2: 4.0, 3: 3.5, 4: 3.25, 5: 3.0}, steps=5)  # steps 4-5 after warm-up
    summary = {"exit_reason": "preempted", "final_step": 2, "training_steps": 3, "final_loss": 4.0, "tokens_per_s_mean": 1234.0}
    make_run(runs / "toy-b", recipe, {1: 5.0, 2: 4.0}, steps=3, summary=summary)
    make_run(runs / "toy-c", recipe, {1: 5.0}, steps=3)
    assert cli.main(["runs", "list", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "recipe", "started", "steps", "final", "loss", "tok/s", "git", "sha", "dirty", "exit"]
    a, b, c = (next(line for line in lines if line.startswith(name)) for name in ("toy-a", "toy-b", "toy-c"))
    assert a.split()[1:] == ["toy", "2026-11-23T12:00:00", "5/5", "3.00000", "1,000", "0123456789", "False", "completed"]
    assert b.split()[3:6] == ["2/3", "4.00000", "1,234"] and b.endswith("preempted")  # summary.json wins
    assert c.endswith("unfinished?") and c.split()[5] == "-"  # no step after the warm-up


def test_list_of_an_empty_and_a_missing_directory(tmp_path, capsys):
    assert cli.main(["runs", "list", str(tmp_path)]) == 0
    assert "no run directories" in capsys.readouterr().out
    assert cli.main(["runs", "list", str(tmp_path / "nope")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_compare_shows_config_differences_and_losses(tmp_path, recipe, capsys):
    a = make_run(tmp_path / "a", recipe, {1: 5.0, 2: 4.0}, steps=2, lr=1e-3)
    b = make_run(tmp_path / "b", recipe, {1: 5.0, 2: 3.75, 3: 3.0}, steps=3, lr=1e-3)
    assert cli.main(["runs", "compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    diff_lines = [line.split() for line in out.splitlines() if line.startswith(("training.", "optimizer."))]
    assert diff_lines == [["training.steps", "2", "3"]]
    assert "2     4.00000  3.75000  -0.25000" in out
    assert "3     -        3.00000  -" in out


def test_compare_needs_run_directories(tmp_path, recipe, capsys):
    a = make_run(tmp_path / "a", recipe, {1: 5.0}, steps=1)
    assert cli.main(["runs", "compare", str(a), str(tmp_path / "missing")]) == 2
    assert "is not a titan-recipes run directory" in capsys.readouterr().err


def test_plot_against_the_fixture_found_from_the_config(tmp_path, recipe, capsys):
    run = make_run(tmp_path / "r", recipe, {1: 5.0, 2: 4.1, 3: 3.4}, steps=3)
    assert cli.main(["runs", "plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert "run vs fixture cpu-torch2.13.0-1: OUTSIDE tolerance" in out  # 4.1 vs 4.0 is far outside rtol 1e-6
    assert (run / "loss.png").read_bytes()[:8] == PNG_MAGIC
    near = make_run(tmp_path / "near", recipe, {1: 5.0, 2: 4.000002, 3: 3.5}, steps=3)
    assert cli.main(["runs", "plot", str(near)]) == 0
    assert "within tolerance, largest |diff| 0.50 x tolerance" in capsys.readouterr().out


def test_plot_draws_the_difference_against_the_tolerance(tmp_path, recipe):
    """Two panels: loss curves, then run - fixture per step with the tolerance band; whole-number steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from titan_recipes.cli.runs import plot_losses

    entry = json.loads((recipe / fx.FIXTURE_FILE).read_text())["entries"]["cpu-torch2.13.0-1"]
    actual = {1: 5.0, 2: 4.000002, 3: 3.6}
    saved = {}
    real_savefig = plt.Figure.savefig

    def keep(fig, *args, **kwargs):
        saved["fig"] = fig
        return real_savefig(fig, *args, **kwargs)

    plt.Figure.savefig = keep
    try:
        plot_losses(tmp_path / "p.png", actual, fx.compare(entry, actual, "k"), title="t")
    finally:
        plt.Figure.savefig = real_savefig
    loss_ax, diff_ax = saved["fig"].axes
    ys = [y for line in diff_ax.get_lines() for y in line.get_ydata()]
    assert max(abs(y) for y in ys) == pytest.approx(0.1, rel=1e-6)  # step 3 drifts by 0.1
    assert "MISMATCH (1 steps)" in diff_ax.get_title()
    ticks = [t for t in diff_ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_with_a_key_the_fixture_lacks_draws_the_run_alone(tmp_path, recipe, capsys):
    run = make_run(tmp_path / "r", recipe, {1: 5.0}, steps=1)
    out_png = tmp_path / "plots" / "x.png"
    assert cli.main(["runs", "plot", str(run), "--key", "h100-torch2.11.0+cu130-8", "-o", str(out_png)]) == 0
    assert "has no entry h100-torch2.11.0+cu130-8" in capsys.readouterr().out
    assert out_png.read_bytes()[:8] == PNG_MAGIC


def test_plot_of_a_run_without_losses_is_an_error(tmp_path, recipe, capsys):
    run = make_run(tmp_path / "r", recipe, {}, steps=1)
    assert cli.main(["runs", "plot", str(run)]) == 2
    assert "logged no losses" in capsys.readouterr().err


def test_fixture_check_refuses_a_run_of_another_config(tmp_path, recipe):
    """A fixture entry records the config file of its run; a run of another config is not compared."""
    entry = json.loads((recipe / fx.FIXTURE_FILE).read_text())
    entry["entries"]["cpu-torch2.13.0-1"]["provenance"]["config_file"] = "recipes/toy/smoke.toml"
    (recipe / fx.FIXTURE_FILE).write_text(json.dumps(entry))
    run = make_run(tmp_path / "r", recipe, {1: 5.0, 2: 4.0, 3: 3.5}, steps=3)
    with pytest.raises(fx.FixtureError, match=r"read config .*train.toml, but fixture entry cpu-torch2.13.0-1 was recorded from recipes/toy/smoke.toml"):
        fx.check_run(recipe, run)
    elsewhere = tmp_path / "copy" / "toy"  # an edited copy of smoke.toml outside the recipe is compared by losses
    elsewhere.mkdir(parents=True)
    copy_run = make_run(tmp_path / "r2", elsewhere, {1: 5.0, 2: 4.0, 3: 3.5}, steps=3)
    info = json.loads((copy_run / "run.json").read_text())
    info["config_file"] = str(elsewhere / "smoke.toml")
    (copy_run / "run.json").write_text(json.dumps(info))
    assert fx.check_run(recipe, copy_run).ok
