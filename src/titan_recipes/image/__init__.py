"""The GPU image: the command lines behind ``nox -s image`` and ``enroot``, the EDF and the build's self-check.

One source of truth: ``env/gpu.lock`` pins every Python package of the image, and its header lines
``# image.cuda: <CUDA base image>`` and ``# image.python: <major.minor>`` pin the rest. The functions
here read that lock and build the exact commands, so the nox sessions stay thin and the tests check the
commands without a container engine:

- :mod:`.lock`: :func:`read_lock` parses the lock into a :class:`GpuLock`; :func:`image_tag` names the image.
- :mod:`.build`: :func:`detect_engine` finds docker or podman *with a working engine* (``<engine> info``
  succeeds); :func:`build_command` is ``<engine> build`` with the lock's versions as ``--build-arg`` (the
  Dockerfile's ``ARG`` defaults equal them; ``tests/unit/test_container.py`` checks both) and the git
  revision as an OCI label. :func:`enroot_import_command` turns the built image into a squashfs file for
  pyxis (``srun --container-image=<file>.sqsh``).
- :mod:`.verify`: :func:`verify_installed` runs inside the image at build time (``titan-recipes image
  verify``): installed versions equal the lock, Python is the pinned one, exactly one NCCL library exists
  (the lock's ``nvidia-nccl-cu*`` wheel), and ``pip check`` finds nothing unexpected.
- :mod:`.edf`: :func:`render_edf` expands an environment definition file (``env/titan-recipes.edf.toml``)
  the way the container engine does (``titan-recipes image edf``).

The GPU check (``titan-recipes image gpu``, ``nox -s gpu``) needs torch and lives in
:mod:`titan_recipes.gpu_check`; the commands are in :mod:`titan_recipes.cli.image`.

Standard library only, and the modules import each other relatively: the nox sessions load this package
by file path under another name from the host Python, which has no torch and no installed titan-recipes.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]


class ContainerError(RuntimeError):
    """A container tool is missing or not working, the lock is malformed, or a GPU check cannot run."""


# Defined above these imports: the submodules import ContainerError and REPO_ROOT from this package.
from .build import (  # noqa: E402
    ENGINE_ENV, ENGINES, Engine, build_command, detect_engine, enroot_import_command, git_revision,
    image_exists_command, image_present, require_enroot,
)
from .edf import EDF_VARIABLE, expand_variables, render_edf  # noqa: E402
from .lock import (  # noqa: E402
    GPU_LOCK, IMAGE_NAME, GpuLock, image_tag, project_version, read_lock,
)
from .verify import (  # noqa: E402
    STREAMING_UNDECLARED, expected_mismatches, find_nccl_libraries, pip_check_problems, verify_image,
    verify_installed,
)

__all__ = [
    "EDF_VARIABLE", "ENGINES", "ENGINE_ENV", "GPU_LOCK", "IMAGE_NAME", "REPO_ROOT", "STREAMING_UNDECLARED",
    "ContainerError", "Engine", "GpuLock", "build_command", "detect_engine",
    "enroot_import_command", "expand_variables", "expected_mismatches", "find_nccl_libraries", "git_revision",
    "image_exists_command", "image_present", "image_tag", "pip_check_problems", "project_version", "read_lock",
    "render_edf", "require_enroot", "verify_image", "verify_installed",
]
