"""A signal (Slurm preemption, scancel, ``--signal=USR1@120``) loses nothing: the launch saves a full
checkpoint at the step it stops at, and relaunching in the same run directory continues exactly.

Each test starts ``recipes/debug/run_train.sh`` in its own session (``subprocess.Popen``), waits until
step 4 is logged, signals the launch while it trains, then relaunches to completion.

Exit statuses: the trainer exits with ``launch.preempt_exit_code`` (143). torchrun does not pass a
worker's status on: once torchrun itself was signalled it exits 1, and when only a worker was
signalled it reports the worker's status in its failure summary and also exits 1. run_train.sh
returns torchrun's status. Job scripts therefore read ``preempted.json`` (slurm/train.sbatch).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import time
from pathlib import Path

import pytest

from launching import (
    DEBUG_RECIPE, assert_ok, assert_same_checkpoint, launch, process_children, process_cmdline, start_recipe,
    wait_for_step, finish,
)
from titan_recipes import fixtures as fx
from titan_recipes.train import PREEMPTED_FILE

STEPS = 20
INTERVAL = 10
SIGNAL_AFTER_STEP = 4
TIMEOUT_S = 600  # generous: the CPUs of this machine are shared


def _torchrun_and_workers(shell_pid: int, nproc: int) -> tuple[int, list[int]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        torchrun = [p for p in process_children(shell_pid) if "torch.distributed.run" in process_cmdline(p)]
        if torchrun:
            workers = sorted(p for p in process_children(torchrun[0]) if "titan_recipes.train" in process_cmdline(p))
            if len(workers) == nproc:
                return torchrun[0], workers
        time.sleep(0.2)
    raise AssertionError(f"no torchrun with {nproc} worker(s) under pid {shell_pid}")


def _stopped_step(run_dir: Path, text: str, code: int = 143) -> int:
    """Check the launch's last line and preempted.json; return the step it saved at."""
    match = re.search(rf"preempted: saved checkpoint at step (\d+), exiting with code {code}", text)
    assert match, f"no preemption line in the output:\n{text[-4000:]}"
    step = int(match.group(1))
    marker = json.loads((run_dir / PREEMPTED_FILE).read_text())
    assert marker["step"] == step and marker["exit_code"] == code
    assert marker["checkpoint"] == f"checkpoint/step-{step}"
    assert SIGNAL_AFTER_STEP <= step < INTERVAL, f"stopped at step {step}; the test wants a step off the interval"
    assert sorted(fx.run_losses(run_dir)) == list(range(1, step + 1))  # no step after the signal
    return step


def _assert_full_checkpoint(step_dir: Path) -> None:
    """A preemption checkpoint holds everything a resume needs, not only the weights."""
    meta = pickle.loads((step_dir / ".metadata").read_bytes())
    sections = {key.split(".")[0] for key in meta.state_dict_metadata}
    assert {"optimizer", "lr_scheduler", "dataloader", "train_state", "tok_embeddings"} <= sections, sections


def test_sigterm_saves_and_relaunch_is_exact(tmp_path):
    """SIGTERM to torchrun and its worker at once, as Slurm signals every process of a job step
    (run_train.sh's shell and tee are spared so that train.log keeps the launch's end; under Slurm,
    slurm/train.sbatch runs torchrun without them). The launch stops at the step in progress, saves a
    full checkpoint there (off the interval), and the relaunch equals an uninterrupted run bitwise."""
    entry = fx.get_entry(DEBUG_RECIPE, fx.current_key(1))
    run_dir, reference = tmp_path / "preempted", tmp_path / "uninterrupted"

    proc, out = start_recipe(run_dir, *entry["overrides"])
    wait_for_step(proc, run_dir / "metrics.jsonl", SIGNAL_AFTER_STEP, out.read_text, TIMEOUT_S)
    torchrun, workers = _torchrun_and_workers(proc.pid, 1)
    for pid in (torchrun, *workers):
        os.kill(pid, signal.SIGTERM)
    text = finish(proc, out, TIMEOUT_S)
    assert proc.returncode == 1, f"run_train.sh should return torchrun's status 1, got {proc.returncode}:\n{text[-4000:]}"
    assert "Received 15 death signal, shutting down workers" in text  # torchrun forwarded it too
    step = _stopped_step(run_dir, text)
    assert (run_dir / "checkpoint" / f"step-{step}").is_dir()
    assert not (run_dir / "checkpoint" / f"step-{INTERVAL}").exists()
    _assert_full_checkpoint(run_dir / "checkpoint" / f"step-{step}")

    second = launch(DEBUG_RECIPE, 1, run_dir, *entry["overrides"])
    assert_ok(second)
    assert f"Training starts at step {step + 1}" in second.stdout
    assert not (run_dir / PREEMPTED_FILE).exists()  # a finished launch leaves no requeue marker

    assert_ok(launch(DEBUG_RECIPE, 1, reference, *entry["overrides"]))
    got, want = fx.run_losses(run_dir), fx.run_losses(reference)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == want  # full float precision, every step
    result = fx.check_run(DEBUG_RECIPE, run_dir, key=fx.current_key(1))
    assert result.ok, result.table()
    assert_same_checkpoint(run_dir / "checkpoint" / f"step-{STEPS}", reference / "checkpoint" / f"step-{STEPS}")


@pytest.mark.slow
def test_two_ranks_agree_on_the_stop_step(tmp_path):
    """Two FSDP processes; SIGUSR1 reaches only rank 1 (as a signal can reach the ranks of a job at
    different steps). The all-reduced flag stops both after the same step, both save their shards,
    both exit 143 (torchrun's failure summary shows it), and the relaunch matches the 2-process
    fixture."""
    key = fx.current_key(2)
    entry = fx.get_entry(DEBUG_RECIPE, key)
    run_dir = tmp_path / "preempted2"

    proc, out = start_recipe(run_dir, *entry["overrides"], nproc=2)
    wait_for_step(proc, run_dir / "metrics.jsonl", SIGNAL_AFTER_STEP, out.read_text, TIMEOUT_S)
    _, workers = _torchrun_and_workers(proc.pid, 2)
    rank1 = [p for p in workers if "RANK=1" in Path(f"/proc/{p}/environ").read_bytes().decode(errors="replace").split("\0")]
    assert len(rank1) == 1
    os.kill(rank1[0], signal.SIGUSR1)
    text = finish(proc, out, TIMEOUT_S)
    assert proc.returncode == 1, f"run_train.sh should return torchrun's status 1, got {proc.returncode}:\n{text[-4000:]}"
    assert re.search(r"exitcode\s*:\s*143", text), text[-4000:]
    step = _stopped_step(run_dir, text)
    assert json.loads((run_dir / PREEMPTED_FILE).read_text())["signal"] == "another rank's signal"  # rank 0 saw none
    assert sorted(p.name for p in (run_dir / "checkpoint" / f"step-{step}").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    _assert_full_checkpoint(run_dir / "checkpoint" / f"step-{step}")

    second = launch(DEBUG_RECIPE, 2, run_dir, *entry["overrides"])
    assert_ok(second)
    assert f"Training starts at step {step + 1}" in second.stdout
    result = fx.check_run(DEBUG_RECIPE, run_dir, key=key)
    assert result.ok, result.table()
