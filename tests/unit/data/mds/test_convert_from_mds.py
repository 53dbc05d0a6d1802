"""The converter with an existing MDS dataset as input: re-tokenize a text layout, re-pack a token layout.

Every input dataset is written with streaming's own ``MDSWriter`` in the layouts llm-foundry's converters
and users' scripts write (``text: str``; ``tokens`` as ndarray of an int dtype, or as raw int64 bytes),
or is our own converter's output. Re-tokenized text must be byte-identical to the JSONL conversion of
the same texts; re-packed tokens must equal a numpy cut of the concatenated token stream; our own
overlapping windows, re-packed, must equal converting the documents directly (no duplicated token).
The outputs are read back with our loader and with streaming's own ``StreamingDataset``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import take, write_jsonl
from conftest import REPO_ROOT, TOKENIZER_DIR
from s3_server import moto_s3

from titan_recipes.data.mds import MDSLoader, StreamSpec, write_mds
from titan_recipes.data.mds.compat import import_streaming
from titan_recipes.errors import ConfigError, DataError

SEQ_LEN = 24
SIZE_LIMIT = "4kb"
INPUT_SIZE_LIMIT = 1500  # bytes per input shard: several shards, so shard order matters


def mds_writer(out: Path, columns: dict[str, str], samples: list[dict], size_limit=INPUT_SIZE_LIMIT, **kwargs) -> Path:
    """Write ``samples`` with streaming's own MDSWriter, as llm-foundry's converters do."""
    import_streaming()
    from streaming.base.format.mds.writer import MDSWriter

    with MDSWriter(out=str(out), columns=columns, size_limit=size_limit, **kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return out


def convert(inputs, out: Path, seq_len: int = SEQ_LEN, **kwargs):
    kwargs.setdefault("size_limit", SIZE_LIMIT)
    return write_mds(inputs, TOKENIZER_DIR, seq_len, out, progress=False, **kwargs)


def shard_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith("shard.")}


def read_ours(directory: Path, seq_len: int = SEQ_LEN) -> np.ndarray:
    """Every sample of a converted directory in index order, through our loader (rows of seq_len + 1)."""
    loader = MDSLoader(
        streams=[StreamSpec("s", str(directory), setting="test")], seq_len=seq_len, local_batch_size=1,
        dp_rank=0, dp_world_size=1, shuffle=False, shuffle_seed=0,
    )
    batches = take(loader, loader.num_samples)
    return torch.cat([torch.cat([x, y[:, -1:]], dim=1) for x, y in batches]).numpy().astype(np.int64)


def read_streaming(directory: Path, tmp_path: Path, monkeypatch) -> list[np.ndarray]:
    """Every sample of ``directory`` as streaming's own single-process StreamingDataset yields it, unshuffled.

    ``directory`` is the stream's remote (a local path streaming copies from) and a fresh directory its
    ``local``, so the dataset's shared memory names are unique to this test."""
    st = import_streaming()
    from streaming.base.dataset import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # streaming's filelocks: out of the system temp dir
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    clean_stale_shared_memory()
    local = tmp_path / "streaming_local"
    stream = st.Stream(remote=str(directory), local=str(local))
    dataset = StreamingDataset(streams=[stream], shuffle=False, batch_size=1)
    try:
        return [np.asarray(sample["tokens"]) for sample in dataset]
    finally:
        del dataset


def reference_windows(tokens: np.ndarray, seq_len: int = SEQ_LEN) -> np.ndarray:
    """Windows of seq_len + 1 with stride seq_len cut from ``tokens`` with numpy (the tail dropped)."""
    n = (len(tokens) - 1) // seq_len
    return np.stack([tokens[k * seq_len : k * seq_len + seq_len + 1] for k in range(n)]).astype(np.int64)


def random_pieces(tokens: np.ndarray, seed: int = 0, high: int = 60) -> list[np.ndarray]:
    """``tokens`` cut at random points into samples of 1..high tokens (their concatenation is ``tokens``)."""
    rng = np.random.default_rng(seed)
    cuts, at = [], 0
    while at < len(tokens):
        at += int(rng.integers(1, high))
        cuts.append(min(at, len(tokens)))
    return np.split(tokens, cuts[:-1])


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def jsonl_reference(tmp_path_factory, corpus):
    """The JSONL conversion of the corpus at SEQ_LEN: what re-tokenizing an MDS text dataset must give."""
    root = tmp_path_factory.mktemp("jsonl_ref")
    convert([write_jsonl(root / "corpus.jsonl", corpus.docs)], root / "mds")
    return root / "mds"


