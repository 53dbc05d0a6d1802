"""The inputs of a preparation: finding the files (local or S3) and reading their documents.

An input is a file, a directory (searched recursively), a glob pattern, or an ``s3://bucket/prefix``
(every object under it; endpoint from ``S3_ENDPOINT_URL``, credentials as boto3 finds them). Files are
JSONL (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``; one JSON object per non-blank line, the document in
``text_field``) or Parquet (``.parquet``; the ``text_field`` column, one record batch at a time). The
list is sorted and de-duplicated, so the same inputs always give the same tasks: task ``i`` is file
``i`` (one task per input file, as datatrove's executors and the corpora people prepare are sharded).

Bad records (:class:`BadRecords`): a line that is not JSON, not an object, or has no string
``text_field`` (a Parquet null), and a file that cannot be read to the end (truncated gzip, corrupt
zstd, a Parquet file that does not open) are reported as ``file:line: reason``. With
``on_bad_record="fail"`` (the default) the first one stops the task with a DataError saying so; with
``"skip"`` the record is left out, counted and listed in the task's report, and reading goes on (an
unreadable file ends at its last good line).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

from ..errors import ConfigError, DataError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
BAD_RECORD_POLICIES = ("fail", "skip")
MAX_LISTED_BAD = 1000
"""Bad records listed per task (all are counted)."""
PARQUET_BATCH_ROWS = 1024


def is_s3(name: str) -> bool:
    return name.startswith("s3://")


def stem_of(name: str) -> str:
    """The file name without its input suffix: ``a/b/part-0.jsonl.zst`` -> ``part-0``."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None)


def _split_s3(url: str) -> tuple[str, str]:
    bucket, _, key = url[len("s3://"):].partition("/")
    return bucket, key


def find_input_files(inputs: list[str]) -> list[str]:
    """The input files of ``inputs`` (files, directories, globs, s3:// prefixes), sorted, unique.
    ConfigError naming an input that matches no file of a known kind."""
    found: set[str] = set()
    for spec in inputs:
        spec = str(spec)
        if is_s3(spec):
            names = _list_s3(spec)
        elif any(c in spec for c in "*?["):
            names = [str(Path(p).resolve()) for p in glob.glob(spec, recursive=True) if Path(p).is_file()]
        elif Path(spec).is_dir():
            names = [str(p.resolve()) for p in Path(spec).rglob("*") if p.is_file()]
        elif Path(spec).is_file():
            if not spec.endswith(SUFFIXES):
                raise ConfigError(f"Input {spec} is not a {'/'.join(SUFFIXES)} file.")
            names = [str(Path(spec).resolve())]
        else:
            raise ConfigError(f"Input {spec} does not exist (a file, directory, glob or s3://bucket/prefix).")
        names = [n for n in names if n.endswith(SUFFIXES)]
        if not names:
            raise ConfigError(f"Input {spec} holds no {'/'.join(SUFFIXES)} files.")
        found.update(names)
    return sorted(found)


def _list_s3(url: str) -> list[str]:
    bucket, prefix = _split_s3(url)
    try:
        client = s3_client()
        names = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            names += [f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", [])]
    except Exception as e:  # botocore raises many types; all mean the input cannot be listed
        raise DataError(
            f"Cannot list {url} ({type(e).__name__}: {e}). Check S3_ENDPOINT_URL "
            f"({os.environ.get('S3_ENDPOINT_URL') or 'unset: AWS'}), the bucket name and your credentials."
        ) from None
    return names


def open_raw(name: str) -> IO[bytes]:
    """A binary stream of the (still compressed) input file."""
    if is_s3(name):
        bucket, key = _split_s3(name)
        try:
            body = s3_client().get_object(Bucket=bucket, Key=key)["Body"]
        except Exception as e:
            raise DataError(f"Cannot read {name} ({type(e).__name__}: {e}). Check S3_ENDPOINT_URL and credentials.") from None
        return body
    return open(name, "rb")


def open_decompressed(name: str) -> IO[bytes]:
    raw = open_raw(name)
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if name.endswith(".zst"):
        import pyarrow as pa

        stream = pa.OSFile(name) if not is_s3(name) else pa.PythonFile(raw, mode="r")
        return io.BufferedReader(pa.CompressedInputStream(stream, "zstd"))
    return raw


@dataclass
class BadRecords:
    """Bad records of one task: counted, the first :data:`MAX_LISTED_BAD` listed as ``file:line: reason``."""

    policy: str = "fail"
    count: int = 0
    listed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in BAD_RECORD_POLICIES:
            raise ConfigError(f"--on-bad-record = '{self.policy}': use one of {', '.join(BAD_RECORD_POLICIES)}.")

    def add(self, name: str, line: int, reason: str) -> None:
        where = f"{name}:{line}: {reason}"
        if self.policy == "fail":
            raise DataError(
                f"{where}. Fix or remove the record and rerun (finished tasks are kept), or pass "
                f"--on-bad-record skip to leave bad records out, counted per task."
            )
        self.count += 1
        if len(self.listed) < MAX_LISTED_BAD:
            self.listed.append(where)


UNREADABLE = (OSError, EOFError, zlib.error, ValueError)


def iter_documents(name: str, text_field: str, bad: BadRecords) -> Iterator[str]:
    """The documents of one input file in file order, bad records reported to ``bad``."""
    if name.endswith(PARQUET_SUFFIXES):
        yield from _iter_parquet(name, text_field, bad)
        return
    lineno = 0
    try:
        stream = open_decompressed(name)
    except UNREADABLE as e:
        bad.add(name, 0, f"unreadable file ({type(e).__name__}: {e})")
        return
    with stream:
        while True:
            try:
                raw = stream.readline()
            except UNREADABLE as e:
                bad.add(name, lineno + 1, f"unreadable from here on ({type(e).__name__}: {e}); the lines before it were read")
                return
            if not raw:
                return
            lineno += 1
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                bad.add(name, lineno, f"not a JSON line ({e})")
                continue
            if not isinstance(record, dict):
                bad.add(name, lineno, f"a JSON {type(record).__name__}, not an object")
                continue
            text = record.get(text_field)
            if not isinstance(text, str):
                what = "no" if text_field not in record else f"a {type(text).__name__}, not a string, in the"
                bad.add(name, lineno, f"{what} '{text_field}' field (--text-field)")
                continue
            yield text


def _iter_parquet(name: str, text_field: str, bad: BadRecords) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = name if not is_s3(name) else pa.BufferReader(open_raw(name).read())
        pf = pq.ParquetFile(source)
    except (pa.ArrowException, *UNREADABLE) as e:
        bad.add(name, 0, f"unreadable Parquet file ({type(e).__name__}: {e})")
        return
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{name}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)}); set --text-field.")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            for text in batch.column(0).to_pylist():
                row += 1
                if not isinstance(text, str):
                    bad.add(name, row, f"row has a {type(text).__name__}, not a string, in column '{text_field}'")
                    continue
                yield text
    except (pa.ArrowException, *UNREADABLE) as e:
        bad.add(name, row + 1, f"unreadable from this row on ({type(e).__name__}: {e})")
