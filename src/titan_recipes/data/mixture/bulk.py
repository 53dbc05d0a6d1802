"""Parsing JSONL files into the rows a sample index stores, fast, one file at a time.

Registration spends its time turning JSON lines into ``(line, byte_offset, n_bytes, properties)``
rows. :func:`iter_rows` does that for one file in blocks of lines: numpy finds the lines in the raw
(decompressed) bytes, so line numbers, offsets and lengths come without a Python loop, and for a
:class:`~.parsers.FieldParser` with string properties (the built-ins ``slimpajama`` and ``pile``) DuckDB
parses the JSON of a whole block at once (``json_type`` and ``json_extract_string`` over an Arrow
view of the block, no copy per line). Every line DuckDB does not accept is read again by the
Python checks of the old per-line path (:func:`parse_record`), which decide: a line Python reads is
kept with Python's values, else the error names ``file:line`` exactly as before. Custom parsers run
in Python per line. Both give the rows registration stored before this module existed (the tests
keep the old code to compare).

Known leniency of the DuckDB path: DuckDB's JSON reader also accepts trailing commas (``{"a": 1,}``)
and lower-case ``nan``/``inf`` numbers, which Python's ``json`` rejects; such a line is indexed
instead of failing. Duplicate keys: DuckDB reads the first, Python the last, so a line in which a
key of the text or property paths occurs twice (as ``"key"``) goes to Python; a duplicate spelled
with ``\\u`` escapes is not noticed.

:func:`parse_file` writes one file's rows to Parquet (atomically) for parallel preparation, and
:func:`import_parsed` imports such files into an index with the same ids ``register_dataset`` gives.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator, Literal, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa

from ...errors import ConfigError, DataError
from .parsers import FieldParser, MetadataParser, resolve_parser

if TYPE_CHECKING:
    from .index import SampleIndex
    from .registration import RegistrationReport

BLOCK_BYTES = 32 * 1024 * 1024
"""Decompressed bytes read per block (a block holds whole lines; a longer line makes a longer block)."""

ARROW_TYPES = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(),
               "BOOLEAN": pa.bool_()}
"""Parquet/Arrow type of each property type (``parsers.PROPERTY_TYPES``)."""

_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True
"""The bytes ``bytes.strip()`` removes: a line of only these is blank and skipped, as before."""


class BadRecord(NamedTuple):
    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class ParsedFile:
    """What :func:`parse_file` wrote: the rows of one JSONL file, for :func:`import_parsed`."""

    path: str
    """The JSONL file, absolute (as ``register_dataset`` records it)."""
    out_path: str
    """The Parquet file of its rows: ``line, byte_offset, n_bytes`` and one column per property."""
    parser: str
    rows: int
    size: int
    """Size and mtime of the JSONL file when it was parsed; :func:`import_parsed` refuses a file that changed."""
    mtime_ns: int
    bad_records: list[BadRecord] = field(default_factory=list)
    """Records left out (``on_bad_record="skip"``): ``(path, line, reason)``."""


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


def parse_record(path: Path, lineno: int, raw: bytes, parser: MetadataParser) -> dict[str, Any]:
    """The property values of one JSON line, or a DataError naming ``path:line`` (the per-line checks)."""
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


def _chunks(path: Path, size: int) -> Iterator[bytes]:
    """The decompressed bytes of ``path`` in pieces of about ``size``."""
    if path.name.endswith(".zst"):
        # Arrow buffers, then bytes: twice as fast as reading zstd through io.BufferedReader.
        with pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") as f:
            while (buf := f.read_buffer(size)).size:
                yield buf.to_pybytes()
        return
    with open_binary(path) as f:
        while chunk := f.read(size):
            yield chunk


def _blocks(path: Path, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """``(decompressed offset, bytes)`` of whole-line blocks; only the last may lack a final newline."""
    offset, carry = 0, b""
    for chunk in _chunks(path, block_bytes):
        data = carry + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        yield offset, data[:cut]
        offset += cut
        carry = data[cut:]
    if carry:
        yield offset, carry


def _fast_sql(parser: MetadataParser) -> str | None:
    """The DuckDB query reading a block of lines (table ``_lines``, column ``j``) for a parser whose
    properties are string fields at fixed paths; None for any other parser (read in Python)."""
    if not isinstance(parser, FieldParser) or type(parser).parse is not FieldParser.parse:
        return None
    if any(t.upper() != "VARCHAR" for t in parser.properties.values()) or set(parser.fields) != set(parser.properties):
        return None
    keys = [[parser.text_field], *(p.split(".") for p in parser.fields.values())]
    if any('"' in k or "\\" in k or "'" in k for path in keys for k in path):
        return None

    def jpath(parts: list[str]) -> str:
        return "$" + "".join(f'."{k}"' for k in parts)

    types = ", ".join(f"'{jpath(p)}'" for p in keys)
    expected = ", ".join(["'OBJECT'"] + ["'VARCHAR'"] * len(keys))
    values = ", ".join(
        f"CASE WHEN good THEN json_extract_string(j, '{jpath(path.split('.'))}') END AS \"{prop}\""
        for prop, path in parser.fields.items()
    )
    # TRY: a malformed line gives NULL (DuckDB then redoes that batch row by row) where json_valid
    # would parse every line once more.
    return (
        f"SELECT good, {values} FROM (SELECT j, coalesce(TRY(json_type(j, ['$', {types}])) = [{expected}], false) "
        f"AS good FROM _lines)"
    )


def _path_keys(parser: MetadataParser) -> list[bytes]:
    """The keys on the text and property paths, as ``b'"key"'``."""
    keys = {parser.text_field, *(k for path in getattr(parser, "fields", {}).values() for k in path.split("."))}
    return [f'"{k}"'.encode() for k in sorted(keys)]


def _repeated_keys(arr: np.ndarray, ends: np.ndarray, keys: list[bytes]) -> np.ndarray:
    """Per line of the block: does one of ``keys`` (``b'"key"'``) occur in it more than once?

    DuckDB reads the first of duplicate keys, Python's ``json`` the last; such lines go to Python. A
    key of a record occurs verbatim in its line (unless written with ``\\u`` escapes), so a line
    where each occurs at most once has no duplicate on the paths the parser reads."""
    repeated = np.zeros(len(ends), dtype=bool)
    quotes = np.flatnonzero(arr == ord('"'))
    after = arr[np.minimum(quotes + 1, len(arr) - 1)]
    for key in keys:
        pos = quotes[after == key[1]]
        pos = pos[pos + len(key) <= len(arr)]
        for i in range(2, len(key)):
            pos = pos[arr[pos + i] == key[i]]
        line = np.searchsorted(ends, pos, side="right")
        repeated[line[1:][line[1:] == line[:-1]]] = True
    return repeated


_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection for parsing (opening one costs ~10 ms, a file can
    take less). A forked child (parallel ``parse_file`` tasks) opens its own: DuckDB is not fork-safe."""
    if getattr(_local, "pid", None) != os.getpid():
        _local.con, _local.pid = duckdb.connect(), os.getpid()
    return _local.con


