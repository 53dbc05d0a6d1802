"""Inside the image, at build time: the installed environment against the lock (``titan-recipes image verify``).

Installed versions equal the pins, Python is ``image.python``, the build args (image labels) equal the
lock, exactly one NCCL library exists (the lock's ``nvidia-nccl-cu*`` wheel), and ``pip check`` finds
nothing unexpected. Standard library only (see the package docstring).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from . import ContainerError
from .lock import GpuLock

LIBNCCL = re.compile(r"^libnccl\.so(\.\d+)*$")
STREAMING_UNDECLARED = "mosaicml-streaming"
"""Pinned without its declared dependency set (see the locks), so ``pip check`` lines about it are expected."""
UNDECLARED_BY_CHOICE = (("transformers", "typer"),) + tuple(
    ("lm-eval", req) for req in ("evaluate", "more-itertools", "pytablewriter", "rouge-score", "scikit-learn",
                                 "sqlitedict", "word2number"))
"""(package, requirement) pairs left out of the locks on purpose (env/README.md): transformers needs typer
only for its ``transformers`` command line; lm-eval needs the others only for generation metrics, result
tables, its request cache and vLLM, none of which ``titan-recipes eval`` uses."""


def find_nccl_libraries(roots: list[Path]) -> list[Path]:
    """Every ``libnccl.so*`` file (not symlink) under ``roots``."""
    found = []
    for root in roots:
        if not Path(root).is_dir():
            continue
        for dirpath, _, filenames in os.walk(root):
            found += [Path(dirpath) / f for f in filenames if LIBNCCL.match(f) and not (Path(dirpath) / f).is_symlink()]
    return sorted(found)


def verify_installed(lock: GpuLock, nccl_roots: list[Path] | None = None) -> list[str]:
    """Problems of this interpreter's environment against ``lock``: versions that differ from the pins,
    a Python that is not ``image.python``, and (when ``nccl_roots`` is given) any NCCL library other than
    the one of the lock's ``nvidia-nccl-cu*`` wheel. Empty when all is well."""
    from importlib import metadata

    problems = []
    for name, pinned in sorted(lock.pins.items()):
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name}=={pinned} is not installed")
            continue
        if installed != pinned:
            problems.append(f"{name}: installed {installed}, lock pins {pinned}")
    python = lock.image.get("python")
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python is not None and running != python:
        problems.append(f"python {running} runs, the lock's image.python is {python}")
    if nccl_roots is not None:
        package, _ = lock.nccl
        wheel_dir = f"nvidia{os.sep}nccl{os.sep}lib"
        libs = find_nccl_libraries(nccl_roots)
        ours = [p for p in libs if wheel_dir in str(p)]
        others = [p for p in libs if wheel_dir not in str(p)]
        if len(ours) != 1:
            problems.append(f"expected one libnccl from the {package} wheel (…/{wheel_dir}), found {[str(p) for p in ours]}")
        if others:
            problems.append(f"NCCL libraries outside the {package} wheel would shadow or be shadowed by it: {[str(p) for p in others]}")
    return problems


def pip_check_problems(output: str) -> list[str]:
    """``pip check`` lines that matter: all but mosaicml-streaming's (pinned without its declared deps) and
    the requirements of :data:`UNDECLARED_BY_CHOICE`."""
    def expected(line: str) -> bool:
        low = line.lower()
        return low.startswith(STREAMING_UNDECLARED) or any(
            low.startswith(f"{pkg} ") and f"requires {req}" in low for pkg, req in UNDECLARED_BY_CHOICE)

    return [line for line in output.splitlines() if line.strip() and not expected(line)
            and not line.startswith("No broken requirements")]


def expected_mismatches(lock: GpuLock, expect: list[str]) -> list[str]:
    """``NAME=VALUE`` build args (labels) that differ from the lock. NAME is a package, ``nccl``
    (the NCCL wheel's version), ``python`` or ``cuda-image``."""
    problems = []
    for item in expect:
        name, sep, value = item.partition("=")
        if not sep:
            raise ContainerError(f"--expect takes NAME=VERSION, got {item!r}.")
        special = {"nccl": lambda: lock.nccl[1], "python": lambda: lock.image_setting("python"),
                   "cuda-image": lambda: lock.image_setting("cuda")}
        pinned = special[name]() if name in special else lock.version(name)
        if value != pinned:
            problems.append(f"build arg {name}={value} but {lock.path} says {pinned}: the image's labels would not "
                            "match its contents; build with `nox -s image` or pass the lock's value")
    return problems


def verify_image(lock: GpuLock, expect: Sequence[str] = (), nccl_roots: list[Path] | None = None) -> list[str]:
    """Every problem of this environment against ``lock``: the ``expect`` build args, the installed
    versions and NCCL (:func:`verify_installed`) and ``pip check``. Empty when the image is as locked."""
    problems = expected_mismatches(lock, list(expect))
    problems += verify_installed(lock, nccl_roots=nccl_roots)
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems += [f"pip check: {line}" for line in pip_check_problems(pip.stdout)]
    return problems
