"""gpu_check (``titan-recipes image gpu``, ``nox -s gpu``): the train command, the "no CUDA GPU visible"
error (no GPU exists here), and throughput/MFU from a run's metrics.jsonl written by the test itself.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from titan_recipes import gpu_check as gc
from titan_recipes.cli import main as cli_main
from titan_recipes.image import ContainerError
from titan_recipes.run_files import LOSS_KEY, MFU_KEY, PEAK_MEMORY_KEY, TFLOPS_KEY, TPS_KEY

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_without_a_gpu_says_so(capsys):
    assert cli_main(["image", "gpu", str(REPO / "recipes" / "debug"), "--", "--training.steps", "5"]) == 2
    assert "error: no CUDA GPU visible (torch.cuda.is_available() is False" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["image", "gpu", "recipes/debug", "--training.steps", "5"])
    assert "recipe overrides go after `--`" in capsys.readouterr().err


def test_gpu_train_command(tmp_path):
    command, env = gc.gpu_train_command(REPO / "recipes" / "debug", 8, ["--training.steps", "50"], tmp_path / "run")
    assert command == [str(REPO / "recipes" / "debug" / "run_train.sh"), "--training.steps", "50"]
    assert env == {"NGPU": "8", "RUN_DIR": str(tmp_path / "run"), "PYTHON": sys.executable}
    with pytest.raises(ContainerError, match="run_train.sh not found: RECIPE must be a recipe directory"):
        gc.gpu_train_command(tmp_path, 1, [], tmp_path / "run")


@pytest.fixture
def short_run(tmp_path) -> Path:
    """A run directory as a 3-step CPU run of the debug recipe leaves it: the metrics.jsonl the GPU check
    summarises (training rows with torchtitan's keys, a validation row merged into step 3) and run.json."""
    run_dir = tmp_path / "debug3"
    run_dir.mkdir()
    rows = [
        {"step": s, LOSS_KEY: 8.0 - s, TPS_KEY: tps, MFU_KEY: mfu, TFLOPS_KEY: 0.01 * s,
         PEAK_MEMORY_KEY: memory}
        for s, tps, mfu, memory in ((1, 812.5, 0.011, 0.75), (2, 2210.25, 0.031, 0.5), (3, 2304.75, 0.033, 0.25))
    ]
    rows.append({"step": 3, "validation/loss": 5.1})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "run.json").write_text(json.dumps({"world_size": 1}))
    return run_dir


def test_throughput_summary_of_a_run(short_run):
    from titan_recipes.records import WARMUP_STEPS

    rows = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if TPS_KEY in r}
    assert sorted(train) == [1, 2, 3]
    summary = gc.throughput_summary(short_run, warmup=1)
    assert summary.steps == [2, 3] and summary.world_size == 1
    assert summary.tokens_per_s == statistics.median(train[s][TPS_KEY] for s in (2, 3)) > 0
    assert summary.mfu_percent == statistics.median(train[s][MFU_KEY] for s in (2, 3))
    assert summary.peak_memory_gib == max(train[s][PEAK_MEMORY_KEY] for s in (2, 3))
    text = summary.format()
    assert f"{summary.tokens_per_s:,.0f} tok/s per device (median of steps 2-3)" in text and "MFU" in text
    # The default leaves out the run summary's warm-up steps (records.WARMUP_STEPS): too many for 3 steps.
    assert WARMUP_STEPS >= 3
    with pytest.raises(ContainerError, match=f"3 logged training step.*first {WARMUP_STEPS} are warm-up: nothing "
                                                 "left to measure.*--training.steps"):
        gc.throughput_summary(short_run)


def test_throughput_summary_needs_a_run_directory(tmp_path):
    with pytest.raises(ContainerError, match="metrics.jsonl not found: is .* a titan-recipes run directory"):
        gc.throughput_summary(tmp_path)
