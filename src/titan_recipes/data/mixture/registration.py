"""Registration: how JSONL files become samples of a :class:`~.index.SampleIndex`.

Registration (:meth:`SampleIndex.register_dataset`) walks the JSONL files in sorted path order and
indexes each in one transaction that ends by marking the file ``done``. A registration that is
interrupted (crash, Ctrl-C, a bad record) leaves the finished files done and nothing of the others,
so registering again continues with the remaining files; registering a finished dataset again adds
nothing. A file that changed (size or mtime) after it was indexed is an error naming it.

:class:`IndexRegistration` holds the writing methods of :class:`~.index.SampleIndex` (which inherits
them): ``register_dataset``, ``import_parsed`` (the rows of files parsed beforehand, possibly in
parallel, by :func:`~.bulk.parse_file`) and ``remove_dataset``. The rows themselves (one per
non-blank JSON line, property values checked against the parser's declared properties) come from
:func:`~.bulk.iter_rows`; a worker thread parses the next files while this one inserts.
:func:`find_jsonl_files` finds the files; :func:`~.bulk.open_binary` and :func:`~.bulk.iter_lines`
(re-exported here) read them, as :class:`~.index.TextReader` does.
"""

from __future__ import annotations

import glob
import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
from tqdm import tqdm

from ...errors import ConfigError, DataError
from .bulk import iter_lines, iter_rows, open_binary
from .parsers import MetadataParser, resolve_parser

if TYPE_CHECKING:
    from .bulk import ParsedFile

__all__ = ["IndexRegistration", "RegistrationReport", "find_jsonl_files", "iter_lines", "open_binary"]

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
INSERT_BATCH = 65_536
"""Samples buffered before one Arrow batch is inserted."""
PARSE_AHEAD = 2
"""Files parsed ahead of the one being inserted (their rows, not their texts, are held in memory)."""


@dataclass(frozen=True)
class RegistrationReport:
    """What one :meth:`SampleIndex.register_dataset` call did."""

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


def dataset_root(path_or_glob: str | os.PathLike[str]) -> str:
    """The ``root`` a dataset records: the resolved path when it exists, else the glob as given."""
    return str(path_or_glob) if not Path(path_or_glob).exists() else str(Path(path_or_glob).resolve())


