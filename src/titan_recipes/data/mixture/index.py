"""The sample index: a DuckDB database of datasets, files and samples with their metadata properties.

``MixteraIndex(directory)`` opens (or creates) ``<directory>/index.duckdb``. Tables::

    datasets   (id, name UNIQUE, root, parser, registered_at)
    files      (id, dataset_id, path, size, mtime_ns, n_samples, done)   UNIQUE (dataset_id, path)
    samples    (id, dataset_id, file_id, line, byte_offset, n_bytes, <one column per property>)
    properties (name, type, parser)                                      the property columns

``samples.id`` is the sample id the mixtures and chunks use: assigned in registration order, unique
in the index. ``line`` is the 1-based line number in the file; ``byte_offset`` is where the line starts
in a plain ``.jsonl`` file (NULL for ``.gz``/``.zst``, which are read by line); ``n_bytes`` is the
line's length in bytes.

Registration (:meth:`MixteraIndex.register_dataset`) walks the JSONL files in sorted path order and
indexes each in one transaction that ends by marking the file ``done``. A registration that is
interrupted (crash, Ctrl-C, a bad record) leaves the finished files done and nothing of the others,
so registering again continues with the remaining files; registering a finished dataset again adds
nothing. A file that changed (size or mtime) after it was indexed is an error naming it.

One process may open the index for writing; any number may open it ``read_only=True`` (training ranks).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ...config import ConfigError
from ..common import DataError
from .parsers import MetadataParser, resolve_parser
from .query import Query

logger = logging.getLogger(__name__)

INDEX_FILE = "index.duckdb"
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
INSERT_BATCH = 65_536
"""Samples buffered before one Arrow batch is inserted."""

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


@dataclass(frozen=True)
class RegistrationReport:
    """What one :meth:`MixteraIndex.register_dataset` call did."""

    dataset: str
    files_indexed: int
    """Files read by this call (new ones and ones an interrupted registration left unfinished)."""
    files_skipped: int
    """Files already indexed and unchanged."""
    samples_added: int
    samples_total: int
    """Samples of the dataset in the index after this call."""


def find_jsonl_files(path_or_glob: str | os.PathLike[str]) -> list[Path]:
    """The JSONL files (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``) of a file, a directory (searched
    recursively) or a glob pattern, as sorted absolute paths. DataError when there are none."""
    spec = str(path_or_glob)
    p = Path(spec)
    if p.is_file():
        candidates = [p]
    elif p.is_dir():
        candidates = [q for q in p.rglob("*") if q.is_file()]
    else:
        candidates = [Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file()]
    files = sorted({q.resolve() for q in candidates if q.name.endswith(JSONL_SUFFIXES)})
    if not files:
        raise DataError(
            f"No JSONL files ({', '.join(JSONL_SUFFIXES)}) found at {spec!r} (a file, directory or glob pattern)."
        )
    return files


def _open_binary(path: Path) -> IO[bytes]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        # pyarrow (pinned) decompresses zstd as a stream; the `zstd` module only does whole buffers.
        return io.BufferedReader(pa.CompressedInputStream(pa.OSFile(str(path)), "zstd"))
    return open(path, "rb")


def iter_lines(path: Path) -> Iterator[tuple[int, int | None, bytes]]:
    """``(line number from 1, byte offset or None for compressed files, line bytes)`` of a JSONL file."""
    plain = not path.name.endswith((".gz", ".zst"))
    offset = 0
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, offset if plain else None, raw
            offset += len(raw)


class MixteraIndex:
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

    def __enter__(self) -> "MixteraIndex":
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
        from ..common import fingerprint

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

    # -- registration ----------------------------------------------------------------------------
    def register_dataset(
        self,
        name: str,
        path_or_glob: str | os.PathLike[str],
        parser: str | MetadataParser = "slimpajama",
        progress: bool = True,
    ) -> RegistrationReport:
        """Index the samples of the JSONL files at ``path_or_glob`` (file, directory or glob) as dataset
        ``name``, reading metadata with ``parser`` (a built-in name or a MetadataParser). Resumable and
        idempotent: files already indexed are skipped, unfinished ones are redone. Files matched now
        that were not matched before are added. Errors: another root or parser than the dataset was
        registered with (ConfigError); a changed file, an unreadable record (DataError, ``file:line``)."""
        if self.read_only:
            raise DataError(
                f"The sample index {self.path} is open read-only; open it with read_only=False to register."
            )
        parser = resolve_parser(parser)
        files = find_jsonl_files(path_or_glob)
        root = str(path_or_glob) if not Path(path_or_glob).exists() else str(Path(path_or_glob).resolve())
        # The dataset row, its property columns and the file rows in one transaction: a conflict
        # (another parser, a changed file) leaves the index as it was.
        self.con.begin()
        try:
            dataset_id = self._dataset_row(name, root, parser)
            self._add_property_columns(parser)
            known, todo, skipped = self._plan_files(name, dataset_id, files)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        stale = set(known) - {str(p) for p in files}
        if stale:
            logger.warning(
                "Dataset %s: %d indexed file(s) are not matched by %s any more and stay in the index, e.g. %s",
                name, len(stale), path_or_glob, sorted(stale)[0],
            )
        if skipped:
            logger.info("Dataset %s: %d of %d file(s) already indexed, skipped.", name, skipped, len(files))

        added = 0
        with tqdm(
            total=sum(size for _, _, size in todo), unit="B", unit_scale=True,
            desc=f"register {name}", disable=not progress or not todo,
        ) as bar:
            for file_id, path, size in todo:
                added += self._index_file(dataset_id, file_id, path, parser)
                bar.update(size)
                bar.set_postfix(samples=added)
        total = self.num_samples(name)
        logger.debug(  # returned as the report; `titan-recipes mixture register` prints it (INFO printed it twice)
            "Dataset %s: indexed %d file(s), %d new sample(s); %d sample(s) in %d file(s) in all.",
            name, len(todo), added, total, len(files),
        )
        return RegistrationReport(name, len(todo), skipped, added, total)

    def _plan_files(
        self, name: str, dataset_id: int, files: list[Path]
    ) -> tuple[dict[str, tuple[int, int, int, bool]], list[tuple[int, Path, int]], int]:
        """Rows of ``files`` for the files of this dataset: the known ones (path -> id, size, mtime_ns,
        done), the ones to index now (id, path, size) and how many are skipped as done."""
        todo: list[tuple[int, Path, int]] = []
        skipped = 0
        known = {
            row[0]: row[1:]
            for row in self.con.execute(
                "SELECT path, id, size, mtime_ns, done FROM files WHERE dataset_id = ?", [dataset_id]
            ).fetchall()
        }
        for path in files:
            st = path.stat()
            if str(path) in known:
                file_id, size, mtime_ns, done = known[str(path)]
                if done and (size, mtime_ns) != (st.st_size, st.st_mtime_ns):
                    raise DataError(
                        f"{path} changed since it was indexed in dataset {name!r} (size {size} -> {st.st_size}, "
                        f"mtime_ns {mtime_ns} -> {st.st_mtime_ns}); its sample ids and offsets are stale. Restore "
                        f"the file, or call remove_dataset({name!r}) and register it again."
                    )
                if done:
                    skipped += 1
                    continue
                self.con.execute(
                    "UPDATE files SET size = ?, mtime_ns = ? WHERE id = ?", [st.st_size, st.st_mtime_ns, file_id]
                )
            else:
                file_id = self._next_id("files")
                self.con.execute(
                    "INSERT INTO files (id, dataset_id, path, size, mtime_ns) VALUES (?, ?, ?, ?, ?)",
                    [file_id, dataset_id, str(path), st.st_size, st.st_mtime_ns],
                )
            todo.append((file_id, path, st.st_size))
        return known, todo, skipped

    def remove_dataset(self, name: str) -> None:
        """Delete a dataset with its files and samples (its property columns stay)."""
        row = self.con.execute("SELECT id FROM datasets WHERE name = ?", [name]).fetchone()
        if row is None:
            registered = [d["name"] for d in self.datasets()]
            raise ConfigError(f"No dataset {name!r} in {self.path}; registered: {registered}.")
        self.con.begin()
        try:
            for table, col in (("samples", "dataset_id"), ("files", "dataset_id"), ("datasets", "id")):
                self.con.execute(f"DELETE FROM {table} WHERE {col} = ?", [row[0]])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise

    def _next_id(self, table: str) -> int:
        return self.con.execute(f"SELECT coalesce(max(id) + 1, 0) FROM {table}").fetchone()[0]

    def _dataset_row(self, name: str, root: str, parser: MetadataParser) -> int:
        row = self.con.execute("SELECT id, root, parser FROM datasets WHERE name = ?", [name]).fetchone()
        if row is None:
            dataset_id = self._next_id("datasets")
            self.con.execute(
                "INSERT INTO datasets (id, name, root, parser) VALUES (?, ?, ?, ?)",
                [dataset_id, name, root, parser.name],
            )
            return dataset_id
        dataset_id, old_root, old_parser = row
        if (old_root, old_parser) != (root, parser.name):
            raise ConfigError(
                f"Dataset {name!r} is registered from {old_root!r} with parser {old_parser!r}; got {root!r} with "
                f"parser {parser.name!r}. Register under another name, or remove_dataset({name!r}) first."
            )
        return dataset_id

    def _add_property_columns(self, parser: MetadataParser) -> None:
        known = self.con.execute("SELECT name, type, parser FROM properties").fetchall()
        types = {n: (t, p) for n, t, p in known}
        for prop, typ in parser.properties.items():
            typ = typ.upper()
            if prop in types:
                if types[prop][0] != typ:
                    raise ConfigError(
                        f"Metadata parser {parser.name!r} declares property {prop!r} as {typ}, but the index "
                        f"has it as {types[prop][0]} (from parser {types[prop][1]!r})."
                    )
                continue
            self.con.execute(f'ALTER TABLE samples ADD COLUMN "{prop}" {typ}')
            self.con.execute("INSERT INTO properties VALUES (?, ?, ?)", [prop, typ, parser.name])

    def _index_file(self, dataset_id: int, file_id: int, path: Path, parser: MetadataParser) -> int:
        """Index one file in one transaction; returns its number of samples."""
        props = list(parser.properties)
        columns = ["id", "dataset_id", "file_id", "line", "byte_offset", "n_bytes", *props]
        col_sql = ", ".join(f'"{c}"' for c in columns)
        self.con.begin()
        try:
            self.con.execute("DELETE FROM samples WHERE file_id = ?", [file_id])
            next_id = self._next_id("samples")
            buf: dict[str, list[Any]] = {c: [] for c in ("line", "byte_offset", "n_bytes", *props)}
            n = 0

            def flush() -> None:
                nonlocal next_id
                k = len(buf["line"])
                if not k:
                    return
                table = pa.table(
                    {
                        "id": pa.array(np.arange(next_id, next_id + k, dtype=np.int64)),
                        "dataset_id": pa.array(np.full(k, dataset_id, dtype=np.int32)),
                        "file_id": pa.array(np.full(k, file_id, dtype=np.int32)),
                        "line": pa.array(buf["line"], pa.int64()),
                        "byte_offset": pa.array(buf["byte_offset"], pa.int64()),
                        "n_bytes": pa.array(buf["n_bytes"], pa.int64()),
                        **{p: pa.array(buf[p]) for p in props},
                    }
                )
                self.con.register("_mixture_batch", table)
                try:
                    self.con.execute(f"INSERT INTO samples ({col_sql}) SELECT {col_sql} FROM _mixture_batch")
                except duckdb.Error as e:
                    raise DataError(
                        f"{path}: metadata parser {parser.name!r} returned values that do not fit the property "
                        f"columns {parser.properties}: {e}"
                    ) from None
                finally:
                    self.con.unregister("_mixture_batch")
                next_id += k
                for v in buf.values():
                    v.clear()

            for lineno, offset, raw in iter_lines(path):
                if not raw.strip():
                    continue
                values = self._parse_line(path, lineno, raw, parser)
                buf["line"].append(lineno)
                buf["byte_offset"].append(offset)
                buf["n_bytes"].append(len(raw))
                for p in props:
                    buf[p].append(values.get(p))
                n += 1
                if len(buf["line"]) >= INSERT_BATCH:
                    flush()
            flush()
            self.con.execute("UPDATE files SET n_samples = ?, done = TRUE WHERE id = ?", [n, file_id])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        return n

    @staticmethod
    def _parse_line(path: Path, lineno: int, raw: bytes, parser: MetadataParser) -> dict[str, Any]:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}:{lineno}: not a JSON line ({type(e).__name__}: {e})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
        if not isinstance(record.get(parser.text_field), str):
            raise DataError(f"{path}:{lineno}: no string '{parser.text_field}' field (parser {parser.name!r})")
        try:
            values = parser.parse(record)
        except (KeyError, TypeError, ValueError) as e:
            detail = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise DataError(f"{path}:{lineno}: metadata parser {parser.name!r}: {detail}") from None
        extra = set(values) - set(parser.properties)
        if extra:
            raise DataError(
                f"{path}:{lineno}: metadata parser {parser.name!r} returned undeclared properties {sorted(extra)}; "
                f"declare them in its `properties` ({sorted(parser.properties)})."
            )
        return values


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

    def __init__(self, index: "MixteraIndex", cache_bytes: int = DECOMPRESSED_CACHE_BYTES):
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
        with _open_binary(path) as f:
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
