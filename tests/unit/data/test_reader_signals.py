"""Reader worker processes ignore the preemption signals: the trainer alone decides.

Slurm signals every process of a job step, and torchrun forwards SIGTERM/SIGINT/SIGHUP/SIGQUIT (and
SIGUSR1) to its workers' process groups, so torch DataLoader workers receive them too. torch's worker
SIGTERM handler dies unless the signal came from the parent, and the trainer then raises "DataLoader
worker (pid N) is killed by signal: Terminated" before it can save. These tests signal real worker
processes and keep reading.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from titan_recipes.data.workers import Workers, protect_workers, reader_signals, set_preemption_signals, signals_blocked
from titan_recipes.data.random_tokens.loader import RandomTokenLoader
from titan_recipes.inject.data import ResumableLoader

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _children() -> list[int]:
    me, kids = os.getpid(), []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                kids.append(int(d.name))
    return kids


def _signal_all(pids: list[int]) -> None:
    for pid in pids:
        for s in SIGNALS:
            os.kill(pid, s)
    time.sleep(0.5)  # let a worker that would die of them die


def loader(workers: int) -> RandomTokenLoader:
    return RandomTokenLoader(vocab_size=100, seq_len=8, seed=3, local_batch_size=2, dp_rank=0, dp_world_size=1,
                             workers=Workers(num_workers=workers))


def test_loader_workers_survive_preemption_signals_and_batches_are_unchanged():
    set_preemption_signals(["SIGTERM", "SIGUSR1"])
    before = set(_children())
    it = iter(loader(2))
    got = [next(it)]
    workers = [p for p in _children() if p not in before]
    assert len(workers) == 2, workers
    _signal_all(workers)
    got += [next(it) for _ in range(9)]
    assert all(os.waitpid(p, os.WNOHANG) == (0, 0) for p in workers)  # both alive
    ref_it = iter(loader(0))
    for (x, y), (rx, ry) in zip(got, [next(ref_it) for _ in range(10)], strict=True):
        assert torch.equal(x["input"], rx["input"]) and torch.equal(y, ry)
    del it


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.tensor([i * i])


def test_an_injected_dataloader_keeps_its_worker_init_fn_and_ignores_the_signals(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()

    def init(worker_id):
        (marks / str(worker_id)).write_text(str(os.getpid()))

    before = set(_children())
    plain = torch.utils.data.DataLoader(_Squares(), batch_size=4, num_workers=2, worker_init_fn=init)
    resumable = ResumableLoader(plain, infinite=False)
    it = iter(resumable)
    first = next(it)
    workers = [p for p in _children() if p not in before]
    deadline = time.monotonic() + 60
    while sum(1 for f in marks.iterdir() if f.read_text()) < 2 and time.monotonic() < deadline:  # one may still start
        time.sleep(0.05)
    assert sorted(int(f.read_text()) for f in marks.iterdir()) == sorted(workers)  # the user's init ran
    _signal_all(workers)
    rest = list(it)
    assert torch.equal(torch.cat([first, *rest]).flatten(), torch.arange(64) ** 2)
    wrapped = plain.worker_init_fn
    assert protect_workers(plain) is plain and plain.worker_init_fn is wrapped and wrapped.then is init  # wraps once


def test_signals_are_blocked_only_while_workers_are_forked():
    sigs = set(reader_signals())
    assert {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP} <= sigs
    assert not sigs & signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with signals_blocked():
        assert sigs <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert not sigs & signal.pthread_sigmask(signal.SIG_BLOCK, [])


EXIT_WITH_LIVE_WORKERS = """
import titan_recipes
from titan_recipes.data.random_tokens.loader import RandomTokenLoader
from titan_recipes.data.workers import Workers
loader = RandomTokenLoader(vocab_size=50, seq_len=8, seed=1, local_batch_size=2, dp_rank=0, dp_world_size=1,
                           workers=Workers(num_workers=2))
it = iter(loader)
next(it)
print("read", flush=True)
"""


def test_a_process_exits_while_its_reader_workers_are_alive():
    """multiprocessing's exit handler terminates daemonic children with SIGTERM and joins them; the reader
    workers ignore SIGTERM, so without titan_recipes' exit handler this process would never end."""
    import subprocess
    import sys

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_WITH_LIVE_WORKERS], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "read" in proc.stdout, proc.stderr[-2000:]
    assert time.monotonic() - start < 60
