"""The GPU image and the GPU check: the command lines behind ``nox -s image``, ``enroot`` and ``gpu``.

One source of truth: ``env/gpu.lock`` pins every Python package of the image, and its header lines
``# image.cuda: <CUDA base image>`` and ``# image.python: <major.minor>`` pin the rest. The functions
here read that lock and build the exact commands, so the nox sessions stay thin and the tests check the
commands without a container engine:

- :func:`detect_engine` finds docker or podman *with a working engine* (``<engine> info`` succeeds);
  :func:`build_command` is ``<engine> build`` with the lock's versions as ``--build-arg`` (the
  Dockerfile's ``ARG`` defaults equal them; ``tests/unit/test_container.py`` checks both) and the git
  revision as an OCI label.
- :func:`enroot_import_command` turns the built image into a squashfs file for pyxis
  (``srun --container-image=<file>.sqsh``).
- :func:`verify_installed` runs inside the image at build time (``python -m titan_recipes.container
  verify-image``): installed versions equal the lock, Python is the pinned one, exactly one NCCL library
  exists (the lock's ``nvidia-nccl-cu*`` wheel), and ``pip check`` finds nothing unexpected.
- :func:`render_edf` expands an environment definition file (``env/titan-recipes.edf.toml``) the way the
  container engine does (``python -m titan_recipes.container edf``).
- ``python -m titan_recipes.container gpu RECIPE`` trains a recipe on the GPUs of this node through its
  ``run_train.sh`` with the overrides of the fixture entry for this GPU type, compares the losses
  (:func:`titan_recipes.fixtures.check_run`) and prints :func:`throughput_summary` of the run's
  ``metrics.jsonl``.

Importing this module needs only the standard library (the nox sessions load it by file path from
the host Python, which has no torch); the GPU path imports torch and the fixtures module when it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_LOCK = Path("env") / "gpu.lock"
IMAGE_NAME = "titan-recipes"
ENGINES = ("docker", "podman")
ENGINE_ENV = "CONTAINER_ENGINE"
"""Environment variable that picks the engine when both are installed (``docker`` or ``podman``)."""

NCCL_PACKAGE = re.compile(r"^nvidia-nccl-cu\d+$")
LIBNCCL = re.compile(r"^libnccl\.so(\.\d+)*$")
IMAGE_KEY = re.compile(r"^#\s*image\.([a-z][a-z0-9_-]*):\s*(\S+)\s*$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")
STREAMING_UNDECLARED = "mosaicml-streaming"
"""Pinned without its declared dependency set (see the locks), so ``pip check`` lines about it are expected."""

THROUGHPUT_KEY = "throughput(tps)"
MFU_KEY = "mfu(%)"
TFLOPS_KEY = "tflops"
MEMORY_KEY = "memory/max_reserved(GiB)"


class ContainerError(RuntimeError):
    """A container tool is missing or not working, the lock is malformed, or a GPU check cannot run."""


# ---------------------------------------------------------------------------------------------- lock


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class GpuLock:
    """``env/gpu.lock``: package pins, the image settings of its header, and pip options."""

    path: Path
    pins: dict[str, str]
    """Canonical package name (``typing-extensions``) -> exact version (``2.11.0+cu130``)."""
    image: dict[str, str]
    """``# image.<key>: <value>`` header lines: ``cuda`` (base image) and ``python`` (major.minor)."""
    options: list[str] = field(default_factory=list)
    """pip option lines (``--extra-index-url ...``)."""

    def version(self, package: str) -> str:
        try:
            return self.pins[_canonical(package)]
        except KeyError:
            raise ContainerError(f"{self.path} pins no {package}; add '{package}==<version>' to it.") from None

    @property
    def nccl(self) -> tuple[str, str]:
        """(package, version) of the one NCCL wheel; the image may hold no other NCCL."""
        found = [(n, v) for n, v in self.pins.items() if NCCL_PACKAGE.match(n)]
        if len(found) != 1:
            raise ContainerError(
                f"{self.path} must pin exactly one NCCL wheel (nvidia-nccl-cu<N>), found {found or 'none'}: "
                "torch loads the NCCL it finds first, and two of them make the version a run uses an accident."
            )
        return found[0]

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def build_args(self) -> dict[str, str]:
        """The Dockerfile's ``ARG``s that carry versions; their defaults there must equal these."""
        return {
            "CUDA_IMAGE": self.image_setting("cuda"),
            "PYTHON_VERSION": self.image_setting("python"),
            "TORCH_VERSION": self.version("torch"),
            "TORCHTITAN_VERSION": self.version("torchtitan"),
            "NCCL_VERSION": self.nccl[1],
        }

    def image_setting(self, key: str) -> str:
        if key not in self.image:
            raise ContainerError(f"{self.path} has no '# image.{key}: <value>' header line (has: {sorted(self.image)}).")
        return self.image[key]


