"""The MDS converter's inputs and outputs: JSONL / Parquet / saved HF datasets / plain text, document
ranges, every streaming compression, byte-identical reruns, remote output with upload threads, and
``mds_stats`` of a remote dataset (a real moto S3 server on 127.0.0.1).

Every input kind is checked against the JSONL conversion of the same documents, byte for byte
(``index.json`` carries each shard's xxh64), and compressed shards are read back through MDSLoader.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import take, write_jsonl
from s3_server import moto_s3

from titan_recipes.errors import DataError
from titan_recipes.data.mds import MDSLoader, StreamSpec, mds_stats, write_mds, inputs as mds_inputs
from titan_recipes.data.mds.inputs import iter_input_documents, parse_document_range

REPO_ROOT = Path(__file__).resolve().parents[4]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"
SEQ_LEN = 32
SIZE_LIMIT = "4kb"  # ~30 samples of 33 tokens per shard: several shards


def convert(inputs, out: Path, **kwargs):
    kwargs.setdefault("size_limit", SIZE_LIMIT)
    return write_mds(inputs, TOKENIZER_DIR, SEQ_LEN, out, progress=False, **kwargs)


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def shard_files(directory: Path) -> dict[str, bytes]:
    return {k: v for k, v in files(directory).items() if k.startswith("shard.")}


def read_all(directory: Path) -> torch.Tensor:
    """Every sample of ``directory`` in index order, read back through the loader (rows of SEQ_LEN + 1)."""
    loader = MDSLoader(
        streams=[StreamSpec("s", str(directory), setting="test")], seq_len=SEQ_LEN, local_batch_size=1,
        dp_rank=0, dp_world_size=1, shuffle=False, shuffle_seed=0,
    )
    batches = take(loader, loader.num_samples)
    return torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in batches])


def windows(tokenizer, docs) -> torch.Tensor:
    ids = []
    for d in docs:
        ids.extend(tokenizer.encode(d, add_bos=True, add_eos=True))
    ids = np.asarray(ids, dtype=np.int64)
    n = (len(ids) - 1) // SEQ_LEN
    return torch.from_numpy(np.stack([ids[k * SEQ_LEN : k * SEQ_LEN + SEQ_LEN + 1] for k in range(n)]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """The JSONL conversion every other input kind must reproduce exactly."""
    root = tmp_path_factory.mktemp("ref")
    convert([write_jsonl(root / "corpus.jsonl", corpus.docs)], root / "mds")
    return root / "mds"


def write_parquet(path: Path, docs, field: str = "text", **columns) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({field: docs, "id": list(range(len(docs))), **columns}), path, row_group_size=50)
    return path


# -- input kinds ------------------------------------------------------------------------------------------


def test_parquet_is_streamed_by_record_batch_and_equals_jsonl(tmp_path, corpus, reference, monkeypatch):
    import pyarrow.parquet as pq

    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    monkeypatch.setattr(mds_inputs, "PARQUET_BATCH_ROWS", 7)
    path = write_parquet(tmp_path / "c.parquet", corpus.docs)
    assert list(iter_input_documents(path)) == corpus.docs
    assert calls == [{"batch_size": 7, "columns": ["text"]}]
    convert([path], tmp_path / "mds")
    assert files(tmp_path / "mds")["index.json"] == files(reference)["index.json"]
    assert shard_files(tmp_path / "mds") == shard_files(reference)


def test_text_field_names_the_column_and_the_key(tmp_path, corpus, reference):
    path = write_parquet(tmp_path / "c.parquet", corpus.docs, field="content")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"content": d}) + "\n" for d in corpus.docs))
    convert([path], tmp_path / "pq", text_field="content")
    convert([jsonl], tmp_path / "js", text_field="content")
    assert shard_files(tmp_path / "pq") == shard_files(tmp_path / "js") == shard_files(reference)
    assert json.loads((tmp_path / "pq" / "conversion.json").read_text())["text_field"] == "content"


def test_saved_hf_dataset_and_dataset_dict_split(tmp_path, corpus, reference):
    import datasets

    ds = datasets.Dataset.from_dict({"text": corpus.docs, "id": list(range(len(corpus.docs)))})
    ds.save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": ds, "validation": ds.select(range(10))}).save_to_disk(str(tmp_path / "dd"))
    convert([tmp_path / "ds"], tmp_path / "a")
    convert([tmp_path / "dd"], tmp_path / "b", split="train")
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b") == shard_files(reference)
    assert list(iter_input_documents(tmp_path / "dd", split="validation")) == corpus.docs[:10]
    with pytest.raises(DataError, match=r"DatasetDict with splits \['train', 'validation'\]; choose one with --split"):
        convert([tmp_path / "dd"], tmp_path / "c")


def test_plain_text_splits_on_blank_lines_like_the_text_loader(tmp_path, corpus, reference):
    from titan_recipes.data.text.loader import read_documents

    assert list(iter_input_documents(corpus.path)) == read_documents(corpus.path, "\n\n") == corpus.docs
    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress(corpus.path.read_bytes()))
    convert([gz], tmp_path / "mds")
    assert shard_files(tmp_path / "mds") == shard_files(reference)


def test_inputs_of_different_kinds_pack_into_one_stream(tmp_path, corpus, reference):
    third = len(corpus.docs) // 3
    a = write_jsonl(tmp_path / "a.jsonl", corpus.docs[:third])
    b = write_parquet(tmp_path / "b.parquet", corpus.docs[third : 2 * third])
    c = tmp_path / "c.txt"
    c.write_text("\n\n".join(corpus.docs[2 * third :]))
    summary = convert([a, b, c], tmp_path / "mds")
    assert summary.documents == len(corpus.docs)
    assert shard_files(tmp_path / "mds") == shard_files(reference)
    kinds = [i["path"].rsplit(".", 1)[-1] for i in json.loads((tmp_path / "mds" / "conversion.json").read_text())["inputs"]]
    assert kinds == ["jsonl", "parquet", "txt"]


@pytest.mark.parametrize(
    "text, expected",
    [("0:-200", (0, -200)), ("-200:", (-200, None)), (":10", (None, 10)), ("5:9", (5, 9))],
)
def test_parse_document_range(text, expected):
    assert parse_document_range(text) == expected


def test_parse_document_range_rejects_garbage():
    with pytest.raises(ValueError, match="START:END"):
        parse_document_range("12")


def test_document_ranges_split_one_corpus_into_disjoint_sets(tmp_path, corpus, tokenizer):
    k = 40
    head = convert([corpus.path], tmp_path / "head", documents=(0, -k))
    tail = convert([corpus.path], tmp_path / "tail", documents=(-k, None))
    assert (head.documents, tail.documents) == (len(corpus.docs) - k, k)
    assert torch.equal(read_all(tmp_path / "head"), windows(tokenizer, corpus.docs[:-k]))
    assert torch.equal(read_all(tmp_path / "tail"), windows(tokenizer, corpus.docs[-k:]))
    mid = convert([corpus.path], tmp_path / "mid", documents=(10, 110))
    assert mid.documents == 100
    assert torch.equal(read_all(tmp_path / "mid"), windows(tokenizer, corpus.docs[10:110]))
    assert json.loads((tmp_path / "mid" / "conversion.json").read_text())["documents_range"] == [10, 110]


# -- bad input ---------------------------------------------------------------------------------------------


def test_bad_parquet_inputs_are_data_errors_naming_file_and_row(tmp_path, corpus):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = write_parquet(tmp_path / "c.parquet", corpus.docs)
    with pytest.raises(DataError, match=re.escape(f"{path}: no column 'body' (columns: ['text', 'id'])")):
        convert([path], tmp_path / "o1", text_field="body")
    with pytest.raises(DataError, match=re.escape(f"{path}: column 'id' is int64, not a string column")):
        convert([path], tmp_path / "o2", text_field="id")
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"text": ["a fine document"] * 60 + [None]}), nulls)
    with pytest.raises(DataError, match=re.escape(f"{nulls}: row 60: 'text' is null")):
        convert([nulls], tmp_path / "o3")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=re.escape(f"{broken}: not a readable Parquet file")):
        convert([broken], tmp_path / "o4")


def test_bad_jsonl_hf_and_unknown_inputs_are_data_errors(tmp_path, corpus):
    import datasets

    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"body": "fine"}\n{"body": 3}\n')
    with pytest.raises(DataError, match=re.escape(f"{jsonl}:2: 'body' must be a string, got int")):
        convert([jsonl], tmp_path / "o1", text_field="body")
    with pytest.raises(DataError, match=re.escape(f"{jsonl}:1: not a JSON object with a 'text' field")):
        convert([jsonl], tmp_path / "o2")
    datasets.Dataset.from_dict({"text": ["ok"] * 3 + [None]}).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(DataError, match=r"ds: row 3: 'text' must be a string, got NoneType"):
        convert([tmp_path / "ds"], tmp_path / "o3")
    with pytest.raises(DataError, match=r"ds: no column 'body' \(columns: \['text'\]\)"):
        convert([tmp_path / "ds"], tmp_path / "o4", text_field="body")
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(DataError, match=r"notes.md: unknown kind. Accepted: .jsonl"):
        convert([tmp_path / "notes.md"], tmp_path / "o5")
    (tmp_path / "plain_dir").mkdir()
    with pytest.raises(DataError, match=r"neither an MDS dataset \(no index.json\) nor a Hugging Face dataset saved with save_to_disk"):
        convert([tmp_path / "plain_dir"], tmp_path / "o6")
    assert not (tmp_path / "o5").exists()  # checked before anything is written


# -- compression and determinism ------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "zstd:7", "gz", "bz2", "br:5", "snappy"])
def test_every_compression_round_trips_through_the_loader(tmp_path, corpus, tokenizer, compression):
    convert([corpus.path], tmp_path / "mds", compression=compression)
    names = [n for n in shard_files(tmp_path / "mds")]
    assert names and all(n.endswith("." + compression.split(":")[0]) for n in names)
    assert torch.equal(read_all(tmp_path / "mds"), windows(tokenizer, corpus.docs))
    stats = mds_stats(tmp_path / "mds")
    assert stats.compression == compression and stats.zip_bytes is not None


def test_unknown_compression_lists_what_streaming_supports(tmp_path, corpus):
    with pytest.raises(ValueError, match=re.escape("compression = 'lz4' is not supported")) as info:
        convert([corpus.path], tmp_path / "mds", compression="lz4")
    assert "br[:0-11], bz2[:1-9], gz[:0-9], snappy, zstd[:1-22]" in str(info.value)
    with pytest.raises(ValueError, match="'zstd:30' is not supported"):
        convert([corpus.path], tmp_path / "mds", compression="zstd:30")
    assert not (tmp_path / "mds").exists()


@pytest.mark.parametrize("compression", [None, "zstd", "bz2"])
def test_converting_twice_gives_byte_identical_shards_and_index(tmp_path, corpus, compression):
    parquet = write_parquet(tmp_path / "c.parquet", corpus.docs)
    convert([parquet, corpus.path], tmp_path / "a", compression=compression)
    convert([parquet, corpus.path], tmp_path / "b", compression=compression)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(shard_files(tmp_path / "a")) > 3
    assert a == b  # shards, index.json and conversion.json


# -- remote output, upload threads, stats --------------------------------------------------------------------


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_remote_output_with_upload_threads_and_remote_stats(tmp_path, corpus, monkeypatch, capsys):
    from streaming.base.format.base import writer as base_writer

    workers = []
    real_executor = base_writer.ThreadPoolExecutor

    def executor(max_workers=None, **kwargs):
        workers.append(max_workers)
        return real_executor(max_workers=max_workers, **kwargs)

    monkeypatch.setattr(base_writer, "ThreadPoolExecutor", executor)
    convert([corpus.path], tmp_path / "local", compression="zstd")
    with moto_s3("stats") as s3:
        rc = load_script("mds_convert").main([
            str(corpus.path), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", str(SEQ_LEN), "--out", "s3://stats/web",
            "--compression", "zstd", "--size-limit", SIZE_LIMIT, "--upload-threads", "3", "--no-progress",
        ])
        assert rc == 0 and workers[-1] == 3
        keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket="stats", Prefix="web/")["Contents"]}
        local = mds_stats(tmp_path / "local")
        assert len(keys) == local.shards + 2  # shards + index.json + conversion.json
        remote = mds_stats("s3://stats/web")
        assert remote.path == "s3://stats/web"
        assert (remote.shards, remote.samples, remote.raw_bytes, remote.zip_bytes, remote.compression, remote.tokens) == (
            local.shards, local.samples, local.raw_bytes, local.zip_bytes, "zstd", local.samples * (SEQ_LEN + 1)
        )
        capsys.readouterr()
        stats = load_script("mds_stats")
        assert stats.main(["s3://stats/web", str(tmp_path / "local")]) == 0
        table = capsys.readouterr().out
        assert "shard files" in table and "s3://stats/web" in table and f"{local.samples * 2:,}" in table
        assert stats.main(["s3://stats/missing"]) == 1
        assert "Cannot download index.json of s3://stats/missing" in capsys.readouterr().err


def test_convert_script_help_and_text_input(tmp_path, corpus, capsys):
    convert_script = load_script("mds_convert")
    with pytest.raises(SystemExit) as info:
        convert_script.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    for flag in ("--text-field", "--split", "--documents", "--upload-threads", "--hf-dataset", "untested"):
        assert flag in out
    rc = convert_script.main([
        str(corpus.path), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", str(SEQ_LEN), "--out", str(tmp_path / "o"),
        "--documents=-50:", "--compression", "gz", "--no-progress",
    ])
    assert rc == 0 and "wrote" in capsys.readouterr().out and mds_stats(tmp_path / "o").compression == "gz"
    assert convert_script.main([str(corpus.path), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", "32",
                                "--out", str(tmp_path / "p"), "--compression", "lz4"]) == 1
    assert "not supported" in capsys.readouterr().err