class IndexRegistration:
    """The writing half of :class:`~.index.SampleIndex` (its ``con``, ``path``, ``read_only``,
    ``num_samples`` and ``datasets``): registering and removing datasets."""

    con: duckdb.DuckDBPyConnection
    path: Path
    read_only: bool

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
        dataset_id, todo, skipped = self._begin_dataset(name, dataset_root(path_or_glob), parser, files, path_or_glob)
        if skipped:
            logger.info("Dataset %s: %d of %d file(s) already indexed, skipped.", name, skipped, len(files))

        added = 0
        # A worker thread parses the next files while this one inserts (DuckDB and numpy release the
        # GIL); files are still committed one by one in path order, so a failure in file k leaves
        # files before k done and nothing of k or later.
        pool = ThreadPoolExecutor(1, thread_name_prefix="mixture-parse")
        parse = lambda path: list(iter_rows(path, parser, batch_rows=INSERT_BATCH))  # noqa: E731
        ahead = [pool.submit(parse, t[1]) for t in todo[:PARSE_AHEAD]]
        try:
            with tqdm(
                total=sum(t[2] for t in todo), unit="B", unit_scale=True,
                desc=f"register {name}", disable=not progress or not todo,
            ) as bar:
                next_id = self._next_id("samples")
                for i, (file_id, path, size, known) in enumerate(todo):
                    if i + PARSE_AHEAD < len(todo):
                        ahead.append(pool.submit(parse, todo[i + PARSE_AHEAD][1]))
                    tables = ahead.pop(0)
                    n = self._index_file(dataset_id, file_id, path, parser, next_id, known, tables)
                    next_id += n
                    added += n
                    bar.update(size)
                    bar.set_postfix(samples=added)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        total = self.num_samples(name)
        logger.debug(  # returned as the report; `titan-recipes mixture register` prints it (INFO printed it twice)
            "Dataset %s: indexed %d file(s), %d new sample(s); %d sample(s) in %d file(s) in all.",
            name, len(todo), added, total, len(files),
        )
        return RegistrationReport(name, len(todo), skipped, added, total)

    def _begin_dataset(
        self, name: str, root: str, parser: MetadataParser, files: list[Path], source: object
    ) -> tuple[int, list[tuple[int, Path, int, bool]], int]:
        """The dataset row, its property columns and the file rows, in one transaction (a conflict:
        another parser, a changed file, leaves the index as it was): dataset id, files to index now
        (id, path, size, known before), number skipped as done."""
        if self.read_only:
            raise DataError(
                f"The sample index {self.path} is open read-only; open it with read_only=False to register."
            )
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
                name, len(stale), source, sorted(stale)[0],
            )
        return dataset_id, todo, skipped

    def import_parsed(
        self, name: str, root: str | os.PathLike[str], parser: str | MetadataParser, parsed: list[ParsedFile]
    ) -> RegistrationReport:
        """Import :func:`~.bulk.parse_file` results as dataset ``name`` registered from ``root`` (what
        ``register_dataset`` was given): the same rows and ids as ``register_dataset(name, root, parser)``
        of those files. Files are taken in sorted path order, each in one transaction that marks it
        done; done files are skipped, so a rerun after a crash continues. DataError when a JSONL file
        changed after it was parsed; ConfigError when a result came from another parser."""
        parser = resolve_parser(parser)
        by_path = {}
        for item in parsed:
            if item.parser != parser.name:
                raise ConfigError(
                    f"{item.out_path} was parsed with parser {item.parser!r}, not {parser.name!r}; parse "
                    f"{item.path} again with {parser.name!r} (parse_file) or import with {item.parser!r}."
                )
            by_path[Path(item.path)] = item
        files = sorted(by_path)
        for path in files:
            st, item = path.stat(), by_path[path]
            if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
                raise DataError(
                    f"{path} changed after it was parsed into {item.out_path} (size {item.size} -> {st.st_size}, "
                    f"mtime_ns {item.mtime_ns} -> {st.st_mtime_ns}); parse it again (parse_file) before importing."
                )
        dataset_id, todo, skipped = self._begin_dataset(
            name, dataset_root(root), parser, files, f"the {len(files)} parsed file(s)")
        props = [f'"{p}"' for p in parser.properties]
        col_sql = ", ".join(["id", "dataset_id", "file_id", "line", "byte_offset", "n_bytes", *props])
        added, first = 0, self._next_id("samples")
        for file_id, path, _, known in todo:
            self.con.begin()
            try:
                if known:
                    self.con.execute("DELETE FROM samples WHERE file_id = ?", [file_id])
                try:
                    n = self.con.execute(
                        f"INSERT INTO samples ({col_sql}) SELECT ? + row_number() OVER (ORDER BY line) - 1, ?, ?, "
                        f"line, byte_offset, n_bytes, {', '.join(props)} FROM read_parquet(?)",
                        [first, dataset_id, file_id, by_path[path].out_path],
                    ).fetchone()[0]
                except duckdb.Error as e:
                    raise DataError(
                        f"Cannot import {by_path[path].out_path} (the rows of {path}): {str(e).splitlines()[0]}. Parse the file again "
                        f"(parse_file) and import again; files imported so far stay done."
                    ) from None
                self.con.execute("UPDATE files SET n_samples = ?, done = TRUE WHERE id = ?", [n, file_id])
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise
            added, first = added + n, first + n
        return RegistrationReport(name, len(todo), skipped, added, self.num_samples(name))

    def _plan_files(
        self, name: str, dataset_id: int, files: list[Path]
    ) -> tuple[dict[str, tuple[int, int, int, bool]], list[tuple[int, Path, int, bool]], int]:
        """Rows of ``files`` for the files of this dataset: the known ones (path -> id, size, mtime_ns,
        done), the ones to index now (id, path, size, known before) and how many are skipped as done."""
        todo: list[tuple[int, Path, int, bool]] = []
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
            todo.append((file_id, path, st.st_size, str(path) in known))
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

    def _index_file(
        self, dataset_id: int, file_id: int, path: Path, parser: MetadataParser, first_id: int, known: bool,
        rows: Future[list[pa.Table]],
    ) -> int:
        """Index one file in one transaction: its ``rows`` (parsed by :func:`~.bulk.iter_rows`) with ids
        from ``first_id`` (this connection is the only writer, so the caller counts ids on instead of
        scanning ``samples`` per file); returns its number of samples."""
        self.con.begin()
        try:
            if known:  # left by an unfinished registration (its transaction normally took them back)
                self.con.execute("DELETE FROM samples WHERE file_id = ?", [file_id])
            n = 0
            for table in rows.result():
                self._insert_rows(path, parser, dataset_id, file_id, first_id + n, table)
                n += table.num_rows
            self.con.execute("UPDATE files SET n_samples = ?, done = TRUE WHERE id = ?", [n, file_id])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        return n

    def _insert_rows(
        self, path: Path, parser: MetadataParser, dataset_id: int, file_id: int, first_id: int, table: pa.Table
    ) -> None:
        """Insert rows of ``path`` (``line, byte_offset, n_bytes``, properties) with ids from ``first_id``."""
        k = table.num_rows
        columns = ["id", "dataset_id", "file_id", "line", "byte_offset", "n_bytes", *parser.properties]
        col_sql = ", ".join(f'"{c}"' for c in columns)
        table = (table.append_column("id", pa.array(np.arange(first_id, first_id + k, dtype=np.int64)))
                 .append_column("dataset_id", pa.array(np.full(k, dataset_id, dtype=np.int32)))
                 .append_column("file_id", pa.array(np.full(k, file_id, dtype=np.int32))))
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
