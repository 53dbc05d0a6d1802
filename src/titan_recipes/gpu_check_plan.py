"""The wheelhouse and the command lines of ``nox -s gpu_check`` (``scripts/gpu_check.py``).

A GPU node without internet gets what its image lacks as wheels: ``nox -s wheelhouse`` downloads the
cp312 wheels pinned in ``env/wheelhouse.txt`` (:func:`read_wheelhouse_spec`) into ``wheelhouse/``
(:func:`build_wheelhouse`); the node installs them into a fresh directory with ``pip install --no-index
--no-deps --target`` (:func:`install_command`) and trains with ``PYTHONPATH=<checkout>/src:<that
directory>``. titan-recipes itself is not a wheel there: it finds its recipes' assets (the embedded
corpus, tokenizers, eval tasks) relative to its own files, so it runs from the checkout's ``src``.

A ``--target`` directory rather than a ``--system-site-packages`` venv: the node's ``python3`` can
itself be a venv's (images often install torch into one), and a venv made from it sees the base
interpreter's packages, not the ones that hold torch.

:func:`check_closure` proves offline that the wheelhouse is complete: every requirement each wheel
declares (for CPython 3.12 on Linux) is another wheel, a package of the node's image (``#provided:``)
or deliberately skipped (``#skipped:``, with the reason). :func:`resolve_command` asks pip the same for
the pinned set (``--dry-run`` for cp312 against the wheelhouse alone).

Everything here needs only the standard library, pip and ``packaging`` (in both locks and the node's
image), so the check's driver imports it before the wheelhouse is installed; ``nox -s wheelhouse``
needs only pip.
"""

from __future__ import annotations

import email.parser
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SPEC_FILE = REPO / "env" / "wheelhouse.txt"
WHEELHOUSE = REPO / "wheelhouse"
WHEELHOUSE_LIMIT_BYTES = 60 * 2**20
"""60 MiB: the device machine of this project receives at most 64 MiB, the checkout included."""
TARGET_PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
)
"""pip matches each manylinux tag exactly, so every glibc level up to the node's (2.28) is named."""
TARGET_ENVIRONMENT = {
    "python_version": TARGET_PYTHON, "python_full_version": "3.12.3", "sys_platform": "linux",
    "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
    "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": "",
}
"""The GPU node's marker environment (Python 3.12.3 there), for Requires-Dist markers."""


def normalize(name: str) -> str:
    """PEP 503 name: ``Mosaicml_Streaming`` -> ``mosaicml-streaming``."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.name}=={self.version}"


@dataclass
class WheelhouseSpec:
    """``env/wheelhouse.txt``: the pinned wheels, what the node provides, what is skipped on purpose."""

    pins: list[Pin]
    provided: set[str]
    """Normalized names the GPU node's image has (``#provided:`` lines)."""
    skipped: dict[str, set[str]] = field(default_factory=dict)
    """wheel name -> declared requirements not installed (``#skipped: WHEEL: NAME ... -- why``)."""


def read_wheelhouse_spec(path: Path = SPEC_FILE) -> WheelhouseSpec:
    pins, provided, skipped = [], set(), {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#provided:"):
            provided.update(normalize(n) for n in line.split(":", 1)[1].split())
        elif line.startswith("#skipped:"):
            _, wheel, rest = line.split(":", 2)
            skipped.setdefault(normalize(wheel.strip()), set()).update(normalize(n) for n in rest.split("--")[0].split())
        elif line and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", line)
            if not match:
                raise ConfigError(f"{path}:{number}: '{line}' is not NAME==VERSION: pin every wheel exactly.")
            pins.append(Pin(normalize(match.group(1)), match.group(2)))
    names = [p.name for p in pins]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path} pins {sorted({n for n in names if names.count(n) > 1})} more than once: keep one "
                          "version of each (two stop the whole install).")
    return WheelhouseSpec(pins, provided, skipped)


def wheel_pin(wheel: Path) -> Pin:
    """(name, version) from a wheel's file name (``duckdb-1.5.6-cp312-...whl``)."""
    name, version = Path(wheel).name.split("-")[:2]
    return Pin(normalize(name), version)


def platform_args() -> list[str]:
    args = ["--only-binary=:all:", "--python-version", TARGET_PYTHON, "--implementation", "cp", "--abi", "cp312"]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    return args


def download_command(python: str, pins: list[Pin], dest: Path) -> list[str]:
    """``pip download`` of ``pins`` for the node: cp312 binaries only, no dependency resolution (each
    needed dependency is pinned in the spec itself)."""
    return [python, "-m", "pip", "download", "--no-deps", *platform_args(), "-d", str(dest), *map(str, pins)]


def resolve_command(python: str, wheelhouse: Path, pins: list[Pin], scratch: Path) -> list[str]:
    """pip's own answer, offline: does every pin have a cp312 wheel in ``wheelhouse``? (pip takes the
    platform options only with ``--target``; ``--dry-run`` writes nothing there.) Run it with
    :func:`offline_pip_env`."""
    return [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--no-index",
            "--find-links", str(wheelhouse), "--target", str(scratch), *platform_args(), "--report", "-", "-q",
            *map(str, pins)]