def read_lock(path: Path) -> GpuLock:
    """Parse a lock written as ``name==version`` lines, ``# image.<key>: <value>`` lines and pip options.
    Anything else that is not a comment is an error: the Dockerfile installs it with ``--no-deps``, so a
    range or an unpinned name would install whatever is newest on the day of the build."""
    path = Path(path)
    if not path.is_file():
        raise ContainerError(f"lock file {path} not found (the default is {GPU_LOCK} in the repository).")
    pins: dict[str, str] = {}
    image: dict[str, str] = {}
    options: list[str] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if m := IMAGE_KEY.match(line):
                image[m.group(1)] = m.group(2)
            continue
        if line.startswith("--"):
            options.append(line)
            continue
        m = PIN.match(line)
        if not m:
            raise ContainerError(f"{path}:{number}: '{line}' is not an exact pin 'name==version'.")
        name = _canonical(m.group(1))
        if name in pins:
            raise ContainerError(f"{path}:{number}: {m.group(1)} is pinned twice ({pins[name]} and {m.group(2)}).")
        pins[name] = m.group(2)
    return GpuLock(path, pins, image, options)


def project_version(repo: Path = REPO_ROOT) -> str:
    """``version`` of pyproject.toml's [project] table (read with a regex: the host Python may lack tomllib)."""
    m = re.search(r'^version\s*=\s*"([^"]+)"', (Path(repo) / "pyproject.toml").read_text(), flags=re.M)
    if not m:
        raise ContainerError(f"no version = \"...\" line in {Path(repo) / 'pyproject.toml'}.")
    return m.group(1)


def image_tag(lock: GpuLock, project_version: str) -> str:
    """``titan-recipes:<project version>-torch<torch version>`` with ``+`` (not allowed in tags) as ``-``."""
    return f"{IMAGE_NAME}:{project_version}-torch{lock.version('torch').replace('+', '-')}"


# -------------------------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Engine:
    name: str
    """``docker`` or ``podman``."""
    path: str
    """Absolute path of the executable that answered ``<engine> info``."""


def detect_engine(path: str | None = None, prefer: str | None = None, timeout: float = 30.0) -> Engine:
    """The first of docker/podman (``prefer`` first; default from ``$CONTAINER_ENGINE``) found on
    ``path`` (default ``$PATH``) whose ``info`` succeeds. ``info`` asks the engine itself, so an installed
    docker CLI without a running daemon is reported as such instead of failing in the middle of a build."""
    prefer = prefer if prefer is not None else os.environ.get(ENGINE_ENV)
    if prefer and prefer not in ENGINES:
        raise ContainerError(f"{ENGINE_ENV}={prefer!r} is not one of {', '.join(ENGINES)}.")
    order = sorted(ENGINES, key=lambda name: name != prefer)
    found = [(name, shutil.which(name, path=path)) for name in order]
    found = [(name, exe) for name, exe in found if exe]
    if not found:
        raise ContainerError(
            "neither docker nor podman was found on PATH, so no image can be built here. Install one: "
            "Podman (no daemon, rootless: `apt install podman` / `dnf install podman`) or Docker Engine "
            "(https://docs.docker.com/engine/install/), then run `nox -s image` again. On a cluster without "
            "either, build on a workstation and copy the .sqsh file (README, 'On a cluster')."
        )
    failures = []
    for name, exe in found:
        try:
            proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            failures.append(f"`{exe} info` did not answer within {timeout:.0f} s")
            continue
        if proc.returncode == 0:
            logger.info("container engine: %s (%s)", name, exe)
            return Engine(name, exe)
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        failures.append(f"`{exe} info` exited {proc.returncode}: {detail[-1] if detail else 'no output'}")
    raise ContainerError(
        f"found {' and '.join(name for name, _ in found)} but no working container engine ("
        + "; ".join(failures)
        + "). Start the Docker daemon (`sudo systemctl start docker`; your user needs the docker group), "
        f"or use podman (no daemon; `podman info` must succeed) with {ENGINE_ENV}=podman."
    )


