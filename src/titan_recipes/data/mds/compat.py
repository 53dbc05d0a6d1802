"""Importing mosaicml-streaming without its package ``__init__``, and one message for remote failures."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import types

logger = logging.getLogger(__name__)

TESTED_STREAMING_VERSION = "0.13.0"


def import_streaming() -> types.SimpleNamespace:
    """mosaicml-streaming's MDS pieces, imported without running ``streaming/__init__.py``.

    Why: ``streaming/__init__.py`` imports ``streaming.multimodal``/``vision``/``text``, and
    ``streaming/base/__init__.py`` imports ``streaming.base.dataloader``. ``text`` and ``dataloader``
    need transformers, which both locks pin; ``vision`` needs torchvision, which MDS never needs and
    which the CPU lock cannot have: PyPI's linux torchvision wheels are CUDA builds that fail beside
    torch 2.13 CPU ("operator torchvision::nms does not exist"), and the CPU build is only on the PyTorch
    index (env/README.md). torchvision is the remaining reason for this function. The submodules used here (``stream``,
    ``format.mds``, ``spanner``, ``shuffle``, ``sampling``, ``world``) do not need those imports. So when ``streaming``
    is not imported yet, this registers empty package modules for ``streaming`` and ``streaming.base``
    whose ``__path__`` points at the installed package, and imports the submodules from there.

    Side effect (opt-in: only callers of this function trigger it): in this process
    ``streaming.StreamingDataset`` and the other top-level names are absent. Import them from their
    submodules (``from streaming.base.dataset import StreamingDataset``). A ``streaming`` that is
    already imported is used as is.
    """
    if "streaming" not in sys.modules:
        spec = importlib.util.find_spec("streaming")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "mosaicml-streaming is not installed; the MDS loader and converter need it. Install "
                f"the pinned version without its dependencies: pip install --no-deps "
                f"mosaicml-streaming=={TESTED_STREAMING_VERSION} (see env/cpu.lock)."
            )
        root = spec.submodule_search_locations[0]
        for name, path in (("streaming", root), ("streaming.base", os.path.join(root, "base"))):
            if name in sys.modules:
                continue
            module = types.ModuleType(name, f"{name}, imported by titan_recipes.data.mds without its __init__")
            module.__path__ = [path]
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            module.__spec__.submodule_search_locations = [path]
            module.__getattr__ = _stub_getattr(name)
            sys.modules[name] = module
    from streaming._version import __version__
    from streaming.base.compression import decompress
    from streaming.base.format.mds.writer import MDSWriter
    from streaming.base.sampling import get_sampling
    from streaming.base.shuffle import get_shuffle
    from streaming.base.spanner import Spanner
    from streaming.base.storage.upload import CloudUploader
    from streaming.base.stream import Stream
    from streaming.base.util import bytes_to_int
    from streaming.base.world import World

    if __version__ != TESTED_STREAMING_VERSION:
        logger.warning(
            "mosaicml-streaming %s is installed; titan_recipes.data.mds was tested with %s and uses "
            "its Stream, MDSReader, get_sampling and get_shuffle internals.",
            __version__, TESTED_STREAMING_VERSION,
        )
    return types.SimpleNamespace(
        version=__version__, Stream=Stream, MDSWriter=MDSWriter, Spanner=Spanner, World=World,
        get_sampling=get_sampling, get_shuffle=get_shuffle, bytes_to_int=bytes_to_int,
        decompress=decompress, CloudUploader=CloudUploader,
    )


def remote_error(action: str, remote: str, error: BaseException, setting: str | None = None) -> str:
    """One message for every failed remote operation: what, where (remote + endpoint), why, what to check."""
    endpoint = os.environ.get("S3_ENDPOINT_URL")
    where = f"{setting} = '{remote}'" if setting else remote
    return (
        f"Cannot {action} {where} (S3_ENDPOINT_URL = {endpoint!r}"
        f"{'' if endpoint else ', i.e. the AWS default'}): {type(error).__name__}: {error}. Check that the "
        f"endpoint is reachable, the bucket and prefix exist, and credentials are set (AWS_ACCESS_KEY_ID/"
        f"AWS_SECRET_ACCESS_KEY or an AWS profile)."
    )


def _stub_getattr(package: str):
    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(
            f"{package}.{attr}: titan_recipes.data.mds imported mosaicml-streaming without running "
            f"{package}/__init__.py (it imports torchvision, absent from the CPU lock: env/README.md). Import it from its submodule, "
            f"e.g. `from streaming.base.dataset import StreamingDataset`."
        )

    return __getattr__


