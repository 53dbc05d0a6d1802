"""``env/gpu.lock``: its package pins, its ``# image.<key>: <value>`` header, and the image tag it implies.

Standard library only (see the package docstring: nox loads this by file path).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import REPO_ROOT, ContainerError

GPU_LOCK = Path("env") / "gpu.lock"
IMAGE_NAME = "titan-recipes"

NCCL_PACKAGE = re.compile(r"^nvidia-nccl-cu\d+$")
IMAGE_KEY = re.compile(r"^#\s*image\.([a-z][a-z0-9_-]*):\s*(\S+)\s*$")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


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
