"""The sample index: a DuckDB database of datasets, files and samples with their metadata properties.

``SampleIndex(directory)`` opens (or creates) ``<directory>/index.duckdb``. Tables::

    datasets   (id, name UNIQUE, root, parser, registered_at)
    files      (id, dataset_id, path, size, mtime_ns, n_samples, done)   UNIQUE (dataset_id, path)
    samples    (id, dataset_id, file_id, line, byte_offset, n_bytes, <one column per property>)
    properties (name, type, parser)                                      the property columns

``samples.id`` is the sample id the mixtures and chunks use: assigned in registration order, unique
in the index. ``line`` is the 1-based line number in the file; ``byte_offset`` is where the line starts
in a plain ``.jsonl`` file (NULL for ``.gz``/``.zst``, which are read by line); ``n_bytes`` is the
line's length in bytes.

Registration (:meth:`~.registration.IndexRegistration.register_dataset`) is in :mod:`.registration`;
this module opens the index and answers queries, and :class:`TextReader` reads sample texts back.

One process may open the index for writing; any number may open it ``read_only=True`` (training ranks).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from ...errors import ConfigError, DataError
from .parsers import MetadataParser
from .query import Query
from .registration import IndexRegistration, iter_lines, open_binary

logger = logging.getLogger(__name__)

INDEX_FILE = "index.duckdb"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, root VARCHAR NOT NULL,
    parser VARCHAR NOT NULL, registered_at TIMESTAMP NOT NULL DEFAULT current_timestamp);
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY, dataset_id INTEGER NOT NULL, path VARCHAR NOT NULL, size BIGINT NOT NULL,
    mtime_ns BIGINT NOT NULL, n_samples BIGINT, done BOOLEAN NOT NULL DEFAULT FALSE,
    UNIQUE (dataset_id, path));
CREATE TABLE IF NOT EXISTS samples (
    id BIGINT NOT NULL, dataset_id INTEGER NOT NULL, file_id INTEGER NOT NULL, line BIGINT NOT NULL,
    byte_offset BIGINT, n_bytes BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS properties (name VARCHAR PRIMARY KEY, type VARCHAR NOT NULL, parser VARCHAR NOT NULL);
"""


