"""A bad run loses nothing (issue 14, part B), with real launches of recipes/debug/run_train.sh:

- a diverging run (``--optimizer.lr 1000``) stops at the first non-finite loss or gradient norm, exits
  non-zero, records ``diverged`` and never checkpoints non-finite weights (titan_recipes.guard);
- a second launch into a busy run directory is refused, a launcher killed with its process group takes
  its trainer with it, and the relaunch takes the stale lock over (titan_recipes.rundir);
- a finished run is extended with more steps from its last full checkpoint (titan_recipes.checkpointing);
- a full disk during a checkpoint gives a clear error, leaves no partial step, writes ``summary.json``,
  and the relaunch resumes from the previous checkpoint (a real 100 MiB tmpfs; needs mount rights).

Small shapes (batch 2 x 128 tokens, checkpoint every 2 steps) keep each launch startup-bound.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from launching import DEBUG_RECIPE, assert_ok, assert_same_checkpoint, launch, start_recipe, wait_for_step
from titan_recipes import fixtures as fx
from titan_recipes import rundir
from titan_recipes.records import read_metrics

SMALL = ("--training.local_batch_size", "2", "--training.seq_len", "128", "--checkpoint.interval", "2")
TIMEOUT_S = 600  # generous: the CPUs of this machine are shared


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _steps_saved(run_dir: Path) -> list[int]:
    folder = run_dir / "checkpoint"
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("step-*")) if folder.is_dir() else []


def _weights(step_dir: Path, tmp: Path) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{step_dir.name}.pt"
    dcp_to_torch_save(step_dir, out)
    return {k: v for k, v in torch.load(out, weights_only=False).items() if isinstance(v, torch.Tensor)}


# -- divergence ---------------------------------------------------------------------------------------


def test_divergence_stops_before_saving(tmp_path):
    run_dir = tmp_path / "lr1000"
    proc = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "6", "--optimizer.lr", "1000")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, f"a diverging run must fail:\n{text[-4000:]}"
    m = re.search(r"Training diverged at step (\d+): (the loss is \S+)?( and )?(the gradient norm is \S+)? \(non-finite\)", text)
    assert m, text[-4000:]
    step = int(m.group(1))
    assert "lower optimizer.lr (now 1000)" in text and f"Stopped before saving step {step}" in text

    rows = {r["step"]: r for r in read_metrics(run_dir / "metrics.jsonl")}
    assert max(rows) == step  # no step after the divergent one
    assert not all(math.isfinite(rows[step][k]) for k in ("loss_metrics/global_avg_loss", "grad_norm"))
    assert all(math.isfinite(rows[s]["grad_norm"]) for s in rows if s < step)
    summary = _summary(run_dir)
    assert summary["exit_reason"] == "diverged" and summary["final_step"] == step
    assert summary["error"].startswith(f"DivergenceError: Training diverged at step {step}")

    saved = _steps_saved(run_dir)
    assert saved and max(saved) < step, saved  # the divergent step was not saved; the earlier ones stay
    assert f"the previous checkpoint {run_dir / 'checkpoint' / f'step-{max(saved)}'} (step {max(saved)}) is intact" in text
    for s in saved:
        weights = _weights(run_dir / "checkpoint" / f"step-{s}", tmp_path)
        assert weights and all(torch.isfinite(w).all() for w in weights.values()), f"non-finite weights in step-{s}"


# -- one writer per run directory; no orphan ------------------------------------------------------------


def _trainer_pid(run_dir: Path) -> int:
    """The titan_recipes.train worker training into ``run_dir`` (torchrun starts it in its own session)."""
    marker = f"RUN_DIR={run_dir}\0".encode()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for d in Path("/proc").iterdir():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                environ = (d / "environ").read_bytes()
            except OSError:
                continue
            if "-m titan_recipes.train" in cmd and "torch.distributed.run" not in cmd and marker in environ:
                return int(d.name)
        time.sleep(0.2)
    raise AssertionError(f"no trainer process training into {run_dir}")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_one_writer_no_orphan_and_stale_lock_takeover(tmp_path):
    run_dir = tmp_path / "busy"
    first, out = start_recipe(run_dir, *SMALL, "--training.steps", "40")
    try:
        wait_for_step(first, run_dir / "metrics.jsonl", 3, out.read_text, TIMEOUT_S)  # step-2 is saved
        trainer = _trainer_pid(run_dir)

        second = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "4")
        assert second.returncode != 0
        assert (f"Run directory {run_dir} is in use by another launch: host {socket.gethostname()}, pid {trainer} "
                f"(since ") in second.stderr, second.stdout[-2000:] + second.stderr[-2000:]
        assert "titan_recipes.train" not in second.stdout  # refused before torchrun started
        rows = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows == sorted(set(rows)), rows  # only the first launch writes metrics

        os.killpg(first.pid, signal.SIGKILL)  # the launcher's group only: bash, torchrun, tee
        first.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _alive(trainer) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(trainer), "the trainer outlived its launcher (orphan)"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # The kernel drops the flock when the last descriptor closes: processes forked by the trainer
    # (e.g. a subprocess between fork and exec) may hold it a moment longer than the trainer lives.
    deadline = time.monotonic() + 30
    while rundir.check(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rundir.check(run_dir) is None, "the killed launch's lock was not released"
    killed_at = max(fx.run_losses(run_dir))
    before = fx.run_losses(run_dir)

    third = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "4")
    assert_ok(third)
    assert f"taking over the lock of a launch that ended without releasing it (host {socket.gethostname()}, pid {trainer}" in third.stdout
    resumed = int(re.search(r"Training starts at step (\d+)", third.stdout).group(1))
    assert 2 < resumed <= killed_at + 1  # from a checkpoint of the killed launch
    after = fx.run_losses(run_dir)
    assert all(after[s] == before[s] for s in range(resumed, min(killed_at, 4) + 1))  # the same steps again
    assert json.loads((run_dir / "launch.lock").read_text())["released"]


# -- extending a finished run ---------------------------------------------------------------------------


@pytest.mark.slow
def test_extend_finished_run_from_last_full_checkpoint(tmp_path):
    """A finished 4-step run (full checkpoint at step 2; the final save at step 4 holds the weights only,
    the recipe's last_save_model_only) extended to 6 steps resumes from step 2 and retrains steps 3-4 with
    the 6-step LR schedule. Steps 1-2 are warmup, identical under both schedules, so the extended run
    equals an uninterrupted 6-step run exactly: every loss, every LR, the weights bitwise. What differs is
    the finished 4-step run's own step 4 (its LR follows the 4-step schedule), which is why its weights
    are not a resume point for a longer run: an extension is exact when the two schedules agree up to the
    resume step (warmup, or a constant schedule), and otherwise continues the data order, the step count
    and the new schedule from the resume step, not the weights of the longer run."""
    run_dir, reference = tmp_path / "extended", tmp_path / "uninterrupted"
    assert_ok(launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "4"))
    assert _steps_saved(run_dir) == [2, 4]
    lr_finished = {r["step"]: r["lr"] for r in read_metrics(run_dir / "metrics.jsonl")}

    extended = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "6")
    assert_ok(extended)
    assert f"Resuming from {run_dir / 'checkpoint' / 'step-2'} (step 2), the newest full checkpoint; skipped step-4 " \
           f"(weights only" in extended.stdout
    assert "Training starts at step 3" in extended.stdout

    assert_ok(launch(DEBUG_RECIPE, 1, reference, *SMALL, "--training.steps", "6"))
    got, want = (read_metrics(d / "metrics.jsonl") for d in (run_dir, reference))
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r["loss_metrics/global_avg_loss"] for r in got] == [r["loss_metrics/global_avg_loss"] for r in want]
    assert [r["lr"] for r in got] == [r["lr"] for r in want]
    assert lr_finished[4] != want[3]["lr"]  # the LR schedule follows training.steps
    for step in (4, 6):  # step-4: a full checkpoint of the extended launch (it replaced the export)
        assert_same_checkpoint(run_dir / "checkpoint" / f"step-{step}", reference / "checkpoint" / f"step-{step}")
    assert _summary(run_dir)["exit_reason"] == "completed"


# -- disk full ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_disk_full_during_checkpoint(small_fs):
    run_dir = small_fs / "run"
    first = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "6")
    text = first.stdout + first.stderr
    assert first.returncode != 0
    assert (f"no space left on device while writing checkpoint step 4 to {run_dir / 'checkpoint' / 'step-4'}"
            in text), text[-4000:]
    assert f"the previous checkpoint {run_dir / 'checkpoint' / 'step-2'} (step 2) is intact" in text
    assert _steps_saved(run_dir) == [2]  # the partial step-4 is gone
    summary = _summary(run_dir)
    assert summary["exit_reason"] == "disk_full" and summary["final_step"] == 4
    first_losses = fx.run_losses(run_dir)

    subprocess.run(["mount", "-o", "remount,size=400m", str(small_fs)], check=True)  # space freed
    second = launch(DEBUG_RECIPE, 1, run_dir, *SMALL, "--training.steps", "6")
    assert_ok(second)
    assert f"Loading the checkpoint from {run_dir / 'checkpoint' / 'step-2'}." in second.stdout
    assert "Training starts at step 3" in second.stdout
    assert {s: v for s, v in fx.run_losses(run_dir).items() if s <= 4} == first_losses  # steps 3-4 again, exactly
    assert _summary(run_dir)["exit_reason"] == "completed"
    assert _steps_saved(run_dir) == [2, 4, 6]
    shutil.rmtree(run_dir, ignore_errors=True)