@pytest.fixture(scope="module")
def text_mds(tmp_path_factory, corpus):
    """llm-foundry's text layout (convert_dataset_json.py without --concat_tokens), several shards."""
    return mds_writer(tmp_path_factory.mktemp("text") / "mds", {"text": "str"}, [{"text": d} for d in corpus.docs])


def test_text_layout_is_retokenized_byte_identical_to_jsonl(tmp_path, text_mds, jsonl_reference, corpus):
    assert len(json.loads((text_mds / "index.json").read_text())["shards"]) > 3
    summary = convert([text_mds], tmp_path / "out")
    assert shard_files(tmp_path / "out") == shard_files(jsonl_reference)
    assert (tmp_path / "out" / "index.json").read_bytes() == (jsonl_reference / "index.json").read_bytes()
    assert summary.documents == len(corpus.docs) and summary.input_samples == 0
    conversion = json.loads((tmp_path / "out" / "conversion.json").read_text())
    (source,) = conversion["inputs"]
    assert source["mds"] == str(text_mds) and source["layout"] == "text" and source["column"] == "text:str"
    assert source["index_json_sha256"] == hashlib.sha256((text_mds / "index.json").read_bytes()).hexdigest()


def test_text_layout_with_extra_columns_through_the_script(tmp_path, corpus, jsonl_reference, capsys):
    """llm-foundry-like extra columns are ignored; the CLI takes the directory as a positional input."""
    samples = [{"id": i, "text": d} for i, d in enumerate(corpus.docs)]
    mds = mds_writer(tmp_path / "in", {"id": "int", "text": "str"}, samples)
    rc = load_script("mds_convert").main([
        str(mds), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", str(SEQ_LEN), "--out", str(tmp_path / "out"),
        "--size-limit", SIZE_LIMIT, "--no-progress",
    ])
    assert rc == 0 and f"{len(corpus.docs):,} documents" in capsys.readouterr().out
    assert shard_files(tmp_path / "out") == shard_files(jsonl_reference)


@pytest.mark.parametrize(
    "encoding, pieces",
    [
        ("ndarray:int32", "random"),
        ("ndarray:uint16", "random"),
        ("ndarray:int64", "fixed"),  # llm-foundry --concat_tokens N: exactly N tokens per sample
        ("ndarray:int32:20", "fixed"),  # a fixed shape: decoded one shard at a time
        ("ndarray", "random"),  # dtype stored per sample
    ],
)
def test_token_ndarray_layouts_are_repacked_as_one_stream(tmp_path, monkeypatch, corpus, encoding, pieces):
    tokens = corpus.tokens
    n = len(tokens) // 20
    parts = random_pieces(tokens) if pieces == "random" else np.split(tokens[: n * 20], n)
    dtype = encoding.split(":")[1] if ":" in encoding else "int16"
    mds = mds_writer(tmp_path / "in", {"tokens": encoding}, [{"tokens": p.astype(dtype)} for p in parts])
    summary = convert([mds], tmp_path / "out")
    stream = np.concatenate(parts)
    expected = reference_windows(stream)
    got = read_ours(tmp_path / "out")
    assert got.shape == expected.shape and np.array_equal(got, expected)
    assert summary.input_samples == len(parts) and summary.documents == 0
    assert summary.tail_tokens == len(stream) - 1 - len(expected) * SEQ_LEN
    conversion = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert conversion["inputs"][0]["layout"] == "tokens" and conversion["inputs"][0]["column"] == f"tokens:{encoding}"
    if encoding == "ndarray:int32":  # our reader and streaming's StreamingDataset agree on the output
        theirs = read_streaming(tmp_path / "out", tmp_path, monkeypatch)
        assert len(theirs) == len(got)
        assert all(np.array_equal(a, b) for a, b in zip(theirs, got))