def git_revision(repo: Path = REPO_ROOT) -> str:
    """HEAD's SHA, with ``-dirty`` when tracked files differ from it; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def build_command(
    engine: Engine,
    lock: GpuLock,
    tag: str,
    *,
    context: Path = Path("."),
    dockerfile: Path = Path("Dockerfile"),
    revision: str = "unknown",
    created: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``<engine> build`` of the Dockerfile with the lock's versions as build args and the lock's path
    (relative to ``context``) as ``GPU_LOCK``. The revision and the build time are labels here because the
    Dockerfile cannot know them. ``extra`` (``--no-cache``, ``--platform ...``) goes before the context."""
    created = created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    lock_in_context = os.path.relpath(lock.path.resolve(), Path(context).resolve())
    if lock_in_context.startswith(".."):
        raise ContainerError(f"the lock {lock.path} must lie inside the build context {context}.")
    args = {**lock.build_args(), "GPU_LOCK": lock_in_context, "LOCK_SHA256": lock.sha256(), "IMAGE_TAG": tag}
    command = [engine.name, "build", "-f", str(dockerfile), "-t", tag]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    command += [
        "--label", f"org.opencontainers.image.revision={revision}",
        "--label", f"org.opencontainers.image.created={created}",
        *extra,
        str(context),
    ]
    return command


def image_exists_command(engine: Engine, tag: str) -> list[str]:
    """Exits 0 when ``tag`` is in the engine's local image store."""
    return [engine.name, "image", "inspect", "--format", "{{.Id}}", tag]


def image_present(engine: Engine, tag: str) -> bool:
    """Whether ``tag`` is in the engine's local images (``enroot import`` reads it from there)."""
    return subprocess.run(image_exists_command(engine, tag), capture_output=True).returncode == 0


def enroot_import_command(engine: Engine, tag: str, output: Path) -> list[str]:
    """``enroot import`` straight from the local image store: ``dockerd://`` reads from the Docker daemon,
    ``podman://`` from podman's storage (no registry, no intermediate tarball)."""
    scheme = {"docker": "dockerd", "podman": "podman"}[engine.name]
    return ["enroot", "import", "--output", str(output), f"{scheme}://{tag}"]


def require_enroot(path: str | None = None) -> str:
    """Path of ``enroot`` on ``path`` (default ``$PATH``), or an error that says where to get it."""
    exe = shutil.which("enroot", path=path)
    if exe is None:
        raise ContainerError(
            "enroot was not found on PATH. Install it on the machine that holds the built image "
            "(https://github.com/NVIDIA/enroot, 'Installation'; enroot import needs no root), or copy the image "
            "to a cluster login node that has enroot and run `enroot import dockerd://...` there."
        )
    return exe


# ------------------------------------------------------------------------------------------------ EDF

EDF_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}")


def expand_variables(value: str, env: dict[str, str], where: str = "") -> str:
    """The container engine's expansion of EDF strings: ``${VAR}``, ``${VAR:-default}``, ``$$`` -> ``$``.
    An undefined ``${VAR}`` is an error, as it is for the engine."""

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, has_default, default = m.group(1), m.group(2), m.group(3)
        if name in env and (env[name] or not has_default):
            return env[name]
        if has_default is not None:
            return default
        raise ContainerError(f"{where}: ${{{name}}} is not set; export {name}=... before starting the job "
                             f"(or write ${{{name}:-}} for an empty default).")

    return EDF_VARIABLE.sub(one, value)


