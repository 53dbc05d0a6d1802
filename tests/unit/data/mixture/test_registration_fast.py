"""The fast registration path (DuckDB JSON parsing, numpy line splitting: ``mixture/bulk.py``) stores
exactly what the per-line Python registration stored, and ``parse_file`` + ``import_parsed`` give the
same index as ``register_dataset``.

The old code is kept below (:class:`OldIndex`, copied from ``registration.py`` before the fast path)
and both index the same corpora: SlimPajama-style records with blank and whitespace-only lines, CRLF
endings, a last line without newline, unicode raw and escaped, a BOM, duplicate keys, in ``.jsonl``,
``.jsonl.gz`` and ``.jsonl.zst``, read in blocks small enough to split the files many times."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstd

from titan_recipes.data.mixture import SampleIndex
from titan_recipes.data.mixture import bulk
from titan_recipes.data.mixture.bulk import import_parsed, iter_lines, parse_file, parse_record
from titan_recipes.data.mixture.parsers import MetadataParser, resolve_parser
from titan_recipes.data.mixture.registration import find_jsonl_files
from titan_recipes.errors import DataError


# -- the old registration, as it was before the fast path ----------------------------------------------------
class OldIndex(SampleIndex):
    """``register_dataset`` with the per-line ``json.loads`` code it had before ``bulk.py``."""

    def register_dataset(self, name, path_or_glob, parser="slimpajama", progress=False):
        parser = resolve_parser(parser)
        files = find_jsonl_files(path_or_glob)
        root = str(path_or_glob) if not Path(path_or_glob).exists() else str(Path(path_or_glob).resolve())
        self.con.begin()
        try:
            dataset_id = self._dataset_row(name, root, parser)
            self._add_property_columns(parser)
            _, todo, _ = self._plan_files(name, dataset_id, files)
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        for file_id, path, *_ in todo:
            self._old_index_file(dataset_id, file_id, path, parser)

    def _old_index_file(self, dataset_id: int, file_id: int, path: Path, parser: MetadataParser) -> int:
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
                table = pa.table({
                    "id": pa.array(np.arange(next_id, next_id + k, dtype=np.int64)),
                    "dataset_id": pa.array(np.full(k, dataset_id, dtype=np.int32)),
                    "file_id": pa.array(np.full(k, file_id, dtype=np.int32)),
                    "line": pa.array(buf["line"], pa.int64()),
                    "byte_offset": pa.array(buf["byte_offset"], pa.int64()),
                    "n_bytes": pa.array(buf["n_bytes"], pa.int64()),
                    **{p: pa.array(buf[p]) for p in props},
                })
                self.con.register("_mixture_batch", table)
                try:
                    self.con.execute(f"INSERT INTO samples ({col_sql}) SELECT {col_sql} FROM _mixture_batch")
                finally:
                    self.con.unregister("_mixture_batch")
                next_id += k
                for v in buf.values():
                    v.clear()

            for lineno, offset, raw in iter_lines(path):
                if not raw.strip():
                    continue
                values = self._old_parse_line(path, lineno, raw, parser)
                buf["line"].append(lineno)
                buf["byte_offset"].append(offset)
                buf["n_bytes"].append(len(raw))
                for p in props:
                    buf[p].append(values.get(p))
                n += 1
                if len(buf["line"]) >= 65_536:
                    flush()
            flush()
            self.con.execute("UPDATE files SET n_samples = ?, done = TRUE WHERE id = ?", [n, file_id])
            self.con.commit()
        except BaseException:
            self.con.rollback()
            raise
        return n

    @staticmethod
    def _old_parse_line(path: Path, lineno: int, raw: bytes, parser: MetadataParser) -> dict[str, Any]:
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
        return values


# -- corpus ------------------------------------------------------------------------------------------------
DOMAINS = ("RedPajamaCommonCrawl", "RedPajamaC4", "RedPajamaGithub", "RedPajamaBook", "RedPajamaArXiv",
           "RedPajamaWikipedia", "RedPajamaStackExchange")
TRICKY = [
    b'\n', b'   \t \n', b'\r\n', b'\x0b\x0c \n',  # blank lines: skipped
    '{"text": "caf\u00e9 \u201cquoted\u201d \U0001F600", "meta": {"redpajama_set_name": "RedPajamaC4"}}\n'.encode(),
    b'{"text": "escaped \\u00e9 \\ud83d\\ude00 \\"text\\" \\\\", '
    b'"meta": {"redpajama_set_name": "Red\\u0050ajamaBook"}}\n',
    b'  {"meta": {"redpajama_set_name": "RedPajamaArXiv", "extra": [1, {"a": null}]}, "text": "leading space"}  \r\n',
    b'\xef\xbb\xbf{"text": "BOM", "meta": {"redpajama_set_name": "RedPajamaC4"}}\n',  # Python reads a BOM
    b'{"text": "dup", "meta": {"redpajama_set_name": "First", "redpajama_set_name": "RedPajamaGithub"}}\n',
    b'{"text": 1, "text": "dup text wins last", "meta": {"redpajama_set_name": "RedPajamaC4"}}\n',
    b'{"te\\u0078t": "escaped key", "meta": {"redpajama_set_name": "RedPajamaWikipedia"}}\n',
    b'{"text": "", "meta": {"redpajama_set_name": ""}, "text2": "x"}\n',
    b'{"text":"nested \\"meta\\": {\\"redpajama_set_name\\": 1}","meta":{"redpajama_set_name":"RedPajamaC4"}}\n',
]


def write_file(path: Path, lines: list[bytes], final_newline: bool = True) -> None:
    data = b"".join(lines)
    if not final_newline:
        data = data.rstrip(b"\n")
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstd.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def records(n: int, seed: int, key: str = "redpajama_set_name") -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        text = " ".join(rng.choice(["the", "caf\u00e9", "\u4e2d\u6587", "\"q\"", "a\\b", "\t", "text", "{}"],
                                   int(rng.integers(1, 40))))
        record = {"text": text, "meta": {key: DOMAINS[int(rng.integers(len(DOMAINS)))], "i": i}}
        out.append((json.dumps(record, ensure_ascii=bool(i % 2)) + "\n").encode())
    return out


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "data"
    write_file(root / "a.jsonl", records(40, 0)[:20] + TRICKY + records(40, 0)[20:], final_newline=False)
    write_file(root / "b.jsonl.gz", TRICKY + records(300, 1) + [b"\n"])
    write_file(root / "sub" / "c.jsonl.zst", records(500, 2) + TRICKY)
    write_file(root / "d.jsonl", [])  # empty file: no samples, still done
    return root


def dump(index: SampleIndex) -> dict[str, list]:
    """Everything registration stores (the registration time aside)."""
    return {
        "samples": index.con.execute("SELECT * FROM samples ORDER BY id").fetchall(),
        "files": index.con.execute("SELECT * FROM files ORDER BY id").fetchall(),
        "datasets": index.con.execute("SELECT id, name, root, parser FROM datasets ORDER BY id").fetchall(),
        "properties": index.con.execute("SELECT * FROM properties ORDER BY name").fetchall(),
        "columns": index.con.execute("DESCRIBE samples").fetchall(),
    }


class QualityParser(MetadataParser):
    """A custom (Python) parser with typed properties: the slow path."""

    name = "quality"
    properties = {"domain": "VARCHAR", "idx": "BIGINT", "half": "DOUBLE"}

    def parse(self, record: dict[str, Any]) -> dict[str, Any]:
        i = record["meta"].get("i")
        return {"domain": record["meta"]["redpajama_set_name"], "idx": i, "half": None if i is None else i / 2}


@pytest.mark.parametrize("block_bytes", [bulk.BLOCK_BYTES, 257])
def test_fast_path_stores_what_the_old_code_stored(tmp_path, corpus, monkeypatch, block_bytes):
    monkeypatch.setattr(bulk, "BLOCK_BYTES", block_bytes)  # 257: blocks end mid-file many times
    python_lines = []
    monkeypatch.setattr(bulk, "parse_record", lambda path, line, *a: python_lines.append(line) or parse_record(
        path, line, *a))
    with OldIndex(tmp_path / "old") as old, SampleIndex(tmp_path / "new") as new:
        old.register_dataset("sp", corpus)
        report = new.register_dataset("sp", corpus, progress=False)
        expected = dump(old)
        assert dump(new) == expected
    # DuckDB read the records; Python the BOM and duplicate-key lines of each file, and the few where a
    # key's name occurs twice (here: records whose whole text is "text")
    assert {28, 29, 30, 8, 9, 10, 508, 509, 510} <= set(python_lines) and len(python_lines) < 15
    assert report.samples_added == len(expected["samples"]) == 40 + 300 + 500 + 3 * 9
    by_line = {(r[2], r[3]): r for r in expected["samples"]}
    # the duplicate key: Python keeps the last value, and so does the index
    assert by_line[(0, 20 + 9)][-1] == "RedPajamaGithub"
    assert by_line[(0, 20 + 5)][4:6] == (sum(len(x) for x in records(40, 0)[:20] + TRICKY[:4]), len(TRICKY[4]))
    assert by_line[(1, 2 + 4)][4] is None  # .gz: no byte offsets


def test_custom_and_pile_parsers_match_the_old_code(tmp_path, corpus):
    pile = tmp_path / "pile"
    write_file(pile / "p.jsonl.zst", records(200, 3, key="pile_set_name"))
    with OldIndex(tmp_path / "old") as old, SampleIndex(tmp_path / "new") as new:
        for index in (old, new):
            index.register_dataset("q", corpus / "sub", parser=QualityParser())
            index.register_dataset("pile", pile, parser="pile")
        assert dump(new) == dump(old)
        assert new.properties == {"domain": "VARCHAR", "half": "DOUBLE", "idx": "BIGINT", "pile_set_name": "VARCHAR"}


BAD_LINES = {
    "not json": b"{oops\n",
    "invalid utf-8": b'{"text": "\xff\xfe", "meta": {"redpajama_set_name": "RedPajamaC4"}}\n',
    "not an object": b"[1, 2]\n",
    "no text": b'{"meta": {"redpajama_set_name": "RedPajamaC4"}}\n',
    "text not a string": b'{"text": 3, "meta": {"redpajama_set_name": "RedPajamaC4"}}\n',
    "missing property": b'{"text": "a", "meta": {}}\n',
    "meta not an object": b'{"text": "a", "meta": "RedPajamaC4"}\n',
    "property not a string": b'{"text": "a", "meta": {"redpajama_set_name": 4}}\n',
    "duplicate text, last not a string": b'{"text": "a", "text": null, "meta": {"redpajama_set_name": "C4"}}\n',
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_record_errors_are_the_old_ones(tmp_path, case):
    """The same DataError, naming ``file:line``, as the per-line code; nothing of the file is kept."""
    path = tmp_path / "data" / "bad.jsonl.zst"
    write_file(path, records(30, 4) + [b"\n", BAD_LINES[case]] + records(5, 5))
    errors = []
    for cls, name in ((OldIndex, "old"), (SampleIndex, "new")):
        with cls(tmp_path / name) as index:
            with pytest.raises(DataError, match=rf"bad\.jsonl\.zst:32: ") as e:
                index.register_dataset("d", path, progress=False)
            errors.append(str(e.value))
            assert index.num_samples() == 0
    assert errors[0] == errors[1]


def test_a_bad_record_stops_at_its_file_and_a_rerun_resumes(tmp_path, corpus):
    bad = corpus / "b.jsonl.gz"
    good = bad.read_bytes()
    write_file(bad, records(10, 6) + [BAD_LINES["missing property"]])
    with SampleIndex(tmp_path / "idx") as index:
        with pytest.raises(DataError, match=r"b\.jsonl\.gz:11: metadata parser 'slimpajama': record has no"):
            index.register_dataset("sp", corpus, progress=False)
        done = index.con.execute("SELECT path, done FROM files ORDER BY path").fetchall()
        assert [(Path(p).name, d) for p, d in done] == [("a.jsonl", True), ("b.jsonl.gz", False),
                                                        ("d.jsonl", False), ("c.jsonl.zst", False)]
        assert index.num_samples() == 40 + 9
        bad.write_bytes(good)
        (corpus / "a.jsonl").write_bytes((corpus / "a.jsonl").read_bytes() + b"\n")
        with pytest.raises(DataError, match=r"a\.jsonl changed since it was indexed"):  # a is done, b was not
            index.register_dataset("sp", corpus, progress=False)
    with SampleIndex(tmp_path / "idx2") as index, OldIndex(tmp_path / "old") as old:
        write_file(bad, records(10, 6) + [BAD_LINES["not json"]])
        with pytest.raises(DataError, match=r"b\.jsonl\.gz:11: not a JSON line"):
            index.register_dataset("sp", corpus, progress=False)
        bad.write_bytes(good)
        report = index.register_dataset("sp", corpus, progress=False)
        assert (report.files_indexed, report.files_skipped) == (3, 1)
        old.register_dataset("sp", corpus)
        assert dump(index)["samples"] == dump(old)["samples"]


# -- parse_file + import_parsed -----------------------------------------------------------------------------
def parse_all(corpus: Path, out: Path, parser: Any = "slimpajama", **kw: Any) -> list[bulk.ParsedFile]:
    # In reverse order, as parallel tasks may finish: import_parsed sorts by path.
    files = find_jsonl_files(corpus)[::-1]
    return [parse_file(p, parser, out / f"{i}.parquet", **kw) for i, p in enumerate(files)]


@pytest.mark.parametrize("parser", ["slimpajama", QualityParser()], ids=["slimpajama", "custom"])
def test_parse_file_and_import_give_the_registered_index(tmp_path, corpus, parser):
    parsed = parse_all(corpus, tmp_path / "parsed", parser)
    assert not list((tmp_path / "parsed").glob(".*"))  # no temporary files left
    with SampleIndex(tmp_path / "registered") as reg, SampleIndex(tmp_path / "imported") as imp:
        reg.register_dataset("sp", corpus, parser=parser, progress=False)
        report = import_parsed(imp, "sp", corpus, parser, parsed)
        assert dump(imp) == dump(reg)
        assert report.samples_added == sum(p.rows for p in parsed) == reg.num_samples()
        again = imp.import_parsed("sp", corpus, parser, parsed)  # idempotent
        assert (again.files_indexed, again.files_skipped, again.samples_added) == (0, 4, 0)
        assert imp.read_texts([0, 25, reg.num_samples() - 1]) == reg.read_texts([0, 25, reg.num_samples() - 1])
    c = next(p for p in parsed if p.path.endswith("c.jsonl.zst"))
    st = (corpus / "sub" / "c.jsonl.zst").stat()
    assert (c.rows, c.size, c.mtime_ns, c.bad_records) == (509, st.st_size, st.st_mtime_ns, [])
    assert pq.read_table(c.out_path).column_names[:3] == ["line", "byte_offset", "n_bytes"]


def test_parse_file_bad_records_fail_or_skip(tmp_path):
    path = tmp_path / "data" / "x.jsonl"
    write_file(path, records(5, 7) + [BAD_LINES["not json"]] + records(3, 8) + [BAD_LINES["no text"]])
    out = tmp_path / "out" / "x.parquet"
    with pytest.raises(DataError, match=r"x\.jsonl:6: not a JSON line"):
        parse_file(path, "slimpajama", out)
    assert not out.exists() and not list(out.parent.iterdir())  # atomic: no partial output
    parsed = parse_file(path, "slimpajama", out, on_bad_record="skip")
    assert parsed.rows == 8 and pq.read_table(out)["line"].to_pylist() == [1, 2, 3, 4, 5, 7, 8, 9]
    assert [(Path(p).name, line) for p, line, _ in parsed.bad_records] == [("x.jsonl", 6), ("x.jsonl", 10)]
    assert parsed.bad_records[1].reason == "no string 'text' field (parser 'slimpajama')"
    with SampleIndex(tmp_path / "idx") as index:
        import_parsed(index, "x", path, "slimpajama", [parsed])
        assert index.con.execute("SELECT line FROM samples ORDER BY id").fetchall() == [
            (i,) for i in (1, 2, 3, 4, 5, 7, 8, 9)]
        assert index.read_texts([5]) == [json.loads(records(3, 8)[0])["text"]]


def test_import_refuses_a_changed_file_and_names_a_missing_parquet(tmp_path, corpus):
    parsed = parse_all(corpus, tmp_path / "parsed")
    (corpus / "a.jsonl").write_bytes(b"\n" + (corpus / "a.jsonl").read_bytes())
    with SampleIndex(tmp_path / "idx") as index:
        with pytest.raises(DataError, match=r"a\.jsonl changed after it was parsed .*parse it again"):
            index.import_parsed("sp", corpus, "slimpajama", parsed)
        assert index.num_samples() == 0
    parsed = parse_all(corpus, tmp_path / "parsed2")
    c = next(p for p in parsed if p.path.endswith("c.jsonl.zst"))
    Path(c.out_path).unlink()
    with SampleIndex(tmp_path / "idx2") as index:
        with pytest.raises(DataError, match=rf"Cannot import {re.escape(c.out_path)} \(the rows of .*c\.jsonl\.zst\).*Parse the"):
            index.import_parsed("sp", corpus, "slimpajama", parsed)
        done = index.con.execute("SELECT count(*) FILTER (WHERE done), sum(n_samples) FROM files").fetchone()
        assert done == (3, 40 + 9 + 300 + 9)  # a, b and d (sorted before sub/c) are in


def test_mixture_register_does_not_import_torch(tmp_path):
    data = tmp_path / "one.jsonl"
    write_file(data, records(3, 9))
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "titan_recipes.cli", "mixture", "register", str(tmp_path / "idx"),
         str(data), "--name", "one", "--no-progress"],
        capture_output=True, text=True, check=True,
    )
    modules = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "titan_recipes.data.mixture.bulk" in modules and "3 new sample(s)" in proc.stdout
    assert not {"torch", "torchtitan"} & modules
