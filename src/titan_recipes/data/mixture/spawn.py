"""A mixture server in a subprocess, for tests, benchmarks and scripts (:func:`spawn_server`, :func:`free_port`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_server(
    index_dir: str | os.PathLike[str], port: int, *, host: str = "127.0.0.1", log: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
) -> subprocess.Popen:
    """Start ``titan-recipes mixture serve INDEX_DIR --host HOST --port PORT`` in a subprocess (its log
    appended to ``log``, else discarded) and return once it accepts connections; RuntimeError with the
    end of the log if it exits or does not listen within ``timeout`` seconds. Stop it with SIGTERM
    (graceful) or SIGKILL (what a crash looks like to the clients)."""
    src = str(Path(__file__).resolve().parents[3])  # this checkout's src/, for a child with another cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "titan_recipes.cli", "mixture", "serve", str(index_dir), "--host", host,
               "--port", str(port)]
    with open(log if log is not None else os.devnull, "ab") as out:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)

    def tail() -> str:
        return Path(log).read_text(errors="replace")[-3000:] if log is not None else "(no log kept)"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mixture serve exited with {proc.returncode}: {tail()}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"mixture serve did not listen on {host}:{port} within {timeout:.0f} s: {tail()}")
