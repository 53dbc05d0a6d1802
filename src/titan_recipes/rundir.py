"""One writer per run directory, and training processes that die with their launcher.

Standard library only, and runnable as a file (``python src/titan_recipes/rundir.py check RUN_DIR``), so
``scripts/recipe_launch.sh`` can refuse a second launch in about 30 ms, before importing torch and
before its ``tee`` appends to the running launch's ``train.log``.

**The lock.** Global rank 0 of a launch takes an exclusive ``fcntl.flock`` on ``RUN_DIR/launch.lock``
in :class:`titan_recipes.train.RecipeTrainer` before it writes anything into the directory (run record,
preemption marker, metrics, checkpoints), and keeps it until the Trainer closes. Rank 0 is the one
process every launch path has (``run_train.sh``, ``slurm/train.sbatch`` on N nodes, ``torchrun``
directly, :mod:`titan_recipes.inject`); the other ranks only write checkpoint shards, after rank 0 has
joined the process group, which it does only once it holds the lock. The file holds a JSON line that
names the holder (host, pid, start time, command), so a refused launch says who is writing.

A kernel lock is released when its holder dies, however it dies (SIGKILL, OOM killer, node reboot), so a
relaunch after a preemption or a crash is never refused: it finds the lock free and the old holder line
unreleased, logs that it takes over a stale lock, and goes on. A launch that ends normally marks the line
released. On a file system without ``flock`` (some network mounts report ENOLCK/EOPNOTSUPP) the holder line
decides alone: a holder on this host whose process is gone (or is another process with the same pid) is
stale; a holder on another host cannot be checked from here, so it is taken over with a warning, because
refusing would block every relaunch of a preempted job on a new node.

**Parent death.** torchrun starts its workers in their own session, so killing the launcher's process group
(``kill -9 -- -PGID``, a terminal closed, a job step whose steps-killer only knows the launcher) leaves the
workers training on, orphaned, into the run directory. :func:`die_with_parent` asks Linux
(``prctl(PR_SET_PDEATHSIG)``) to SIGKILL the worker when its parent, the torchrun agent, exits, and kills
the worker at once if the agent is already gone. SIGKILL rather than SIGTERM: with the agent gone nobody
enforces a shutdown timeout, so a graceful save could hang forever; a SIGKILL is what torchrun itself
sends after its timeout, and a relaunch resumes from the last complete checkpoint. Elsewhere (macOS,
Windows) it is a logged no-op.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = "launch.lock"
"""In the run directory: the ``flock`` target and the holder's JSON line. Never deleted (deleting a lock
file lets two processes lock two different files)."""
LAUNCHER_PID_ENV = "TITAN_RECIPES_LAUNCHER_PID"
"""Set by ``scripts/recipe_launch.sh`` to the pid that becomes torchrun: the parent a worker must have.
Without it, :func:`die_with_parent` takes the parent the worker has when it is called."""
ACQUIRE_RETRY_S = 2.0
"""How long :func:`acquire` retries a busy lock before refusing: a launcher's ``check`` holds it for
microseconds, and must not get the launch it probes refused."""
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
PR_SET_PDEATHSIG = 1

_held: dict[str, list[int]] = {}
"""Lock path -> [fd, count] of the locks this process holds; a second Trainer of the same process (inject,
tests) on the same directory shares the lock instead of refusing itself."""


class RunDirLockedError(RuntimeError):
    """Another live launch writes to this run directory."""


def _proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22): with the pid it
    identifies a process; a pid alone may have been reused."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    now = _proc_start_time(pid)
    return start_time is None or now is None or now == start_time


def holder_record(argv: list[str] | None = None) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start_time": _proc_start_time(pid),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "since_unix": round(time.time(), 3),
        "command": " ".join(sys.argv if argv is None else argv)[:500],
    }


def _read_holder(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        holder = json.loads(raw.decode("utf-8", "replace").strip() or "null")
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a launch that is still starting (its holder line is not written yet)"
    since = holder.get("since", "?")
    age = ""
    if isinstance(holder.get("since_unix"), (int, float)):
        age = f", {max(0.0, time.time() - holder['since_unix']):.0f} s ago"
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')} (since {since}{age}): {holder.get('command', '?')}"


def _locked_message(run_dir: str, holder: dict[str, Any] | None) -> str:
    pid = (holder or {}).get("pid", "<pid>")
    host = (holder or {}).get("host", "its host")
    return (
        f"Run directory {run_dir} is in use by another launch: {describe(holder)}. Only one launch may "
        f"write to a run directory (two would interleave metrics.jsonl and overwrite each other's "
        f"checkpoints). Wait for it to end, stop it (kill {pid} on {host}), or choose another RUN_DIR. "
        f"A lock left by a launch that died is taken over automatically. (lock: {os.path.join(run_dir, LOCK_FILE)})"
    )


def acquire(run_dir: str | os.PathLike, argv: list[str] | None = None) -> None:
    """Take the run directory's lock for this process, or raise :class:`RunDirLockedError` naming the
    holder. Creates the directory. Logs a line when it takes over a lock whose holder died."""
    run_dir = os.fspath(run_dir)
    path = os.path.realpath(os.path.join(run_dir, LOCK_FILE))
    if path in _held:
        _held[path][1] += 1
        return
    os.makedirs(run_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        kernel_lock = _flock(fd, run_dir)
        previous = _read_holder(fd)
        if not kernel_lock and previous and not previous.get("released"):
            _check_holder_without_flock(run_dir, previous)
        if previous and not previous.get("released"):
            logger.warning(
                "Run directory %s: taking over the lock of a launch that ended without releasing it (%s; "
                "%s). Its last complete checkpoint is where this launch resumes.",
                run_dir, describe(previous),
                "the kernel lock was free, so no process holds it" if kernel_lock else "process gone",
            )
        _write_holder(fd, holder_record(argv))
    except BaseException:
        os.close(fd)
        raise
    _held[path] = [fd, 1]


def _flock(fd: int, run_dir: str) -> bool:
    """Lock ``fd`` (retrying for ACQUIRE_RETRY_S); False when the file system has no flock."""
    import fcntl

    deadline = time.monotonic() + ACQUIRE_RETRY_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise RunDirLockedError(_locked_message(run_dir, _read_holder(fd))) from None
            time.sleep(0.05)
        except OSError as e:
            if e.errno in _NO_FLOCK:
                logger.warning("Run directory %s: the file system does not support flock (%s); the holder "
                               "line in %s decides alone.", run_dir, e, LOCK_FILE)
                return False
            raise


def _check_holder_without_flock(run_dir: str, holder: dict[str, Any]) -> None:
    if holder.get("host") == socket.gethostname():
        pid = holder.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid, holder.get("pid_start_time")):
            raise RunDirLockedError(_locked_message(run_dir, holder))
        return
    logger.warning("Run directory %s: the lock names a launch on another host (%s) and this file system "
                   "has no flock to tell whether it still runs; taking it over.", run_dir, describe(holder))


def release(run_dir: str | os.PathLike) -> None:
    """Mark the holder line released and unlock (after the last :func:`acquire` of this process)."""
    path = os.path.realpath(os.path.join(os.fspath(run_dir), LOCK_FILE))
    entry = _held.get(path)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] > 0:
        return
    del _held[path]
    fd = entry[0]
    try:
        holder = _read_holder(fd) or {}
        holder["released"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_holder(fd, holder)
    except OSError as e:  # a full disk must not hide the launch's own outcome
        logger.warning("Run directory %s: could not mark the lock released (%s); the next launch will "
                       "report it as stale and take it over.", run_dir, e)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def check(run_dir: str | os.PathLike) -> str | None:
    """The refusal message when a live launch holds the run directory's lock, else None. Probes without
    creating anything (the launcher calls it before torchrun)."""
    import fcntl

    path = os.path.join(os.fspath(run_dir), LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _locked_message(os.fspath(run_dir), _read_holder(fd))
        except OSError as e:
            if e.errno not in _NO_FLOCK:
                raise
            holder = _read_holder(fd)
            if holder and not holder.get("released") and holder.get("host") == socket.gethostname():
                pid = holder.get("pid")
                if isinstance(pid, int) and _pid_alive(pid, holder.get("pid_start_time")):
                    return _locked_message(os.fspath(run_dir), holder)
        return None
    finally:
        os.close(fd)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent exits (Linux ``PR_SET_PDEATHSIG``);
    if the parent is already gone (this process was reparented before the call), send it now. The
    expected parent is ``$TITAN_RECIPES_LAUNCHER_PID`` when set, else the current parent. Returns whether
    the death signal is armed. Children of this process (data-loader workers) do not inherit it."""
    if not sys.platform.startswith("linux"):
        logger.info("die_with_parent: not on Linux (%s); a worker orphaned by its launcher is not stopped.",
                    sys.platform)
        return False
    expected = os.environ.get(LAUNCHER_PID_ENV, "")
    parent = int(expected) if expected.isdigit() else os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as e:
        logger.warning("die_with_parent: prctl(PR_SET_PDEATHSIG) failed (%s); a worker orphaned by its "
                       "launcher is not stopped.", e)
        return False
    if os.getppid() != parent:  # the launcher died between our start and the prctl call
        print(f"titan-recipes: launcher (pid {parent}) is gone before training started; exiting.",
              file=sys.stderr, flush=True)
        os.kill(os.getpid(), sig)
    return True


def main(argv: list[str] | None = None) -> int:
    """``rundir.py check RUN_DIR``: exit 1 with the holder's description when a live launch holds the lock."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "check":
        print("usage: rundir.py check RUN_DIR", file=sys.stderr)
        return 2
    message = check(args[1])
    if message:
        print(f"titan-recipes: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
