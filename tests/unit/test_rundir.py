"""titan_recipes.rundir: the run directory's lock (real flock between real processes) and the parent-death
signal (a real parent that dies). Each holder is a separate Python process running rundir.py by path, as
the launcher does: stdlib only, no torch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from titan_recipes import rundir

RUNDIR_PY = Path(rundir.__file__).resolve()

_HOLDER = textwrap.dedent("""
    import importlib.util, sys, time
    spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])
    rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)
    rundir.acquire(sys.argv[2])
    print("locked", flush=True)
    if sys.argv[3] == "release":
        rundir.release(sys.argv[2])
        print("released", flush=True)
    time.sleep(60)
""")


def _hold(run_dir: Path, then: str = "hold") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(RUNDIR_PY), str(run_dir), then],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    if then == "release":
        assert proc.stdout.readline().strip() == "released"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=30)


def test_second_holder_is_refused_with_the_holders_name(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "ACQUIRE_RETRY_S", 0.2)
    holder = _hold(tmp_path / "run")
    try:
        with pytest.raises(rundir.RunDirLockedError) as err:
            rundir.acquire(tmp_path / "run")
        msg = str(err.value)
        assert f"Run directory {tmp_path / 'run'} is in use by another launch" in msg
        assert f"host {socket.gethostname()}, pid {holder.pid} (since " in msg
        assert f"kill {holder.pid} on {socket.gethostname()}" in msg and "choose another RUN_DIR" in msg
        # the launcher's early check says the same, as a command that exits 1 (no torch import)
        proc = subprocess.run([sys.executable, str(RUNDIR_PY), "check", str(tmp_path / "run")],
                              capture_output=True, text=True)
        assert proc.returncode == 1 and f"pid {holder.pid}" in proc.stderr
    finally:
        _stop(holder)


def test_lock_of_a_killed_holder_is_taken_over_with_a_log_line(tmp_path, caplog):
    holder = _hold(tmp_path / "run")
    os.kill(holder.pid, signal.SIGKILL)  # no release: the kernel drops the flock, the holder line stays
    holder.wait(timeout=30)
    assert subprocess.run([sys.executable, str(RUNDIR_PY), "check", str(tmp_path / "run")]).returncode == 0
    with caplog.at_level("WARNING", logger="titan_recipes.rundir"):
        rundir.acquire(tmp_path / "run")
    try:
        assert f"taking over the lock of a launch that ended without releasing it (host {socket.gethostname()}, " \
               f"pid {holder.pid}" in caplog.text
        line = json.loads((tmp_path / "run" / rundir.LOCK_FILE).read_text())
        assert line["pid"] == os.getpid() and "released" not in line
    finally:
        rundir.release(tmp_path / "run")
    assert "released" in json.loads((tmp_path / "run" / rundir.LOCK_FILE).read_text())


def test_released_lock_is_free_and_not_reported_stale(tmp_path, caplog):
    holder = _hold(tmp_path / "run", then="release")
    try:
        with caplog.at_level("WARNING", logger="titan_recipes.rundir"):
            rundir.acquire(tmp_path / "run")
        rundir.acquire(tmp_path / "run")  # the same process again (inject, tests): shared, not refused
        rundir.release(tmp_path / "run")
        assert rundir.check(tmp_path / "run") is not None  # still held: one acquire is left
        rundir.release(tmp_path / "run")
        assert "taking over" not in caplog.text
        assert rundir.check(tmp_path / "run") is None
    finally:
        _stop(holder)


def test_without_flock_a_live_holder_on_this_host_is_refused_and_a_dead_one_taken_over(tmp_path, monkeypatch):
    """File systems without flock: the holder line decides (pid and its start time on this host)."""
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"host": socket.gethostname(), "pid": sleeper.pid, "pid_start_time": rundir._proc_start_time(sleeper.pid),
                  "since": "x", "command": "sleeper"}
        (run / rundir.LOCK_FILE).write_text(json.dumps(record) + "\n")
        monkeypatch.setattr(fcntl, "flock", no_flock)
        with pytest.raises(rundir.RunDirLockedError, match=f"pid {sleeper.pid}"):
            rundir.acquire(run)
        assert rundir.check(run) is not None
    finally:
        _stop(sleeper)
    rundir.acquire(run)  # the holder is gone now
    rundir.release(run)


def test_worker_dies_with_its_parent(tmp_path):
    """A parent that starts a child (in its own session, as torchrun does) and is SIGKILLed: the child,
    armed with die_with_parent, dies too; an unarmed one survives (what happened to trainers before)."""
    child_code = textwrap.dedent("""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("rundir", sys.argv[1])
        rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir)
        if sys.argv[2] == "arm":
            assert rundir.die_with_parent()
        print("ready", flush=True)
        time.sleep(60)
    """)
    parent_code = textwrap.dedent("""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], sys.argv[3]],
                                 stdout=subprocess.PIPE, start_new_session=True, text=True)
        assert child.stdout.readline().strip() == "ready"
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    pids = {}
    for mode in ("arm", "none"):
        parent = subprocess.Popen([sys.executable, "-c", parent_code, child_code, str(RUNDIR_PY), mode],
                                  stdout=subprocess.PIPE, text=True, env={**os.environ, rundir.LAUNCHER_PID_ENV: ""})
        pids[mode] = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=30)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pids["arm"]):
            time.sleep(0.05)
        assert not _alive(pids["arm"]), "an armed child outlived its parent"
        assert _alive(pids["none"])
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_worker_whose_parent_is_already_gone_exits(tmp_path):
    """The launcher died before the worker armed the signal: the expected parent pid no longer matches."""
    code = (f"import importlib.util, sys; spec = importlib.util.spec_from_file_location('rundir', {str(RUNDIR_PY)!r}); "
            f"m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); m.die_with_parent(); print('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, rundir.LAUNCHER_PID_ENV: "1"})  # pid 1 is not this child's parent
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
    assert "launcher (pid 1) is gone before training started" in proc.stderr


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
