"""The forkserver preload of ``prepare mds``: :mod:`.preload` plus streaming's MDS writer (see there)."""

from ..data.mds.compat import import_streaming
from . import preload  # noqa: F401

import_streaming()

import streaming.base.format.mds.writer  # noqa: E402,F401
