"""Preemption works whatever the loader: the matrix of recipe x loader workers x signal delivery x processes.

Each cell starts a recipe's ``run_train.sh`` in its own session (like a Slurm job step), signals it
while it trains, and checks that the launch ends as documented (tests/integration/test_preemption.py):
the step in progress finishes, a full checkpoint is saved there, ``preempted.json`` names it with exit
code 143 (the trainer's status; run_train.sh returns torchrun's 1, which torchrun reports once it was
signalled itself), no reader process died of the signal; then a relaunch in the same directory trains
to the end and its losses equal an uninterrupted run's EXACTLY (full float precision, same machine).

Factors:
  recipe     debug (text), debug_mds (MDS), blendcorpus (Megatron blend), mixtera_slimpajama (mixture),
             llama3_1b (its CPU smoke config, what run_train.sh picks without a GPU; MDS)
  workers    0 or 2 reader processes (torch DataLoader workers). The mixture loader reads in the training
             process only (num_workers > 0 is a ConfigError by design), so its "2" level does not exist.
  delivery   "all": SIGTERM to torchrun and every process under it (trainers and their DataLoader
             workers), as Slurm signals every process of a job step; "torchrun": to torchrun only, which
             forwards it to its workers' process groups.
  nproc      1 or 2 processes (FSDP over gloo).
  when       "mid": after step 2 is logged; "step1": as soon as every rank logged its first batch (read
             from the trainers' own log files), so the stop lands right after step 1 (after torchtitan's step-1 validation in debug_mds and blendcorpus: the
             ``KeyError: 55`` case).

CI (``-m slow``) runs :data:`CI_CELLS`, the cells that reproduce the failures of issue 14's table, and
the mixture's 2 -> 1 resume; the full matrix (40 cells, 36 that exist, plus two step-1 cells and the
other loaders' 2 -> 1 resume; about 30 minutes on 2 cores, all green when last run) is opt-in:
``TITAN_FULL_MATRIX=1 pytest -m matrix tests/integration/test_preemption_matrix.py``.
Runs are short (5 steps, 2 samples per rank and step) to fit 2 shared CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launching import (
    REPO, assert_ok, launch, process_children, process_cmdline, process_descendants, process_parents, start_recipe,
)
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics
from titan_recipes.train import PREEMPTED_FILE

STEPS = 5
MID_STEP = 2  # "mid": signal once this step is logged
FIRST_BATCH = "samples per step from global sample 0"  # logged by each rank at its first batch (data/global_order.py)
TIMEOUT_S = 900  # generous: the CPUs of this machine are shared
COMMON = ("--training.steps", str(STEPS), "--training.local_batch_size", "2", "--checkpoint.interval", "100")
WORKER_KEY = {  # where each recipe's loader takes its worker count
    "debug": "--training.dataloader.num_workers",
    "debug_mds": "--mosaic_dataloader.num_workers",
    "blendcorpus": "--training.dataloader.num_workers",
    "mixtera_slimpajama": None,  # reads in the training process only
    "llama3_1b": "--mosaic_dataloader.num_workers",
}
RECIPES = list(WORKER_KEY)
FULL = os.environ.get("TITAN_FULL_MATRIX") == "1"
OPT_IN = [pytest.mark.matrix, pytest.mark.skipif(not FULL, reason="opt-in with the full matrix: TITAN_FULL_MATRIX=1")]


def cell_id(recipe: str, workers: int, delivery: str, nproc: int, when: str) -> str:
    return f"{recipe}-w{workers}-{delivery}-{nproc}p-{when}"


def all_cells() -> list[tuple]:
    return [(r, w, d, p, "mid") for r in RECIPES for w in (0, 2) for d in ("all", "torchrun") for p in (1, 2)
            if w == 0 or WORKER_KEY[r]]


STEP1_CELLS = [
    ("blendcorpus", 0, "all", 2, "step1"),  # the KeyError: 55 case (validation at step 1, FSDP)
    ("debug_mds", 2, "torchrun", 2, "step1"),  # SIGTERM to torchrun only, 2 workers, right after step 1
]
CI_CELLS = [
    ("debug_mds", 2, "all", 1, "mid"),  # 2 workers, SIGTERM to every process: the issue's first row
    ("llama3_1b", 2, "torchrun", 1, "mid"),  # torchrun only, the flagship's 2 workers: rows two and three
    STEP1_CELLS[0],
]
"""The cells CI runs (``-m slow``): each reproduces a failure of the issue's table on the code before
the fix. Every cell costs three launches (reference, preempted, relaunch), about a minute on 2 cores,
so the rest of the matrix is opt-in (``TITAN_FULL_MATRIX=1``, about 30 minutes: every cell green)."""


# -- processes ----------------------------------------------------------------------------------------
def _torchrun(proc: subprocess.Popen, nproc: int, out: Path) -> int:
    """The torchrun under the launch's shell, once it has started its ``nproc`` trainers."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        table = process_parents()
        for p in process_descendants(proc.pid, table):
            if "torch.distributed.run" in process_cmdline(p):
                if len([k for k in process_children(p, table) if "titan_recipes.train" in process_cmdline(k)]) == nproc:
                    return p
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no torchrun with {nproc} trainer(s) under pid {proc.pid}:\n{out.read_text()[-6000:]}")