def render_edf(path: Path, env: dict[str, str]) -> dict:
    """An EDF (TOML) with every string expanded from ``env``, as the container engine sees it."""
    import tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ContainerError(f"{path} is not valid TOML: {e}") from None

    def walk(node, where):
        if isinstance(node, dict):
            return {k: walk(v, f"{where}.{k}" if where else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(node)]
        return expand_variables(node, env, f"{path} {where}") if isinstance(node, str) else node

    return walk(data, "")


# ---------------------------------------------------------------------------------- inside the image


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
    """``pip check`` lines that matter: all but mosaicml-streaming's (pinned without its declared deps)."""
    return [line for line in output.splitlines() if line.strip() and not line.lower().startswith(STREAMING_UNDECLARED)
            and not line.startswith("No broken requirements")]


# ---------------------------------------------------------------------------------------- GPU session


@dataclass
class ThroughputSummary:
    """Per-device throughput of a run's logged training steps, the first ``warmup`` of them left out
    (they include compilation, allocator growth and data-loader start)."""

    steps: list[int]
    """Steps measured."""
    world_size: int
    tokens_per_s: float
    """Median over ``steps`` of torchtitan's ``throughput(tps)``: tokens per second per device."""
    mfu_percent: float | None
    """Median ``mfu(%)`` (model FLOPs utilisation against the device's peak bf16 FLOPS)."""
    tflops: float | None
    """Median achieved TFLOPS per device."""
    peak_memory_gib: float | None
    """Largest ``memory/max_reserved(GiB)`` of the measured steps."""

    def format(self) -> str:
        steps = f"step {self.steps[0]}" if len(self.steps) == 1 else f"steps {self.steps[0]}-{self.steps[-1]}"
        parts = [
            f"throughput {self.tokens_per_s:,.0f} tok/s per device (median of {steps}), "
            f"{self.tokens_per_s * self.world_size:,.0f} tok/s over {self.world_size} device(s)"
        ]
        if self.mfu_percent is not None:
            parts.append(f"MFU {self.mfu_percent:.1f}%")
        if self.tflops is not None:
            parts.append(f"{self.tflops:.1f} TFLOPS per device")
        if self.peak_memory_gib is not None:
            parts.append(f"peak reserved memory {self.peak_memory_gib:.2f} GiB")
        return "; ".join(parts)


def throughput_summary(run_dir: Path, warmup: int | None = None) -> ThroughputSummary:
    """Summarise ``run_dir/metrics.jsonl`` (rank 0's logged steps; ``run.json`` gives the world size).
    ``warmup`` logged steps are left out; the default is the run summary's (``records.WARMUP_STEPS``), so
    both report the same steps (the summary a mean, this the median, which one slow step cannot move)."""
    from .records import METRICS_FILE, RUN_FILE, WARMUP_STEPS, read_metrics

    warmup = WARMUP_STEPS if warmup is None else warmup

    run_dir = Path(run_dir)
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise ContainerError(f"{metrics} not found: is {run_dir} a titan-recipes run directory that logged steps?")
    rows = [row for row in read_metrics(metrics) if THROUGHPUT_KEY in row]
    if warmup < 0:
        raise ContainerError(f"warmup must be >= 0 logged steps, got {warmup}.")
    if len(rows) <= warmup:
        raise ContainerError(
            f"{metrics} has {len(rows)} logged training step(s) and the first {warmup} are warm-up: nothing left to "
            f"measure. Train more steps (--training.steps) or log more often (--metrics.log_freq 1)."
        )
    measured = rows[warmup:]
    run_file = run_dir / RUN_FILE
    world_size = int(json.loads(run_file.read_text())["world_size"]) if run_file.is_file() else 1

    def median(key: str) -> float | None:
        values = [float(row[key]) for row in measured if key in row]
        return statistics.median(values) if values else None

    memory = [float(row[MEMORY_KEY]) for row in measured if MEMORY_KEY in row]
    return ThroughputSummary(
        steps=[int(row["step"]) for row in measured],
        world_size=world_size,
        tokens_per_s=median(THROUGHPUT_KEY),
        mfu_percent=median(MFU_KEY),
        tflops=median(TFLOPS_KEY),
        peak_memory_gib=max(memory) if memory else None,
    )


def require_cuda() -> int:
    """Number of visible CUDA GPUs; a clear error when there are none."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    build = "a CPU build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    raise ContainerError(
        f"no CUDA GPU visible (torch.cuda.is_available() is False; torch {torch.__version__} is {build}, "
        f"python {sys.executable}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
        "Run this on a GPU node inside the image (srun --gpus-per-node=N --container-image=titan-recipes.sqsh "
        "/opt/venv/bin/python -m titan_recipes.container gpu recipes/debug), or `PYTHON=<python of a CUDA torch> nox -s gpu`; "
        "check the driver with nvidia-smi and that the container has GPU access (docker run --gpus all)."
    )


def gpu_train_command(recipe: Path, nproc: int, overrides: list[str], run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """``run_train.sh`` of ``recipe`` with ``overrides``, and the variables it reads."""
    script = Path(recipe) / "run_train.sh"
    if not script.is_file():
        raise ContainerError(f"{script} not found: RECIPE must be a recipe directory such as recipes/debug.")
    return [str(script), *overrides], {"NGPU": str(nproc), "RUN_DIR": str(run_dir), "PYTHON": sys.executable}


def run_gpu_check(recipe: Path, nproc: int | None, extra: list[str], runs: Path, warmup: int | None) -> int:
    """Train ``recipe`` on this node's GPUs, compare with its fixture for this GPU type, print throughput.
    Returns 0 on a fixture match, 1 on a mismatch or when the fixture has no entry for this key."""
    from . import fixtures as fx

    visible = require_cuda()
    nproc = nproc or visible
    if nproc > visible:
        raise ContainerError(f"--nproc {nproc} but only {visible} CUDA GPU(s) are visible on this node.")
    key = fx.current_key(nproc)
    try:
        entry = fx.get_entry(recipe, key)
    except fx.FixtureError as e:
        entry = None
        print(f"note: {e}", flush=True)
    overrides = (entry["overrides"] if entry else []) + extra
    run_dir = Path(runs) / f"{Path(recipe).resolve().name}-gpu{nproc}-{time.strftime('%Y%m%d-%H%M%S')}"
    command, env = gpu_train_command(recipe, nproc, overrides, run_dir)
    print(f"+ {' '.join(f'{k}={shlex.quote(v)}' for k, v in env.items())} {shlex.join(command)}", flush=True)
    proc = subprocess.run(command, env={**os.environ, **env})
    if proc.returncode != 0:
        raise ContainerError(f"training failed (exit {proc.returncode}); its log is {run_dir}/train.log")
    print(throughput_summary(run_dir, warmup=warmup).format())
    if entry is None:
        print(f"no fixture entry {key}: throughput measured, losses not checked (record one with "
              f"`titan-recipes fixtures regen {recipe} --nproc {nproc} --repeats 3`).")
        return 1
    if extra:
        print(f"note: extra overrides {extra} change the run, so its losses may differ from the fixture's.")
    result = fx.check_run(recipe, run_dir, key=key)
    print(result.table())
    print(f"run directory: {run_dir}")
    return 0 if result.ok else 1


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


def _verify_image(args) -> int:
    lock = read_lock(args.lock)
    problems = expected_mismatches(lock, args.expect)
    problems += verify_installed(lock, nccl_roots=[Path(p) for p in args.nccl_root] or None)
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    problems += [f"pip check: {line}" for line in pip_check_problems(pip.stdout)]
    for line in problems:
        print(f"image check: {line}", file=sys.stderr)
    if not problems:
        nccl = f"; one NCCL ({'=='.join(lock.nccl)})" if args.nccl_root else ""
        print(f"image check: {len(lock.pins)} packages match {args.lock}{nccl}")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m titan_recipes.container", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gpu", help="train a recipe on this node's GPUs, check its fixture, print throughput/MFU")
    p.add_argument("recipe", type=Path, nargs="?", default=Path("recipes/debug"))
    p.add_argument("--nproc", type=int, default=None, help="GPUs to use (default: all visible)")
    p.add_argument("--warmup", type=int, default=None, help="logged steps left out of the throughput (default: as run summaries)")
    p.add_argument("--runs", type=Path, default=REPO_ROOT / "runs", help="where the run directory goes")
    p = sub.add_parser("edf", help="print an EDF with its ${VAR}s expanded from this environment")
    p.add_argument("path", type=Path, nargs="?", default=REPO_ROOT / "env" / "titan-recipes.edf.toml")
    p = sub.add_parser("verify-image", help="inside the image: installed packages and NCCL against the lock")
    p.add_argument("--lock", type=Path, default=REPO_ROOT / GPU_LOCK)
    p.add_argument("--nccl-root", action="append", default=[], help="directory searched for libnccl (repeatable)")
    p.add_argument("--expect", action="append", default=[], metavar="NAME=VERSION",
                   help="a build arg that must equal the lock: package, nccl, python or cuda-image (repeatable)")
    argv = list(sys.argv[1:] if argv is None else argv)
    head, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, unknown = parser.parse_known_args(head)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)} (recipe overrides go after `--`: "
                     "gpu recipes/debug --nproc 8 -- --training.steps 50)")
    if extra and args.command != "gpu":
        parser.error(f"only gpu takes recipe overrides after `--`, got {' '.join(extra)}")
    try:
        if args.command == "gpu":
            return run_gpu_check(args.recipe, args.nproc, extra, args.runs, args.warmup)
        if args.command == "edf":
            print(json.dumps(render_edf(args.path, dict(os.environ)), indent=2))
            return 0
        return _verify_image(args)
    except ContainerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    raise SystemExit(main())
