"""The container engine's command lines: ``<engine> build`` of the image and ``enroot import`` of it.

:func:`detect_engine` finds docker or podman *with a working engine* (``<engine> info`` succeeds);
:func:`build_command` is ``<engine> build`` with the lock's versions as ``--build-arg`` and the git
revision as an OCI label; :func:`enroot_import_command` turns the built image into a squashfs file for
pyxis (``srun --container-image=<file>.sqsh``). Standard library only (see the package docstring).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT, ContainerError
from .lock import GpuLock

logger = logging.getLogger(__name__)

ENGINES = ("docker", "podman")
ENGINE_ENV = "CONTAINER_ENGINE"
"""Environment variable that picks the engine when both are installed (``docker`` or ``podman``)."""


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
