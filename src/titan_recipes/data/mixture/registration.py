"""Registration: how JSONL files become samples of a :class:`~.index.SampleIndex`.

Registration (:meth:`SampleIndex.register_dataset`) walks the JSONL files in sorted path order and
indexes each in one transaction that ends by marking the file ``done``. A registration that is
interrupted (crash, Ctrl-C, a bad record) leaves the finished files done and nothing of the others,
so registering again continues with the remaining files; registering a finished dataset again adds
nothing. A file that changed (size or mtime) after it was indexed is an error naming it.

:class:`IndexRegistration` holds the writing methods of :class:`~.index.SampleIndex` (which inherits
them): ``register_dataset`` and ``remove_dataset``, with the metadata parser glue (one row of property
values per JSON line, checked against the parser's declared properties). :func:`find_jsonl_files`
finds the files; :func:`open_binary` and :func:`iter_lines` read them (and :class:`~.index.TextReader`).
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

from ...errors import ConfigError, DataError
from .parsers import MetadataParser, resolve_parser

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
INSERT_BATCH = 65_536
"""Samples buffered before one Arrow batch is inserted."""


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


def open_binary(path: Path) -> IO[bytes]:
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
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            yield lineno, offset if plain else None, raw
            offset += len(raw)


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