def row_schema(parser: MetadataParser) -> pa.Schema:
    """The Arrow schema of the rows of ``parser``'s files: ``line, byte_offset, n_bytes``, properties."""
    return pa.schema([("line", pa.int64()), ("byte_offset", pa.int64()), ("n_bytes", pa.int64()),
                      *((p, ARROW_TYPES[t.upper()]) for p, t in parser.properties.items())])


class _Rows:
    """Reads one file's rows: :meth:`tables` yields Arrow tables (``line, byte_offset, n_bytes``, properties)."""

    def __init__(self, path: Path, parser: MetadataParser, on_bad_record: str, batch_rows: int, block_bytes: int):
        if on_bad_record not in ("fail", "skip"):
            raise ConfigError(f"on_bad_record must be 'fail' or 'skip', got {on_bad_record!r}.")
        self.path, self.parser, self.skip = path, parser, on_bad_record == "skip"
        self.batch_rows, self.block_bytes = batch_rows, block_bytes
        self.plain = not path.name.endswith((".gz", ".zst"))
        self.props = list(parser.properties)
        self.schema = row_schema(parser)
        self.sql = _fast_sql(parser)
        self.keys = _path_keys(parser)
        self.con = _connection()
        self.bad: list[BadRecord] = []

    def _check(self, lineno: int, raw: bytes) -> dict[str, Any] | None:
        """Python's verdict on one line: its values, or None when skipped as bad (else DataError)."""
        try:
            return parse_record(self.path, lineno, raw, self.parser)
        except DataError as e:
            if not self.skip:
                raise
            self.bad.append(BadRecord(str(self.path), lineno, str(e).removeprefix(f"{self.path}:{lineno}: ")))
            return None

    def tables(self) -> Iterator[pa.Table]:
        first_line = 1
        for offset, data in _blocks(self.path, self.block_bytes):
            arr = np.frombuffer(data, dtype=np.uint8)
            ends = np.flatnonzero(arr == ord("\n")) + 1
            if data[-1:] != b"\n":
                ends = np.append(ends, len(data))
            starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
            # Blank (whitespace-only) lines are skipped, as `raw.strip()` did; only a line that starts
            # with whitespace can be one.
            blank = np.zeros(len(ends), dtype=bool)
            for i in np.flatnonzero(_WHITESPACE[arr[starts]]):
                blank[i] = not data[starts[i] : ends[i]].strip()
            keep = np.flatnonzero(~blank)
            lines = first_line + keep
            first_line += len(ends)
            cols = {"line": lines, "byte_offset": offset + starts[keep], "n_bytes": (ends - starts)[keep]}
            if self.sql is not None:
                suspect = _repeated_keys(arr, ends, self.keys)[keep]
                yield from self._fast(data, starts, ends, keep, cols, suspect)
            else:
                yield from self._slow(data, starts[keep], ends[keep], cols)

    def _table(self, cols: dict[str, Any], values: dict[str, Any]) -> pa.Table:
        n = len(cols["line"])
        offsets = pa.array(cols["byte_offset"], pa.int64()) if self.plain else pa.nulls(n, pa.int64())
        arrays = [pa.array(cols["line"], pa.int64()), offsets, pa.array(cols["n_bytes"], pa.int64())]
        return pa.Table.from_arrays([*arrays, *(values[p] for p in self.props)], schema=self.schema)

    def _fast(
        self, data: bytes, all_starts: np.ndarray, all_ends: np.ndarray, keep: np.ndarray, cols: dict[str, Any],
        suspect: np.ndarray,
    ) -> Iterator[pa.Table]:
        n = len(keep)
        if n == 0:
            return
        starts, ends = all_starts[keep], all_ends[keep]
        # All lines of the block (blank ones too) as one Arrow string column over the block's bytes:
        # offsets only, no copies.
        bounds = np.append(all_starts, all_ends[-1]).astype(np.int64)
        buffers = [None, pa.py_buffer(bounds), pa.py_buffer(data)]
        lines = pa.Array.from_buffers(pa.large_string(), len(all_starts), buffers)
        try:
            lines.validate(full=True)  # UTF-8; DuckDB does not check Arrow strings
        except pa.ArrowInvalid:
            yield from self._slow(data, starts, ends, cols)
            return
        # Batches of 2048 lines: DuckDB scans an Arrow table's batches in parallel.
        self.con.register("_lines", pa.Table.from_batches(pa.table({"j": lines}).to_batches(max_chunksize=2048)))
        try:
            result = self.con.execute(self.sql).to_arrow_table()
        finally:
            self.con.unregister("_lines")
        if n < len(all_starts):
            result = result.take(pa.array(keep))
        good = result.column("good").to_numpy(zero_copy_only=False) & ~suspect
        values = {p: result.column(p).combine_chunks() for p in self.props}
        redo = np.flatnonzero(~good)
        if len(redo):
            # Lines DuckDB did not accept: Python decides, as the per-line path did (first bad line raises).
            py_values = {p: values[p].to_pylist() for p in self.props}
            drop = []
            for i in redo:
                got = self._check(int(cols["line"][i]), data[starts[i] : ends[i]])
                if got is None:
                    drop.append(i)
                    continue
                for p in self.props:
                    py_values[p][i] = got.get(p)
            values = {p: pa.array(py_values[p], ARROW_TYPES["VARCHAR"]) for p in self.props}
            if drop:
                mask = np.ones(n, dtype=bool)
                mask[drop] = False
                cols = {k: v[mask] for k, v in cols.items()}
                values = {p: values[p].filter(pa.array(mask)) for p in self.props}
        yield self._table(cols, values)

    def _slow(self, data: bytes, starts: np.ndarray, ends: np.ndarray, cols: dict[str, Any]) -> Iterator[pa.Table]:
        kept: list[int] = []
        buf: dict[str, list[Any]] = {p: [] for p in self.props}
        for i in range(len(starts)):
            got = self._check(int(cols["line"][i]), data[starts[i] : ends[i]])
            if got is not None:
                kept.append(i)
                for p in self.props:
                    buf[p].append(got.get(p))
            if len(kept) >= self.batch_rows:
                yield self._typed({k: v[kept] for k, v in cols.items()}, buf)
                kept, buf = [], {p: [] for p in self.props}
        if kept:
            yield self._typed({k: v[kept] for k, v in cols.items()}, buf)

    def _typed(self, cols: dict[str, Any], buf: dict[str, list[Any]]) -> pa.Table:
        """Python values cast to the declared types by DuckDB (the casts an INSERT into the index makes)."""
        try:
            raw = pa.table({p: pa.array(buf[p]) for p in self.props})
            self.con.register("_values", raw)
            casts = ", ".join(f'CAST("{p}" AS {t.upper()}) AS "{p}"' for p, t in self.parser.properties.items())
            typed = self.con.execute(f"SELECT {casts} FROM _values").to_arrow_table()
        except (duckdb.Error, pa.ArrowException) as e:
            raise DataError(
                f"{self.path}: metadata parser {self.parser.name!r} returned values that do not fit the property "
                f"columns {self.parser.properties}: {e}"
            ) from None
        finally:
            self.con.unregister("_values")
        return self._table(cols, {p: typed.column(p).combine_chunks().cast(self.schema.field(p).type)
                                  for p in self.props})


