"""The DuckDB sample index: registration (counts, idempotence, resume, changed files, bad records)
and queries against the hand-known corpus of ``mixture_corpus``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mixture_corpus import ARXIV, BLANK_AFTER, BOOK, C4, FILES, GITHUB, TOTALS, WIKI, Sample, write_corpus

from titan_recipes.errors import ConfigError, DataError
from titan_recipes.data.mixture import MetadataParser, SampleIndex, Query, SlimPajamaParser


class QualityParser(MetadataParser):
    """A custom parser: the set name and a numeric property."""

    name = "quality"
    properties = {"redpajama_set_name": "VARCHAR", "quality": "DOUBLE"}

    def parse(self, record: dict[str, Any]) -> dict[str, Any]:
        return {"redpajama_set_name": record["meta"]["redpajama_set_name"], "quality": float(record["meta"]["quality"])}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Sample]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root)


@pytest.fixture(scope="module")
def quality_index(tmp_path_factory, corpus):
    index = SampleIndex(tmp_path_factory.mktemp("quality_index"))
    index.register_dataset("sp", corpus[0], parser=QualityParser(), progress=False)
    yield index
    index.close()


def ids(samples: list[Sample], keep) -> list[int]:
    return [s.id for s in samples if keep(s)]


def test_registration_counts(tmp_path, corpus):
    root, samples = corpus
    with SampleIndex(tmp_path / "idx") as index:
        report = index.register_dataset("sp", root, parser="slimpajama", progress=True)
        assert (report.files_indexed, report.files_skipped, report.samples_added, report.samples_total) == (3, 0, 300, 300)
        assert (tmp_path / "idx" / "index.duckdb").is_file()
        assert index.properties == {"redpajama_set_name": "VARCHAR"}
        assert index.domain_counts("redpajama_set_name") == TOTALS
        [ds] = index.datasets()
        assert (ds["name"], ds["parser"], ds["files"], ds["files_done"], ds["samples"]) == ("sp", "slimpajama", 3, 3, 300)
        per_file = index.con.execute("SELECT path, n_samples FROM files ORDER BY path").fetchall()
        assert [(Path(p).name, n) for p, n in per_file] == [(f, sum(c.values())) for f, c in sorted(FILES.items())]
        # Ids, line numbers (the blank line skipped) and domains are the ones the corpus wrote.
        rows = index.con.execute(
            "SELECT s.id, f.path, s.line, s.redpajama_set_name FROM samples s JOIN files f ON s.file_id = f.id ORDER BY s.id"
        ).fetchall()
        assert [(i, Path(p).name, line, d) for i, p, line, d in rows] == [(s.id, s.file, s.line, s.domain) for s in samples]
        assert samples[BLANK_AFTER].line == BLANK_AFTER + 2


def test_plain_file_offsets_point_at_lines(tmp_path, corpus):
    root, _ = corpus
    with SampleIndex(tmp_path) as index:
        index.register_dataset("sp", root / "part-00.jsonl", progress=False)
        rows = index.con.execute("SELECT byte_offset, n_bytes, redpajama_set_name FROM samples ORDER BY id").fetchall()
    data = (root / "part-00.jsonl").read_bytes()
    for offset, n_bytes, domain in rows:
        record = json.loads(data[offset : offset + n_bytes])
        assert record["meta"]["redpajama_set_name"] == domain


def test_reregister_is_idempotent(tmp_path, corpus):
    root, _ = corpus
    with SampleIndex(tmp_path) as index:
        index.register_dataset("sp", root, progress=False)
    with SampleIndex(tmp_path) as index:  # reopened from disk
        report = index.register_dataset("sp", root, progress=False)
        assert (report.files_indexed, report.files_skipped, report.samples_added, report.samples_total) == (0, 3, 0, 300)
        assert index.num_samples() == 300
        with pytest.raises(ConfigError, match="registered from .* with parser 'slimpajama'.*got .* parser 'pile'"):
            index.register_dataset("sp", root, parser="pile", progress=False)
        assert index.properties == {"redpajama_set_name": "VARCHAR"}  # the failed call changed nothing


class FailOnGzip(SlimPajamaParser):
    """Stands in for a crash while the second file is being indexed."""

    def parse(self, record: dict[str, Any]) -> dict[str, Any]:
        if record["text"].startswith("part-01.jsonl.gz sample 50 "):
            raise RuntimeError("simulated crash")
        return super().parse(record)


def test_interrupted_registration_resumes(tmp_path, corpus, monkeypatch):
    root, samples = corpus
    # Small insert batches: the crash comes after some of the second file's samples were inserted,
    # so the test sees that its transaction takes them back.
    monkeypatch.setattr("titan_recipes.data.mixture.registration.INSERT_BATCH", 16)
    with SampleIndex(tmp_path / "a") as index:
        with pytest.raises(RuntimeError, match="simulated crash"):
            index.register_dataset("sp", root, parser=FailOnGzip(), progress=False)
        # The first file is done, nothing of the second was kept, the third was not started.
        assert index.num_samples() == 100
        done = index.con.execute("SELECT path, done, n_samples FROM files ORDER BY path").fetchall()
        assert [(Path(p).name, d, n) for p, d, n in done] == [
            ("part-00.jsonl", True, 100), ("part-01.jsonl.gz", False, None), ("part-02.jsonl.zst", False, None)]
        report = index.register_dataset("sp", root, progress=False)
        assert (report.files_indexed, report.files_skipped, report.samples_added) == (2, 1, 200)
        assert index.domain_counts("redpajama_set_name") == TOTALS
        resumed = index.con.execute("SELECT id, file_id, line, redpajama_set_name FROM samples ORDER BY id").fetchall()
    with SampleIndex(tmp_path / "b") as clean:
        clean.register_dataset("sp", root, progress=False)
        assert clean.con.execute("SELECT id, file_id, line, redpajama_set_name FROM samples ORDER BY id").fetchall() == resumed


def test_changed_file_is_an_error(tmp_path, corpus):
    root = tmp_path / "data"
    write_corpus(root)
    with SampleIndex(tmp_path / "idx") as index:
        index.register_dataset("sp", root, progress=False)
        path = root / "part-00.jsonl"
        path.write_bytes(path.read_bytes() + b'{"text": "x", "meta": {"redpajama_set_name": "RedPajamaC4"}}\n')
        with pytest.raises(DataError, match=r"part-00\.jsonl changed since it was indexed in dataset 'sp'"):
            index.register_dataset("sp", root, progress=False)
        index.remove_dataset("sp")  # the fix the message names
        assert index.num_samples() == 0 and index.datasets() == []
        assert index.register_dataset("sp", root, progress=False).samples_total == 301
        with pytest.raises(ConfigError, match=r"No dataset 'nope'.*registered: \['sp'\]"):
            index.remove_dataset("nope")


def test_new_files_are_added_on_reregister(tmp_path):
    root = tmp_path / "data"
    write_corpus(root)
    (root / "part-02.jsonl.zst").rename(tmp_path / "later.jsonl.zst")
    with SampleIndex(tmp_path / "idx") as index:
        assert index.register_dataset("sp", root, progress=False).samples_total == 200
        (tmp_path / "later.jsonl.zst").rename(root / "part-02.jsonl.zst")
        report = index.register_dataset("sp", root, progress=False)
        assert (report.files_indexed, report.files_skipped, report.samples_added) == (1, 2, 100)


def test_two_datasets_and_pile_parser(tmp_path, corpus):
    root, _ = corpus
    pile = tmp_path / "pile.jsonl"
    pile.write_text("".join(
        json.dumps({"text": f"p{i}", "meta": {"pile_set_name": name}}) + "\n"
        for i, name in enumerate(["Pile-CC", "Github", "Pile-CC", "ArXiv"])
    ))
    with SampleIndex(tmp_path / "idx") as index:
        index.register_dataset("sp", root, progress=False)
        index.register_dataset("pile", pile, parser="pile", progress=False)
        assert index.properties == {"pile_set_name": "VARCHAR", "redpajama_set_name": "VARCHAR"}
        assert index.domain_counts("pile_set_name") == {"ArXiv": 1, "Github": 1, "Pile-CC": 2}
        assert index.domain_counts("redpajama_set_name") == TOTALS
        assert index.num_samples("pile") == 4 and index.num_samples() == 304
        # Pile samples lack redpajama_set_name: they match no clause on it, != included.
        assert index.count(Query().where("redpajama_set_name", "!=", C4)) == 180
        assert index.query(Query().where("pile_set_name", "==", "Pile-CC")).tolist() == [300, 302]


def test_bad_records_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"text": "a", "meta": {"redpajama_set_name": C4}})
    cases = {
        "missing field": (json.dumps({"text": "b", "meta": {}}), r"bad\.jsonl:2: metadata parser 'slimpajama': record has no 'meta\.redpajama_set_name'"),
        "not json": ("{oops", r"bad\.jsonl:2: not a JSON line"),
        "no text": (json.dumps({"meta": {"redpajama_set_name": C4}}), r"bad\.jsonl:2: no string 'text' field"),
    }
    for i, (line, match) in enumerate(cases.values()):
        path.write_text(good + "\n" + line + "\n")
        with SampleIndex(tmp_path / f"idx{i}") as index:
            with pytest.raises(DataError, match=match):
                index.register_dataset("d", path, progress=False)
            assert index.num_samples() == 0


def test_no_files_and_unknown_parser(tmp_path):
    with SampleIndex(tmp_path / "idx") as index:
        with pytest.raises(DataError, match="No JSONL files"):
            index.register_dataset("d", tmp_path / "nothing-*.jsonl", progress=False)
        (tmp_path / "x.jsonl").write_text("")
        with pytest.raises(ConfigError, match=r"Unknown metadata parser 'redpajama'; built-ins are \['pile', 'slimpajama'\]"):
            index.register_dataset("d", tmp_path / "x.jsonl", parser="redpajama", progress=False)


def test_read_only_index(tmp_path, corpus):
    with pytest.raises(DataError, match="No sample index"):
        SampleIndex(tmp_path / "missing", read_only=True)
    with SampleIndex(tmp_path) as index:
        index.register_dataset("sp", corpus[0], progress=False)
    with SampleIndex(tmp_path, read_only=True) as a, SampleIndex(tmp_path, read_only=True) as b:
        assert a.count() == b.count() == 300
        with pytest.raises(DataError, match="read-only"):
            a.register_dataset("sp", corpus[0], progress=False)


# -- queries --------------------------------------------------------------------------------------
Q = Query
QUERIES = [
    (Q().where("redpajama_set_name", "==", C4), lambda s: s.domain == C4, 120),
    (Q().where("redpajama_set_name", "!=", C4), lambda s: s.domain != C4, 180),
    (Q().where("redpajama_set_name", "in", [GITHUB, BOOK]), lambda s: s.domain in (GITHUB, BOOK), 90),
    (Q([("redpajama_set_name", "==", C4)], [("redpajama_set_name", "==", WIKI)]), lambda s: s.domain in (C4, WIKI), 180),
    (Q().where("redpajama_set_name", "==", C4).where("quality", ">=", 0.5), lambda s: s.domain == C4 and s.quality >= 0.5, 60),
    (
        Q().where("redpajama_set_name", "==", GITHUB).where("quality", "<", 0.2).or_where("redpajama_set_name", "==", ARXIV),
        lambda s: (s.domain == GITHUB and s.quality < 0.2) or s.domain == ARXIV,
        10 + 30,
    ),
    (Q().where("quality", ">", 0.75).where("quality", "<=", 0.9), lambda s: 0.75 < s.quality <= 0.9, 60),
    (Q(), lambda s: True, 300),
]


@pytest.mark.parametrize("query,keep,count", QUERIES, ids=[str(q) for q, _, _ in QUERIES])
def test_queries_match_hand_checked_expectations(quality_index, corpus, query, keep, count):
    _, samples = corpus
    assert quality_index.count(query) == count
    assert quality_index.query(query).tolist() == ids(samples, keep)


def test_domain_counts_under_a_query(quality_index):
    q = Query().where("quality", "<", 0.3)
    assert quality_index.domain_counts("redpajama_set_name", q) == {d: n * 3 // 10 for d, n in TOTALS.items()}
    assert quality_index.domain_counts("quality")[0.5] == 30


def test_query_errors(quality_index):
    with pytest.raises(ConfigError, match=r"unknown operator '=~'; use one of \['==', '!=', '<', '>', '<=', '>=', 'in'\]"):
        Query().where("redpajama_set_name", "=~", "C4")
    with pytest.raises(ConfigError, match=r"unknown property 'set_name'; the index knows \['quality', 'redpajama_set_name'\]"):
        quality_index.count(Query().where("set_name", "==", C4))
    with pytest.raises(ConfigError, match=r"Unknown property 'lang'"):
        quality_index.domain_counts("lang")
    with pytest.raises(ConfigError, match="the list is empty"):
        Query().where("redpajama_set_name", "in", [])
    with pytest.raises(ConfigError, match="must be a list of values"):
        Query().where("redpajama_set_name", "in", C4)
    with pytest.raises(ConfigError, match="values must be strings, numbers or booleans"):
        Query().where("redpajama_set_name", "==", None)
    with pytest.raises(ConfigError, match=r"failed on the index .*Cannot compare values of type VARCHAR"):
        quality_index.count(Query().where("redpajama_set_name", "<", 5))


def test_query_compiles_to_parameters():
    q = Query().where("a", "in", ["x'; DROP TABLE samples; --", "y"]).or_where("b", "<=", 3)
    sql, params = q.compile({"a": "VARCHAR", "b": "BIGINT"})
    assert sql == '("a" IN (?, ?)) OR ("b" <= ?)'
    assert params == ["x'; DROP TABLE samples; --", "y", 3]
    assert Query().compile({}) == ("TRUE", [])