def offline_pip_env(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` without pip's settings: a ``PIP_FIND_LINKS``, ``PIP_CONSTRAINT`` or pip.conf of the
    machine would let pip find wheels outside the wheelhouse, and the check would prove nothing."""
    return {**{k: v for k, v in environ.items() if not k.startswith("PIP_")}, "PIP_CONFIG_FILE": "/dev/null"}


def install_command(python: str, wheels: list[Path], target: Path) -> list[str]:
    """Install ``wheels`` into ``target`` (run with ``PYTHONPATH=target``), offline and exactly as given."""
    return [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
            "--target", str(target), *map(str, wheels)]


def wheels_in(wheelhouse: Path) -> list[Path]:
    return sorted(Path(wheelhouse).glob("*.whl"))


def wheelhouse_bytes(wheelhouse: Path) -> int:
    return sum(w.stat().st_size for w in wheels_in(wheelhouse))


def check_size(wheelhouse: Path, limit: int = WHEELHOUSE_LIMIT_BYTES) -> int:
    size = wheelhouse_bytes(wheelhouse)
    if size > limit:
        biggest = sorted(wheels_in(wheelhouse), key=lambda w: w.stat().st_size)[-3:]
        raise ConfigError(
            f"{wheelhouse} holds {size / 2**20:.1f} MiB of wheels, over the {limit / 2**20:.0f} MiB the GPU machine "
            f"receives (largest: {', '.join(f'{w.name} {w.stat().st_size / 2**20:.1f} MiB' for w in reversed(biggest))}). "
            "Drop a wheel from env/wheelhouse.txt that the node's image already has."
        )
    return size


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(z.read(name).decode())
    return metadata.get_all("Requires-Dist") or []


def check_closure(wheelhouse: Path, spec: WheelhouseSpec) -> dict[str, list[str]]:
    """Every wheel's declared requirements (markers evaluated for the node; extras left out) must be
    another wheel, provided by the node, or skipped on purpose. Returns wheel -> names it needs from
    the node; raises ConfigError naming each unmet requirement."""
    from packaging.requirements import Requirement  # in gpu.lock and the node's image; imported here, when used

    present = {wheel_pin(w).name for w in wheels_in(wheelhouse)}
    needs: dict[str, list[str]] = {}
    missing = []
    for wheel in wheels_in(wheelhouse):
        owner = wheel_pin(wheel).name
        needs[owner] = []
        for text in _requirements(wheel):
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(TARGET_ENVIRONMENT):
                continue
            name = normalize(req.name)
            if name in present or name in spec.skipped.get(owner, set()):
                continue
            if name in spec.provided:
                needs[owner].append(name)
            else:
                missing.append(f"{owner} needs {text}")
    if missing:
        raise ConfigError(
            f"the wheelhouse {wheelhouse} is incomplete for the GPU node: {'; '.join(missing)}. Pin each in "
            f"{SPEC_FILE.name} (NAME==VERSION from env/gpu.lock), or list it on a #provided: line if the node's "
            "image has it, or on a #skipped: line with the reason it is not needed."
        )
    return needs


def _present(wheelhouse: Path, pin: Pin) -> bool:
    return any(wheel_pin(w) == pin for w in wheels_in(wheelhouse))


def build_wheelhouse(wheelhouse: Path = WHEELHOUSE, spec_file: Path = SPEC_FILE, python: str | None = None,
                     log=print) -> dict:
    """Download the missing pinned wheels (those already in ``wheelhouse`` are kept: the cache), remove
    wheels no pin names (an older version would stop the install), and check the size. Returns what it did."""
    python = python or sys.executable
    wheelhouse = Path(wheelhouse)
    wheelhouse.mkdir(parents=True, exist_ok=True)
    spec = read_wheelhouse_spec(spec_file)
    missing = [p for p in spec.pins if not _present(wheelhouse, p)]
    download_s = 0.0
    if missing:
        command = download_command(python, missing, wheelhouse)
        log("+ " + " ".join(command))
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        download_s = time.perf_counter() - start
        if proc.returncode != 0:
            raise ConfigError(f"pip download failed (exit {proc.returncode}) for {', '.join(map(str, missing))}:\n"
                              f"{proc.stderr[-3000:]}\nIs a package index reachable from here (a login node with "
                              "internet)? A pin without a cp312 manylinux wheel needs another version in "
                              f"{spec_file}.")
    wanted = set(spec.pins)
    stale = [w for w in wheels_in(wheelhouse) if wheel_pin(w) not in wanted]
    for w in stale:
        w.unlink()
    size = check_size(wheelhouse)
    log(f"wheelhouse {wheelhouse}: {len(wheels_in(wheelhouse))} wheels, {size / 2**20:.1f} MiB "
        f"(limit {WHEELHOUSE_LIMIT_BYTES / 2**20:.0f} MiB); downloaded {len(missing)} in {download_s:.1f} s"
        + (f", removed stale {[w.name for w in stale]}" if stale else ""))
    return {"wheels": [w.name for w in wheels_in(wheelhouse)], "bytes": size, "downloaded": [str(p) for p in missing],
            "download_s": round(download_s, 1), "removed": [w.name for w in stale]}


def installable_here(wheels: list[Path]) -> list[Path]:
    """The wheels the running interpreter can install (pure ones, abi3 ones for its version): the CPU
    dry run installs these to prove the install path; the cp312-only ones are proven by :func:`resolve_command`."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    here = set(sys_tags())
    return [w for w in wheels if parse_wheel_filename(w.name)[3] & here]