@pytest.mark.parametrize("encoding_type", ["int64", "uint16"])
def test_token_bytes_layout_uses_the_token_encoding_type(tmp_path, corpus, encoding_type):
    parts = random_pieces(corpus.tokens, seed=1)
    samples = [{"tokens": np.asarray(p, encoding_type).tobytes()} for p in parts]
    mds = mds_writer(tmp_path / "in", {"tokens": "bytes"}, samples)
    kwargs = {} if encoding_type == "int64" else {"token_encoding_type": encoding_type}  # int64: the default
    convert([mds], tmp_path / "out", **kwargs)
    assert np.array_equal(read_ours(tmp_path / "out"), reference_windows(corpus.tokens))
    (source,) = json.loads((tmp_path / "out" / "conversion.json").read_text())["inputs"]
    assert source["token_encoding_type"] == encoding_type
    with pytest.raises(ConfigError, match="--token-encoding-type = 'float32' is not a numpy integer dtype"):
        convert([mds], tmp_path / "bad", token_encoding_type="float32")


def test_our_own_windows_repack_without_duplicating_the_shared_token(tmp_path, monkeypatch, corpus):
    """Our output at L (windows of L + 1, stride L) re-packed to L2 == the documents converted at L2 directly,
    up to where the L conversion's stream ends; re-packed at L again, it is byte-identical to itself."""
    docs = write_jsonl(tmp_path / "docs.jsonl", corpus.docs)
    small = convert([docs], tmp_path / "at16", seq_len=16)
    convert([docs], tmp_path / "at24")
    direct = read_ours(tmp_path / "at24")
    summary = convert([tmp_path / "at16"], tmp_path / "re24")
    repacked = read_ours(tmp_path / "re24")
    stream_len = small.samples * 16 + 1  # the tokens the L = 16 windows cover, each once
    assert len(repacked) == (stream_len - 1) // SEQ_LEN and summary.input_samples == small.samples
    assert np.array_equal(repacked, direct[: len(repacked)])
    assert np.array_equal(repacked, reference_windows(corpus.tokens[:stream_len]))
    conversion = json.loads((tmp_path / "re24" / "conversion.json").read_text())
    assert conversion["inputs"][0]["overlapping_windows_of_seq_len"] == 16
    convert([tmp_path / "at16"], tmp_path / "re16", seq_len=16)
    assert shard_files(tmp_path / "re16") == shard_files(tmp_path / "at16")
    theirs = read_streaming(tmp_path / "re24", tmp_path, monkeypatch)
    assert len(theirs) == len(repacked) and all(np.array_equal(a, b) for a, b in zip(theirs, repacked))