def _trainer_logs(torchrun: int) -> list[Path]:
    """The files torchrun redirects its trainers' stdout and stderr to (``--tee``): /proc/<pid>/fd/1, 2."""
    files = {}
    for pid in process_children(torchrun, process_parents()):
        for fd in (1, 2):
            try:
                target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if target.is_file():
                files.setdefault(pid, []).append(target)
    assert files, f"torchrun {torchrun}'s trainers write to no file"
    return [_Joined(paths) for paths in files.values()]  # one per trainer: its stdout and stderr


class _Joined:
    def __init__(self, paths: list[Path]):
        self.paths = paths


def _read(log: _Joined) -> str:
    text = ""
    for path in log.paths:
        try:
            text += path.read_text(errors="replace")
        except OSError:
            pass
    return text


# -- data and launches --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_env(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Per-recipe environment: blendcorpus and the mixture make their data in a directory of this module
    (once); the MDS recipes make theirs where their TOML reads it (data/, skipped when present)."""
    root = tmp_path_factory.mktemp("data")
    return {"blendcorpus": {"DATA_DIR": str(root / "blendcorpus")},
            "mixtera_slimpajama": {"DATA_DIR": str(root / "mixtera")}}


def overrides(recipe: str, workers: int) -> list[str]:
    extra = [WORKER_KEY[recipe], str(workers)] if WORKER_KEY[recipe] else []  # explicit: some TOMLs say 2
    return [*COMMON, *extra]


_REFERENCES: dict[tuple[str, int], dict[int, float]] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_env):
    """Losses of an uninterrupted run per (recipe, nproc), with 0 workers (workers change no batch)."""

    def get(recipe: str, nproc: int) -> dict[int, float]:
        key = (recipe, nproc)
        if key not in _REFERENCES:
            run_dir = tmp_path_factory.mktemp(f"ref-{recipe}-{nproc}") / "run"
            proc = launch(REPO / "recipes" / recipe, nproc, run_dir, *overrides(recipe, 0), env=data_env.get(recipe))
            assert_ok(proc)
            losses = fx.run_losses(run_dir)
            assert sorted(losses) == list(range(1, STEPS + 1))
            _REFERENCES[key] = losses
        return _REFERENCES[key]

    return get


def _wait(proc: subprocess.Popen, out: Path, ready, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (exit {proc.returncode}) before {what}:\n{out.read_text()[-6000:]}")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"{what} not seen within {TIMEOUT_S} s:\n{out.read_text()[-6000:]}")


def _logged(run_dir: Path, step: int) -> bool:
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and any(r.get("step", 0) >= step for r in read_metrics(metrics))


def preempt_and_resume(tmp_path: Path, reference, data_env, recipe: str, workers: int, delivery: str, nproc: int,
                       when: str) -> dict:
    """One cell; returns what happened (for the report)."""
    env = data_env.get(recipe)
    args = overrides(recipe, workers)
    run_dir = tmp_path / "run"
    proc, out = start_recipe(run_dir, *args, nproc=nproc, recipe=REPO / "recipes" / recipe, env=env)
    torchrun = _torchrun(proc, nproc, out)  # found before the trigger, so the signal follows it closely
    if when == "step1":  # every rank has passed its first step boundary and reads step 1's batch
        logs = _trainer_logs(torchrun)  # read directly: torchrun's tee of them lags by seconds
        _wait(proc, out, lambda: all(FIRST_BATCH in _read(f) for f in logs), "every rank's first batch")
    else:
        _wait(proc, out, lambda: _logged(run_dir, MID_STEP), f"step {MID_STEP}")
    table = process_parents()
    trainers = process_children(torchrun, table)
    targets = [torchrun] if delivery == "torchrun" else [torchrun, *process_descendants(torchrun, table)]
    readers = [p for p in process_descendants(torchrun, table) if p not in trainers]  # DataLoader workers
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = out.read_text()
    assert "killed by signal" not in text, f"a reader process died of the signal:\n{text[-6000:]}"
    assert proc.returncode == 1, f"run_train.sh should return torchrun's status 1, got {proc.returncode}:\n{text[-6000:]}"
    match = re.search(r"preempted: saved checkpoint at step (\d+), exiting with code 143", text)
    assert match, f"no preemption save in the output:\n{text[-6000:]}"
    step = int(match.group(1))
    if when == "step1":
        assert step == 1, f"the signal sent at the start of training stopped at step {step}, not after step 1"
    else:
        assert MID_STEP <= step < STEPS, f"stopped at step {step}"
    marker = json.loads((run_dir / PREEMPTED_FILE).read_text())
    assert (marker["step"], marker["exit_code"], marker["checkpoint"]) == (step, 143, f"checkpoint/step-{step}")
    assert (run_dir / "checkpoint" / f"step-{step}" / ".metadata").is_file()
    assert sorted(fx.run_losses(run_dir)) == list(range(1, step + 1))  # no step after the signal

    second = launch(REPO / "recipes" / recipe, nproc, run_dir, *args, env=env)
    assert_ok(second)
    assert f"Training starts at step {step + 1}" in second.stdout
    assert not (run_dir / PREEMPTED_FILE).exists()
    got, want = fx.run_losses(run_dir), reference(recipe, nproc)
    assert got == want, "the relaunch does not reproduce the uninterrupted losses:\n" + "\n".join(
        f"  step {s}: {got.get(s)!r} vs {want[s]!r}" for s in sorted(want))
    return {"stopped_at": step, "signalled": len(targets), "readers_signalled": len([p for p in readers if p in targets])}


def _report(cell: tuple, result: dict) -> None:
    """Append the cell's result to $TITAN_MATRIX_REPORT (a JSON line each) when set."""
    path = os.environ.get("TITAN_MATRIX_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"cell": cell_id(*cell), **result}) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("cell", CI_CELLS, ids=[cell_id(*c) for c in CI_CELLS])
def test_preemption_issue_cells(cell, tmp_path, reference, data_env):
    _report(cell, preempt_and_resume(tmp_path, reference, data_env, *cell))


@pytest.mark.matrix
@pytest.mark.skipif(not FULL, reason="opt-in with the full matrix: TITAN_FULL_MATRIX=1")
@pytest.mark.parametrize("cell", all_cells() + STEP1_CELLS, ids=[cell_id(*c) for c in all_cells() + STEP1_CELLS])
def test_preemption_matrix(cell, tmp_path, reference, data_env):
    _report(cell, preempt_and_resume(tmp_path, reference, data_env, *cell))


def test_the_matrix_has_every_level_and_ci_cells_are_in_it():
    """The full matrix holds every recipe x workers x delivery x nproc that exists (the mixture reads in
    the training process only: no 2-worker level), plus the step-1 cells; the CI cells are among them."""
    cells = all_cells()
    assert len(cells) == 36 and {c[0] for c in cells} == set(RECIPES)
    assert {c for c in CI_CELLS if c[4] == "mid"} <= set(cells)
    assert {c for c in CI_CELLS if c[4] == "step1"} <= set(STEP1_CELLS)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    "mixtera_slimpajama",  # refused with FingerprintMismatchError before
    pytest.param("debug", marks=OPT_IN),  # 2 -> 1 at step 2 in CI: tests/integration/test_preemption.py
    pytest.param("blendcorpus", marks=OPT_IN),
])
def test_preempted_with_two_processes_resumes_with_one(recipe, tmp_path, data_env):
    """SIGTERM to every process of a 2-process run, relaunch with 1 process: the loader continues the
    global order; for the mixture, the old ranks' unread documents first, and no error about the data
    (it was refused with FingerprintMismatchError). tests/unit/data/test_mixture_elastic.py proves that
    no document is lost or repeated, 2 -> 1 and 1 -> 2; the other loaders' unit tests do the same."""
    env, args, run_dir = data_env.get(recipe), overrides(recipe, 0), tmp_path / "run"
    proc, out = start_recipe(run_dir, *args, nproc=2, recipe=REPO / "recipes" / recipe, env=env)
    torchrun = _torchrun(proc, 2, out)
    _wait(proc, out, lambda: _logged(run_dir, MID_STEP), f"step {MID_STEP}")
    for pid in [torchrun, *process_descendants(torchrun, process_parents())]:
        os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=TIMEOUT_S)
    text = out.read_text()
    match = re.search(r"preempted: saved checkpoint at step (\d+), exiting with code 143", text)
    assert match, f"no preemption save in the output:\n{text[-6000:]}"
    step = int(match.group(1))

    second = launch(REPO / "recipes" / recipe, 1, run_dir, *args, env=env)
    assert_ok(second)
    assert f"Training starts at step {step + 1}" in second.stdout
    if recipe == "mixtera_slimpajama":
        assert "the checkpoint was written with DP degree 2, this run has 1" in second.stdout
    assert sorted(fx.run_losses(run_dir)) == list(range(1, STEPS + 1))