class SampleIndex(IndexRegistration):
    """A DuckDB sample index in ``directory`` (created if missing, unless ``read_only``)."""

    def __init__(self, directory: str | os.PathLike[str], read_only: bool = False):
        self.directory = Path(directory)
        self.path = self.directory / INDEX_FILE
        if read_only and not self.path.is_file():
            raise DataError(
                f"No sample index at {self.path}. Register the data first (titan-recipes mixture register "
                f"{self.directory} DATA_PATH --name NAME), or point mixture.index_dir at the directory that "
                f"holds {INDEX_FILE}."
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as e:
            raise DataError(
                f"Cannot open the sample index {self.path} ({'read-only' if read_only else 'for writing'}): {e}. "
                f"Only one process may hold it open for writing; readers open it with read_only=True."
            ) from None
        self.read_only = read_only
        self._file_key = _file_key(self.path)
        """Which file this connection has open, and its size and mtime: DuckDB keeps reading a deleted or
        replaced file through its open descriptor, so only :meth:`check_file` notices (and a relaunch
        would fail to open it). A read-only index does not change while it is open (DuckDB refuses a
        writer meanwhile), so any change is someone else's."""
        if not read_only:
            self.con.execute(_SCHEMA)

    def check_file(self) -> None:
        """DataError when ``index.duckdb`` was deleted, replaced or overwritten since this process opened
        it (read-only connections; a writer changes its own file).

        This process could go on reading its open copy, but the run's next launch (a resume after a
        preemption or crash) would find no index, or another one, so it stops now, naming the file."""
        try:
            key = _file_key(self.path)
        except FileNotFoundError:
            raise DataError(
                f"The sample index {self.path} was deleted while this run was reading it. Restore the file "
                f"(or register the same files again, in the same order, into {self.directory}: titan-recipes "
                f"mixture register {self.directory} DATA_PATH --name NAME), then launch again; the run "
                f"resumes from its last checkpoint."
            ) from None
        if self.read_only and key != self._file_key:
            raise DataError(
                f"The sample index {self.path} was replaced or modified while this run was reading it (another "
                f"registration?). Restore the index this run started with, then launch again to resume; a "
                f"different index changes the data fingerprint and cannot resume this run."
            )

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "SampleIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the index holds --------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, str]:
        """Property columns of ``samples``: name -> DuckDB type."""
        return dict(self.con.execute("SELECT name, type FROM properties ORDER BY name").fetchall())

    def datasets(self) -> list[dict[str, Any]]:
        """Registered datasets with their file and sample counts."""
        rows = self.con.execute(
            """SELECT d.name, d.root, d.parser, d.registered_at,
                      count(f.id), count(f.id) FILTER (WHERE f.done), coalesce(sum(f.n_samples), 0)
               FROM datasets d LEFT JOIN files f ON f.dataset_id = d.id GROUP BY ALL ORDER BY d.name"""
        ).fetchall()
        keys = ("name", "root", "parser", "registered_at", "files", "files_done", "samples")
        return [dict(zip(keys, r)) for r in rows]

    def num_samples(self, dataset: str | None = None) -> int:
        if dataset is None:
            return self.con.execute("SELECT count(*) FROM samples").fetchone()[0]
        return self.con.execute(
            "SELECT count(*) FROM samples s JOIN datasets d ON s.dataset_id = d.id WHERE d.name = ?", [dataset]
        ).fetchone()[0]

    # -- queries ---------------------------------------------------------------------------------
    def _where(self, query: Query | None) -> tuple[str, list[Any]]:
        return (query or Query()).compile(self.properties)

    def _run(self, sql: str, params: list[Any], query: Query | None) -> duckdb.DuckDBPyConnection:
        self.check_file()
        try:
            return self.con.execute(sql, params)
        except duckdb.Error as e:  # e.g. a value that does not convert to the column's type
            raise ConfigError(f"Query {query} failed on the index {self.path}: {type(e).__name__}: {e}") from None

    def query(self, query: Query | None = None) -> np.ndarray:
        """Ids of the samples matching ``query`` (all samples for None), ascending, int64."""
        where, params = self._where(query)
        rows = self._run(f"SELECT id FROM samples WHERE {where} ORDER BY id", params, query).fetchnumpy()
        return np.asarray(rows["id"], dtype=np.int64)

    def count(self, query: Query | None = None) -> int:
        """Number of samples matching ``query``."""
        where, params = self._where(query)
        return self._run(f"SELECT count(*) FROM samples WHERE {where}", params, query).fetchone()[0]

    def domain_counts(self, prop: str, query: Query | None = None) -> dict[Any, int]:
        """Samples per value of ``prop`` among those matching ``query``, sorted by value. Samples that
        lack the property (NULL) are not counted."""
        known = self.properties
        if prop not in known:
            raise ConfigError(f"Unknown property {prop!r}; the index knows {sorted(known)}.")
        where, params = self._where(query)
        rows = self._run(
            f'SELECT "{prop}", count(*) FROM samples WHERE ({where}) AND "{prop}" IS NOT NULL '
            f'GROUP BY 1 ORDER BY 1',
            params,
            query,
        ).fetchall()
        return dict(rows)

    def read_texts(self, ids: "list[int] | np.ndarray") -> list[str]:
        """The texts of sample ``ids`` in the order given: see :class:`TextReader` (one per index,
        created on first use, so decompressed files stay cached between calls)."""
        self.check_file()
        if getattr(self, "_reader", None) is None:
            self._reader = TextReader(self)
        return self._reader.read(ids)

    def files_fingerprint(self) -> str:
        """A hash of the registered datasets' files (dataset, path relative to its root, size, samples)
        and the sample count: changes when data is added, removed or re-indexed."""
        from ..state import fingerprint

        rows = self.con.execute(
            "SELECT d.name, d.root, f.path, f.size, f.n_samples, f.done FROM files f JOIN datasets d "
            "ON f.dataset_id = d.id ORDER BY d.name, f.path"
        ).fetchall()
        files = [[name, os.path.relpath(path, root) if os.path.isabs(root) else Path(path).name, size, n, done]
                 for name, root, path, size, n, done in rows]
        return fingerprint(files=files, samples=self.num_samples())

    def sample_ids_by_value(self, prop: str, values: list[Any], query: Query | None = None) -> dict[Any, np.ndarray]:
        """For each value of ``prop`` in ``values``: ids (ascending) of the matching samples with it."""
        known = self.properties
        if prop not in known:
            raise ConfigError(f"Unknown property {prop!r}; the index knows {sorted(known)}.")
        where, params = self._where(query)
        out = {}
        for value in values:
            rows = self._run(
                f'SELECT id FROM samples WHERE ({where}) AND "{prop}" = ? ORDER BY id', [*params, value], query
            ).fetchnumpy()
            out[value] = np.asarray(rows["id"], dtype=np.int64)
        return out


def _file_key(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# -- reading sample text back -------------------------------------------------------------------------
DECOMPRESSED_CACHE_BYTES = 512 * 1024 * 1024
"""Decompressed ``.gz``/``.zst`` files kept in memory by :class:`TextReader` (least recently used first out)."""


class TextReader:
    """Reads the text of sample ids back from the files an index points at.

    Ids are grouped by file. A plain ``.jsonl`` line is read with one seek to its ``byte_offset`` and a
    read of ``n_bytes``. A ``.gz``/``.zst`` file is decompressed once, streaming, and kept in memory
    with the start of every line (up to ``cache_bytes`` in all, least recently used out first), so
    random access by line number afterwards costs nothing; a file larger than the whole cache is
    streamed once per call, picking the wanted lines on the way. Every file is checked against the
    size it was indexed with (DataError if it changed). The text is the dataset parser's ``text_field``
    (``text`` for a parser the process does not know by name)."""

    def __init__(self, index: "SampleIndex", cache_bytes: int = DECOMPRESSED_CACHE_BYTES):
        self.index = index
        self.cache_bytes = cache_bytes
        self._files: dict[int, tuple[Path, int, int, str, str]] = {}  # path, size, mtime_ns, dataset, text field
        self._cache: dict[int, tuple[bytes, np.ndarray]] = {}  # insertion order = recency

    def _file(self, file_id: int) -> tuple[Path, str]:
        if file_id not in self._files:
            path, size, mtime_ns, parser, name = self.index.con.execute(
                "SELECT f.path, f.size, f.mtime_ns, d.parser, d.name FROM files f JOIN datasets d "
                "ON f.dataset_id = d.id WHERE f.id = ?",
                [file_id],
            ).fetchone()
            cls = _parser_class(parser)
            self._files[file_id] = (Path(path), size, mtime_ns, name, cls.text_field if cls else "text")
        path, size, mtime_ns, name, field = self._files[file_id]
        fix = (f"Restore the registered version, or register the data again into a fresh index directory "
               f"(titan-recipes mixture register NEW_INDEX_DIR DATA_PATH --name {name}) and set mixture.index_dir "
               f"to it (new sample ids: a run started on this index cannot resume on the new one).")
        try:
            st = path.stat()
        except FileNotFoundError:
            raise DataError(f"Indexed file {path} (dataset {name!r} of {self.index.path}) is missing. {fix}") from None
        # Size and mtime as recorded at registration (what make and rsync compare): the index holds byte
        # offsets, line numbers and properties of that version, so an edited file would yield other texts.
        if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
            raise DataError(
                f"Indexed file {path} (dataset {name!r} of {self.index.path}) changed after registration "
                f"(size {size} -> {st.st_size} bytes, mtime_ns {mtime_ns} -> {st.st_mtime_ns}); its samples' offsets, "
                f"texts and properties in the index are stale. {fix}"
            )
        return path, field

    def _decompressed(self, file_id: int, path: Path) -> tuple[bytes, np.ndarray] | None:
        if file_id in self._cache:
            self._cache[file_id] = self._cache.pop(file_id)  # most recent
            return self._cache[file_id]
        with open_binary(path) as f:
            data = f.read(self.cache_bytes + 1)
            if len(data) > self.cache_bytes:
                return None
        nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        starts = np.concatenate([[0], nl + 1]).astype(np.int64)
        while self._cache and sum(len(d) for d, _ in self._cache.values()) + len(data) > self.cache_bytes:
            self._cache.pop(next(iter(self._cache)))
        self._cache[file_id] = (data, starts)
        return data, starts

    def _lines(self, file_id: int, rows: list[tuple[int, int | None, int]]) -> dict[int, bytes]:
        """``{line number: raw line}`` for ``rows`` of ``(line, byte_offset, n_bytes)`` in one file."""
        path, _ = self._file(file_id)
        out: dict[int, bytes] = {}
        if rows[0][1] is not None:  # plain .jsonl: seek
            with open(path, "rb") as f:
                for line, offset, n in sorted(rows, key=lambda r: r[1]):
                    f.seek(offset)
                    out[line] = f.read(n)
            return out
        cached = self._decompressed(file_id, path)
        if cached is not None:
            data, starts = cached
            for line, _, n in rows:
                start = int(starts[line - 1])
                out[line] = data[start : start + n]
            return out
        wanted = {line for line, _, _ in rows}
        for line, _, raw in iter_lines(path):
            if line in wanted:
                out[line] = raw
                if len(out) == len(wanted):
                    break
        return out

    def read(self, ids: "list[int] | np.ndarray") -> list[str]:
        """The texts of sample ``ids``, in the order given (repeats allowed). DataError for an id that
        is not in the index or a line that no longer parses."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        unique = sorted(set(ids))
        rows = self.index.con.execute(
            "SELECT id, file_id, line, byte_offset, n_bytes FROM samples WHERE id IN (SELECT unnest(?::BIGINT[])) "
            "ORDER BY file_id, line",
            [unique],
        ).fetchall()
        if len(rows) != len(unique):
            missing = sorted(set(unique) - {r[0] for r in rows})
            raise DataError(f"Sample id(s) {missing[:10]} are not in the index {self.index.path}.")
        by_file: dict[int, list[tuple[int, int, int | None, int]]] = {}
        for sid, file_id, line, offset, n in rows:
            by_file.setdefault(file_id, []).append((sid, line, offset, n))
        texts: dict[int, str] = {}
        for file_id, items in by_file.items():
            raw = self._lines(file_id, [(line, offset, n) for _, line, offset, n in items])
            path, field = self._file(file_id)
            for sid, line, _, _ in items:
                try:
                    text = json.loads(raw[line])[field]
                except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
                    raise DataError(
                        f"{path}:{line}: cannot read the '{field}' field of indexed sample {sid} "
                        f"({type(e).__name__}: {e}); the file changed since it was indexed?"
                    ) from None
                if not isinstance(text, str):
                    raise DataError(f"{path}:{line}: '{field}' of indexed sample {sid} is not a string.")
                texts[sid] = text
        return [texts[i] for i in ids]


def _parser_class(name: str) -> type[MetadataParser] | None:
    from .parsers import PARSERS

    return PARSERS.get(name)