def test_overlap_claimed_by_conversion_json_but_absent_is_an_error(tmp_path, corpus):
    windows = reference_windows(corpus.tokens, 16)
    shifted = [{"tokens": w.astype(np.int32)} for w in windows[::2]]  # stride 32: no shared tokens
    mds = mds_writer(tmp_path / "in", {"tokens": "ndarray:int32:17"}, shifted)
    (mds / "conversion.json").write_text(json.dumps({"seq_len": 16}))
    with pytest.raises(DataError, match=r"shard 0, sample 1 does not start with the last token.*conversion\.json"):
        convert([mds], tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()  # a failed conversion leaves no dataset behind
    (mds / "conversion.json").write_text("{not json")
    with pytest.raises(DataError, match=r"conversion\.json is unreadable .*overlapping windows"):
        convert([mds], tmp_path / "out2")


def test_remote_inputs_are_downloaded_into_the_input_cache(tmp_path, corpus, text_mds, jsonl_reference, capsys):
    parts = random_pieces(corpus.tokens, seed=2)
    samples = [{"tokens": p.astype(np.int32)} for p in parts]
    tokens_mds = mds_writer(tmp_path / "tok", {"tokens": "ndarray:int32"}, samples, compression="zstd", hashes=["xxh64"])
    with moto_s3("inputs") as s3:
        for name, local in (("text", text_mds), ("tok", tokens_mds)):
            for f in sorted(local.iterdir()):
                s3.client.put_object(Bucket="inputs", Key=f"{name}/{f.name}", Body=f.read_bytes())
        cache = tmp_path / "cache"
        convert(["s3://inputs/text"], tmp_path / "text_out", input_cache=cache)
        assert shard_files(tmp_path / "text_out") == shard_files(jsonl_reference)
        assert (cache / "s3_inputs_text" / "shard.00001.mds").is_file()  # kept for the next run
        convert(["s3://inputs/tok/"], tmp_path / "tok_out")  # a temporary cache, removed afterwards
        assert np.array_equal(read_ours(tmp_path / "tok_out"), reference_windows(corpus.tokens))
        rc = load_script("mds_convert").main([
            "--input-remote", "s3://inputs/tok", "--input-cache", str(cache), "--tokenizer", str(TOKENIZER_DIR),
            "--seq-len", str(SEQ_LEN), "--out", str(tmp_path / "cli_out"), "--size-limit", SIZE_LIMIT, "--no-progress",
        ])
        assert rc == 0 and f"{len(parts):,} MDS samples re-packed" in capsys.readouterr().out
        assert shard_files(tmp_path / "cli_out") == shard_files(tmp_path / "tok_out")
        cached = cache / "s3_inputs_tok" / "shard.00001.mds"
        cached.write_bytes(cached.read_bytes()[:-1] + b"\0")  # a stale copy fails its xxh64: downloaded again
        convert(["s3://inputs/tok"], tmp_path / "tok_again", input_cache=cache)
        assert shard_files(tmp_path / "tok_again") == shard_files(tmp_path / "tok_out")
        (source,) = json.loads((tmp_path / "cli_out" / "conversion.json").read_text())["inputs"]
        assert source["mds"] == "s3://inputs/tok"
        with pytest.raises(DataError, match="Cannot download index.json of --input-remote = 's3://inputs/missing'"):
            convert(["s3://inputs/missing"], tmp_path / "missing_out")


@pytest.mark.parametrize(
    "columns, sample, listed",
    [
        ({"input_ids": "ndarray:int32", "id": "int"}, {"input_ids": np.arange(5, dtype=np.int32), "id": 0},
         ["input_ids:ndarray:int32", "id:int"]),
        ({"tokens": "ndarray:float32"}, {"tokens": np.zeros(4, np.float32)}, ["tokens:ndarray:float32"]),
        ({"text": "bytes"}, {"text": b"hello"}, ["text:bytes"]),
    ],
)
def test_other_layouts_are_an_error_listing_columns_and_layouts(tmp_path, columns, sample, listed):
    mds = mds_writer(tmp_path / "in", columns, [sample] * 3)
    with pytest.raises(DataError) as info:
        convert([mds], tmp_path / "out")
    message = str(info.value)
    for column in listed:
        assert column in message
    for accepted in ("text:str", "tokens:ndarray:<int dtype>", "tokens:bytes", "--token-encoding-type"):
        assert accepted in message
    assert not (tmp_path / "out").exists()


def test_token_ids_outside_the_vocabulary_name_shard_and_sample(tmp_path, corpus):
    parts = [p.astype(np.int32) for p in np.split(corpus.tokens[:2000], 100)]
    parts[57] = parts[57].copy()
    parts[57][3] = 5000  # the tokenizer has 2048 tokens
    mds = mds_writer(tmp_path / "in", {"tokens": "ndarray:int32"}, [{"tokens": p} for p in parts])
    index = json.loads((mds / "index.json").read_text())
    counts = np.cumsum([s["samples"] for s in index["shards"]])
    shard = int(np.searchsorted(counts, 57, side="right"))
    row = 57 - (int(counts[shard - 1]) if shard else 0)
    where = rf"shard {shard} \(shard\.{shard:05d}\.mds\), sample {row}"
    with pytest.raises(DataError, match=rf"{where}: token id 5000 at position 3 .*--tokenizer"):
        convert([mds], tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()  # the windows before it are not a dataset


def test_token_inputs_cannot_be_mixed_with_documents(tmp_path, corpus, text_mds):
    mds = mds_writer(tmp_path / "in", {"tokens": "ndarray:int32"}, [{"tokens": corpus.tokens[:100].astype(np.int32)}])
    with pytest.raises(ValueError, match="cannot be mixed with document inputs"):
        convert([text_mds, mds], tmp_path / "out")
    with pytest.raises(ValueError, match="MDS token inputs have none"):
        convert([mds], tmp_path / "out2", documents=(0, 10))


def test_a_corrupt_input_shard_is_an_error_naming_it(tmp_path, corpus):
    parts = [{"tokens": p.astype(np.int32)} for p in random_pieces(corpus.tokens, seed=3)]
    mds = mds_writer(tmp_path / "in", {"tokens": "ndarray:int32"}, parts, hashes=["xxh64"])
    shard = mds / "shard.00002.mds"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard\.00002\.mds does not match its xxh64 hash"):
        convert([mds], tmp_path / "out")
    shard.write_bytes(bytes(data[:-4]))
    with pytest.raises(DataError, match=r"shard\.00002\.mds has \d+ bytes but .*index\.json says"):
        convert([mds], tmp_path / "out2")
