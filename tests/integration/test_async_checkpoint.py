"""``checkpoint.async_mode = "async"`` on the debug recipe (issue 19): DCP copies the training state into
CPU memory and writes it in a background thread while training goes on. Three real launches:

- ``uninterrupted``: 10 steps, a full checkpoint every 4 steps written asynchronously;
- ``preempted``: the same, with SIGTERM to torchrun and its worker during step 8, so that the loop's
  asynchronous save of step 8 starts and is still being written when the preemption handler runs (it
  waits for it: titan_recipes.checkpointing, guarantee 4); the launch stops at step 8;
- the relaunch of ``preempted``, with a half-written ``step-10`` folder planted beside it (tensor data
  but no ``.metadata``, which DCP writes last: what a launch killed mid-write leaves). It must resume
  from step 8, not from the half-written folder, and finish equal to ``uninterrupted`` bitwise.

The recipe's own shapes (batch 8 x 256 tokens) make a step long enough (0.4-1.5 s on 2 cores) to aim the
signal into step 8; the checkpoint (weights and AdamW moments of the 6.2M-parameter model, ~75 MB)
takes longer to write than the loop takes to reach the stop.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import time
from pathlib import Path


from launching import (
    DEBUG_RECIPE, assert_ok, assert_same_checkpoint, launch, process_children, process_cmdline, start_recipe,
    wait_for_step,
)
from titan_recipes import fixtures as fx
from titan_recipes.train import PREEMPTED_FILE

STEPS, INTERVAL = 10, 4
ASYNC = ("--checkpoint.async_mode", "async", "--training.steps", str(STEPS), "--checkpoint.interval", str(INTERVAL))
TIMEOUT_S = 600  # generous: the CPUs of this machine are shared


def _sigterm_job_step(shell_pid: int) -> None:
    """SIGTERM to torchrun and its worker at once, as Slurm signals every process of a job step."""
    torchrun = [p for p in process_children(shell_pid) if "torch.distributed.run" in process_cmdline(p)]
    assert len(torchrun) == 1, f"no torchrun under pid {shell_pid}"
    workers = [p for p in process_children(torchrun[0]) if "titan_recipes.train" in process_cmdline(p)]
    assert len(workers) == 1
    for pid in (torchrun[0], *workers):
        os.kill(pid, signal.SIGTERM)


def _sections(step_dir: Path) -> set[str]:
    meta = pickle.loads((step_dir / ".metadata").read_bytes())
    return {key.split(".")[0] for key in meta.state_dict_metadata}


def test_preemption_during_an_async_save_loses_nothing_and_resume_is_exact(tmp_path):
    reference, run_dir = tmp_path / "uninterrupted", tmp_path / "preempted"
    first = launch(DEBUG_RECIPE, 1, reference, *ASYNC)
    assert_ok(first)
    assert first.stdout.count("Saving the checkpoint (or staging if async is enabled)") == 3  # steps 4, 8, 10
    for step in (4, 8):  # the asynchronous interval saves are complete, full checkpoints
        assert {"optimizer", "lr_scheduler", "dataloader", "train_state", "tok_embeddings"} <= _sections(
            reference / "checkpoint" / f"step-{step}")

    proc, out = start_recipe(run_dir, *ASYNC)
    wait_for_step(proc, run_dir / "metrics.jsonl", INTERVAL * 2 - 1, out.read_text, TIMEOUT_S, poll_s=0.01)
    time.sleep(0.1)  # past step 7's stop check, into step 8: the stop comes right after step 8's save starts
    _sigterm_job_step(proc.pid)
    proc.wait(timeout=TIMEOUT_S)
    text = out.read_text()
    stopped = re.search(r"preempted: saved checkpoint at step (\d+)", text)
    assert stopped and stopped.group(1) == "8", (
        f"the signal was aimed at step 8 but the launch stopped at {stopped and stopped.group(1)}: a step of this "
        f"machine took under 0.1 s? (metrics {fx.run_losses(run_dir)})\n{text[-4000:]}")
    assert "preempted: saved checkpoint at step 8, exiting with code 143 (SIGTERM)" in text, text[-4000:]
    # the save of step 8 was still being written when the handler ran, and the handler waited for it
    assert "Waiting for the asynchronous save of checkpoint step 8 to finish writing." in text, text[-4000:]
    assert json.loads((run_dir / PREEMPTED_FILE).read_text())["checkpoint"] == "checkpoint/step-8"
    assert sorted(fx.run_losses(run_dir)) == list(range(1, 9))
    assert_same_checkpoint(run_dir / "checkpoint" / "step-8", reference / "checkpoint" / "step-8")

    half = run_dir / "checkpoint" / f"step-{STEPS}"  # a save killed mid-write: tensor data, no .metadata yet
    half.mkdir()
    data = (reference / "checkpoint" / "step-8" / "__0_0.distcp").read_bytes()
    (half / "__0_0.distcp").write_bytes(data[: len(data) // 2])

    second = launch(DEBUG_RECIPE, 1, run_dir, *ASYNC)
    assert_ok(second)
    assert "Training starts at step 9" in second.stdout
    assert re.search(r"Resuming from \S+step-8 \(step 8\), the newest full checkpoint; skipped step-10 \(incomplete",
                     second.stdout), second.stdout[-4000:]
    got, want = fx.run_losses(run_dir), fx.run_losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # full float precision, every step
    assert_same_checkpoint(run_dir / "checkpoint" / f"step-{STEPS}", reference / "checkpoint" / f"step-{STEPS}")


def test_a_failed_async_save_is_reported_for_its_own_step(small_fs):
    """A full disk while the background thread writes step 4 (a real 100 MiB tmpfs: one full checkpoint
    of ~75 MiB fits, a second does not). The loop only learns of it at the next wait (the final save of
    step 6, or close() when another writer failed first); the error names step 4, not the step that
    waited, its partial folder is removed, and step 2 stays the resume point
    (titan_recipes.checkpointing, guarantees 2 and 4)."""
    run_dir = small_fs / "run"
    proc = launch(DEBUG_RECIPE, 1, run_dir, "--checkpoint.async_mode", "async", "--training.steps", "6",
                  "--checkpoint.interval", "2", "--training.local_batch_size", "2", "--training.seq_len", "128")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"no space left on device while writing checkpoint step 4 to {run_dir / 'checkpoint' / 'step-4'}" in text, \
        text[-4000:]
    assert f"the previous checkpoint {run_dir / 'checkpoint' / 'step-2'} (step 2) is intact" in text
    assert sorted(p.name for p in (run_dir / "checkpoint").iterdir()) == ["step-2"]
    # the run ends on the first error: the wait of step 6's save (disk_full) or, when the background
    # write fills the disk first, ENOSPC from metrics.jsonl (error); the save failure is reported either way
    assert json.loads((run_dir / "summary.json").read_text())["exit_reason"] in ("disk_full", "error")


def test_a_launch_stopping_on_a_failed_async_save_still_writes_its_summary(small_fs):
    """``launch.stop_at_step`` at an interval step ends the launch while that step's save is written in
    the background. When the write fails (the 100 MiB tmpfs fills with step 4), the launch reports it as
    its own error, and summary.json records ``disk_full``: before, the failure surfaced only in the
    checkpointer's close(), which torchtitan runs before the metrics' close() that writes the summary."""
    run_dir = small_fs / "run"
    proc = launch(DEBUG_RECIPE, 1, run_dir, "--checkpoint.async_mode", "async", "--training.steps", "6",
                  "--launch.stop_at_step", "4", "--checkpoint.interval", "2", "--training.local_batch_size", "2",
                  "--training.seq_len", "128")
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"no space left on device while writing checkpoint step 4 to {run_dir / 'checkpoint' / 'step-4'}" in text, \
        text[-4000:]
    assert sorted(p.name for p in (run_dir / "checkpoint").iterdir()) == ["step-2"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_reason"] == "disk_full", summary