def iter_rows(
    path: Path, parser: MetadataParser, on_bad_record: str = "fail", batch_rows: int = 65_536,
    block_bytes: int | None = None, bad: list[BadRecord] | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of the rows of one JSONL file, in line order (``line, byte_offset, n_bytes``,
    properties); ``bad`` collects the records skipped with ``on_bad_record="skip"``."""
    rows = _Rows(Path(path), parser, on_bad_record, batch_rows, block_bytes or BLOCK_BYTES)
    try:
        yield from rows.tables()
    finally:
        if bad is not None:
            bad.extend(rows.bad)


def parse_file(
    path: str | os.PathLike[str], parser: str | MetadataParser, out_path: str | os.PathLike[str],
    on_bad_record: Literal["fail", "skip"] = "fail",
) -> ParsedFile:
    """Parse one JSONL(.gz/.zst) file into a Parquet file of the rows an index stores (written to a
    temporary name, then renamed: a crash leaves no half file at ``out_path``). ``on_bad_record="fail"``
    raises a DataError naming ``file:line`` at the first bad record; ``"skip"`` leaves them out and
    lists them in :attr:`ParsedFile.bad_records`. Safe to run in parallel for different files."""
    import pyarrow.parquet as pq

    parser = resolve_parser(parser)
    src, out = Path(path).resolve(), Path(out_path)
    st = src.stat()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    bad: list[BadRecord] = []
    rows = 0
    try:
        with pq.ParquetWriter(tmp, row_schema(parser)) as writer:
            for table in iter_rows(src, parser, on_bad_record, bad=bad):
                writer.write_table(table)
                rows += table.num_rows
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ParsedFile(str(src), str(out), parser.name, rows, st.st_size, st.st_mtime_ns, bad)


def import_parsed(
    index: SampleIndex, name: str, root: str | os.PathLike[str], parser: str | MetadataParser,
    parsed: list[ParsedFile],
) -> RegistrationReport:
    """Import :func:`parse_file` results into ``index`` as dataset ``name`` registered from ``root``: the
    same rows and ids as ``index.register_dataset(name, root, parser)`` of those files (files in sorted
    path order, one transaction each, marked done). Files already done are skipped, so a rerun after
    a crash continues. Same as ``index.import_parsed(...)``."""
    return index.import_parsed(name, root, parser, parsed)
