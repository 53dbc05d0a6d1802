"""The reading interface of a sample index (:class:`IndexReader`) and the one function that opens it.

A training rank reads its index in one of two ways, with the same results, batches and checkpoints:

- embedded mode: a :class:`~.index.SampleIndex` opened read-only in the process;
- served mode: a :class:`~.client.RemoteIndex` of a ``titan-recipes mixture serve`` process.

:class:`~.chunks.ChunkPlanner` and :class:`~.loader.MixtureLoader` type against :class:`IndexReader`,
which both satisfy; :func:`open_index` picks one from the ``[mixture]`` settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ...errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from .query import Query


@runtime_checkable
class IndexReader(Protocol):
    """What the planner and the loader call on a sample index (read-only).

    ``isinstance(x, IndexReader)`` checks that the members exist; on Python 3.11 that reads the
    ``properties`` property (one query, or one request to a server)."""

    path: Any
    """Where the index is, for messages (a file path, or ``mixture://host:port/dir`` when served)."""

    @property
    def properties(self) -> dict[str, str]:
        """Property columns of the samples: name -> DuckDB type."""
        ...

    def files_fingerprint(self) -> str:
        """A hash of the registered files (part of the loader's data fingerprint)."""
        ...

    def domain_counts(self, prop: str, query: Query | None = None) -> dict[Any, int]:
        """Samples per value of ``prop`` among those matching ``query``, sorted by value."""
        ...

    def sample_ids_by_value(self, prop: str, values: list[Any], query: Query | None = None) -> dict[Any, np.ndarray]:
        """For each value of ``prop`` in ``values``: ids (ascending, int64) of the matching samples with it."""
        ...

    def read_texts(self, ids: list[int] | np.ndarray) -> list[str]:
        """The texts of sample ``ids`` in the order given."""
        ...

    def close(self) -> None:
        ...


def open_index(index_dir: str, server: str = "", **client_options: Any) -> IndexReader:
    """The index a training rank reads (``mixture.index_dir``, ``mixture.server``): ``index_dir`` opened
    read-only in this process (embedded mode) when ``server`` is empty, else a
    :class:`~.client.RemoteIndex` of the server at ``server`` (``"host:port"``; ConfigError for a bad
    address, DataError when it cannot be reached; ``index_dir`` is then only used in messages).
    ``client_options`` go to RemoteIndex. ConfigError when embedded mode has no index to open."""
    if server:
        from .client import RemoteIndex
        from .protocol import parse_address

        host, port = parse_address(server)
        return RemoteIndex(host, port, index_dir=index_dir or None, **client_options)
    from .index import INDEX_FILE, SampleIndex

    if not index_dir:
        raise ConfigError("training.dataset = 'mixture' needs mixture.index_dir: the directory of a sample "
                          f"index ({INDEX_FILE}) written by `titan-recipes mixture register` (or "
                          f"SampleIndex.register_dataset), or mixture.server = 'host:port' of a mixture server.")
    if not (Path(index_dir) / INDEX_FILE).is_file():
        raise ConfigError(f"mixture.index_dir = '{index_dir}' holds no {INDEX_FILE}; register a dataset "
                          f"there first (`titan-recipes mixture register`), or fix the path.")
    return SampleIndex(index_dir, read_only=True)
