"""``[monitor]`` in real debug-recipe runs: the metrics land in ``metrics.jsonl`` on the monitored
steps only, training is unchanged (the losses equal the recipe's fixture), and 2 FSDP processes
report the same values as 1 process for the same weights and global batch.

The launches train up to step 4 of the 20-step schedule (``launch.stop_at_step 4``), so their losses
are comparable with the fixture entries recorded from 20-step runs. FSDP initialises the sharded
weights with other random values than one process does, so the 2-process launch resumes from the
1-process run's step-2 checkpoint (the data order is global, so it reads the same samples).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from launching import DEBUG_RECIPE, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics

STOP = 4
MONITOR = [
    "--training.steps", "20", "--launch.stop_at_step", str(STOP), "--checkpoint.interval", "2",
    "--monitor.optimizer_monitor_interval", "2", "--monitor.no-optimizer_monitor_only_global",
    "--monitor.activation_monitor_enabled", "--monitor.activation_monitor_interval", "2",
]


def monitor_rows(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> the monitor metrics of that step (``optim/...``, ``act/...``)."""
    rows = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        found = {k: v for k, v in row.items() if k.startswith(("optim/", "act/"))}
        if found:
            rows[row["step"]] = found
    return rows


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "monitored"
    assert_ok(launch(DEBUG_RECIPE, 1, run_dir, *MONITOR))
    return run_dir


def test_monitor_metrics_on_monitored_steps_only(one_process):
    rows = monitor_rows(one_process)
    assert sorted(rows) == [2, 4]
    metrics = read_metrics(one_process / "metrics.jsonl")
    for row in metrics:
        if row["step"] in rows:
            m = rows[row["step"]]
            # No clipping at these steps (grad_norm < training.max_norm = 1): the monitor's norm of the
            # gradients the optimizer used equals torchtitan's own, up to the float32 rounding of
            # torch's foreach norm on CPU (about 2e-5 relative here; the monitor adds the per-tensor
            # float32 sums of squares in float64).
            assert row["grad_norm"] < 1.0
            assert math.isclose(m["optim/grad_norm/global"], row["grad_norm"], rel_tol=1e-4)
            for key in ("optim/grad_norm/layers.0.attention.wq.weight", "optim/update_ratio/global",
                        "optim/exp_avg_sq_mean/output.weight", "act/layers.0.attention/output/l2_norm",
                        "act/layers.5.feed_forward.w2/input/kurtosis", "act/model/output/max"):
                assert math.isfinite(m[key]), key
            assert not any(k.startswith("act/tok_embeddings/input/") for k in m)  # token ids are not monitored
            per_param = {k.rsplit("/", 1)[1] for k in m if k.startswith("optim/grad_norm/")} - {"global"}
            assert len(per_param) == 6 * 9 + 3  # 6 blocks of 9 weights + embeddings, final norm, output
    log = (one_process / "train.log").read_text()
    assert log.count("monitor step 2:") == 2 and log.count("monitor step 4:") == 2 and "monitor step 3" not in log


def test_monitored_run_matches_the_fixture(one_process):
    key = fx.current_key(1)
    entry = fx.get_entry(DEBUG_RECIPE, key)
    first = {**entry, "losses": {s: v for s, v in entry["losses"].items() if int(s) <= STOP}}
    result = fx.compare(first, fx.run_losses(one_process), key)
    assert result.ok and len(result.rows) == STOP, result.table()


@pytest.mark.slow
def test_two_process_fsdp_reports_the_one_process_values(one_process, tmp_path):
    """Resumed from the 1-process step-2 checkpoint, 2 FSDP ranks x 4 samples read the same 8 samples
    per step as 1 rank x 8: the sharded norms and the activation statistics, reduced across the
    ranks, equal the 1-process values of step 4."""
    run_dir = tmp_path / "fsdp2"
    shutil.copytree(one_process / "checkpoint" / "step-2", run_dir / "checkpoint" / "step-2")
    proc = launch(DEBUG_RECIPE, 2, run_dir, *MONITOR, "--training.local_batch_size", "4")
    assert_ok(proc)
    assert "Applied FSDP to the model" in proc.stdout
    one, two = monitor_rows(one_process), monitor_rows(run_dir)
    assert sorted(two) == [4] and two[4].keys() == one[4].keys()
    for key, value in one[4].items():
        assert math.isclose(two[4][key], value, rel_tol=1e-3, abs_tol=1e-6), (key, two[4][key], value)
