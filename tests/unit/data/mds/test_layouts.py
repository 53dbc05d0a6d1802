"""The MDS layouts llm-foundry and streaming's own ``MDSWriter`` write, read as training windows.

Every dataset here is written with streaming's ``MDSWriter`` (not ours), as llm-foundry's converters and
users' scripts do. Packed windows are checked against a reference built with numpy from the same
documents and the loader's epoch order (itself checked against streaming's StreamingDataset in
test_mds.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from batches import take, take_ranks, concat_ranks, assert_batches_equal
from conftest import TOKENIZER_DIR, make_documents

from titan_recipes.data.mds import MDSLoader, MDSValidationLoader, StreamSpec, write_mds
from titan_recipes.data.mds.compat import import_streaming
from titan_recipes.data.mds.layouts import encode_documents
from titan_recipes.data.mds.packing import LENGTHS_DIR
from titan_recipes.data.workers import Workers
from titan_recipes.errors import ConfigError, DataError

L = 16  # training seq_len of these tests
B = 4


def mds_writer(out: Path, columns: dict[str, str], samples: list[dict], size_limit: int = 1500) -> Path:
    """Write ``samples`` with streaming's own MDSWriter, as llm-foundry's converters do."""
    import_streaming()
    from streaming.base.format.mds.writer import MDSWriter

    with MDSWriter(out=str(out), columns=columns, size_limit=size_limit) as writer:
        for sample in samples:
            writer.write(sample)
    return out


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return make_documents(120, seed=3)


@pytest.fixture(scope="module")
def token_docs(tokenizer, docs) -> list[np.ndarray]:
    """The documents as the loader tokenizes a text sample: BOS + text + EOS."""
    return [np.asarray(tokenizer.encode(d, add_bos=True, add_eos=True), np.int64) for d in docs]


def loader(local, seq_len=L, tokenizer=None, **kwargs) -> MDSLoader:
    defaults = dict(streams=[StreamSpec("data", str(local), setting="mosaic_dataloader.dataset.local")],
                    seq_len=seq_len, local_batch_size=B, dp_rank=0, dp_world_size=1, tokenizer=tokenizer,
                    progress=False)
    defaults.update(kwargs)
    return MDSLoader(**defaults)


def reference_windows(mds: MDSLoader, documents: list[np.ndarray], n: int, seq_len: int = L) -> np.ndarray:
    """The first ``n`` packed windows, from the documents in the loader's epoch order, epoch after epoch."""
    stream, epoch = [], 0
    while sum(map(len, stream)) < n * seq_len + 1:
        stream += [documents[i] for i in mds.order.epoch_order(epoch)]
        epoch += 1
    flat = np.concatenate(stream)
    return np.stack([flat[g * seq_len: g * seq_len + seq_len + 1] for g in range(n)])


def rows(batches) -> np.ndarray:
    return np.concatenate([torch.cat([x, y[:, -1:]], dim=1).numpy() for x, y in batches])


# -- each layout ------------------------------------------------------------------------------------------


def test_text_layout_is_tokenized_and_packed(tmp_path, tokenizer, docs, token_docs):
    local = mds_writer(tmp_path / "text", {"text": "str"}, [{"text": d} for d in docs])
    mds = loader(local, tokenizer=tokenizer)
    assert mds.packed is not None
    steps = mds.num_samples // B + 3  # into the second epoch: windows cross the epoch boundary
    got = rows(take(mds, steps))
    assert mds.packed.epoch_of(steps * B * L) == 1
    np.testing.assert_array_equal(got, reference_windows(mds, token_docs, steps * B))


@pytest.mark.parametrize("dtype", ["int32", "uint16", "int64"])
def test_token_ndarray_of_any_length_and_dtype_is_packed(tmp_path, token_docs, dtype):
    local = mds_writer(tmp_path / dtype, {"tokens": f"ndarray:{dtype}"},
                       [{"tokens": t.astype(dtype)} for t in token_docs])
    mds = loader(local)
    np.testing.assert_array_equal(rows(take(mds, 10)), reference_windows(mds, token_docs, 40))


def test_token_bytes_use_token_encoding_type(tmp_path, token_docs):
    local = mds_writer(tmp_path / "bytes", {"tokens": "bytes"}, [{"tokens": t.astype(np.int64).tobytes()} for t in token_docs])
    mds = loader(local)  # llm-foundry's default: int64
    np.testing.assert_array_equal(rows(take(mds, 10)), reference_windows(mds, token_docs, 40))
    local32 = mds_writer(tmp_path / "bytes32", {"tokens": "bytes"}, [{"tokens": t.astype(np.int32).tobytes()} for t in token_docs])
    mds32 = loader(local32, token_encoding_type="int32")
    np.testing.assert_array_equal(rows(take(mds32, 10)), reference_windows(mds32, token_docs, 40))


def test_bytes_that_do_not_divide_into_the_dtype_name_the_setting(tmp_path):
    local = mds_writer(tmp_path / "odd", {"tokens": "bytes"}, [{"tokens": bytes(range(12))}] * 5)
    with pytest.raises(DataError, match=r"12 bytes.*int64.*token_encoding_type"):
        loader(local)


def test_concat_tokens_of_exactly_seq_len_are_packed_and_nothing_is_dropped(tmp_path, token_docs):
    stream = np.concatenate(token_docs)
    chunks = [stream[i: i + L] for i in range(0, len(stream) - L + 1, L)]  # llm-foundry --concat_tokens L
    local = mds_writer(tmp_path / "concat", {"tokens": "ndarray:int32"}, [{"tokens": c.astype(np.int32)} for c in chunks])
    mds = loader(local, shuffle=False)
    assert mds.packed is not None and mds.num_samples == len(chunks)
    got = rows(take(mds, len(chunks) // B))
    # Unshuffled, window k is chunk k plus the first token of chunk k + 1: every token of every chunk is read.
    np.testing.assert_array_equal(got[:, :L], np.stack(chunks[: len(got)]))
    np.testing.assert_array_equal(got[:-1, L], [c[0] for c in chunks[1: len(got)]])


def test_samples_of_exactly_seq_len_plus_one_are_windows_as_they_are(tmp_path, token_docs):
    stream = np.concatenate(token_docs)
    windows = [stream[i: i + L + 1] for i in range(0, len(stream) - L, L + 1)]
    local = mds_writer(tmp_path / "w", {"tokens": "ndarray:int32"}, [{"tokens": w.astype(np.int32)} for w in windows])
    mds = loader(local)
    assert mds.packed is None and mds.num_samples == len(windows)
    ids = [int(i) for i in mds.order.epoch_order(0)[: 2 * B]]
    np.testing.assert_array_equal(rows(take(mds, 2)), np.stack([windows[i] for i in ids]))


def test_other_layouts_list_the_columns_found_and_accepted(tmp_path):
    local = mds_writer(tmp_path / "img", {"image": "bytes", "label": "int"}, [{"image": b"x", "label": 1}])
    with pytest.raises(DataError, match=r"columns \[image:bytes, label:int\].*Accepted: text:str.*tokens:ndarray:<int dtype>.*"
                                        r"tokens:bytes.*mosaic_dataloader.dataset.token_encoding_type"):
        loader(local)
    floats = mds_writer(tmp_path / "f", {"tokens": "ndarray:float32"}, [{"tokens": np.ones(4, np.float32)}])
    with pytest.raises(DataError, match=r"tokens:ndarray:float32"):
        loader(floats)


def test_token_encoding_type_must_be_an_integer_dtype(tmp_path, token_docs):
    local = mds_writer(tmp_path / "b", {"tokens": "bytes"}, [{"tokens": t.tobytes()} for t in token_docs[:5]])
    with pytest.raises(ConfigError, match=r"token_encoding_type = 'float32'.*int64"):
        loader(local, token_encoding_type="float32")


def test_text_needs_the_tokenizer(tmp_path, docs):
    local = mds_writer(tmp_path / "text", {"text": "str"}, [{"text": d} for d in docs[:5]])
    with pytest.raises(DataError, match="tokenizer"):
        loader(local)


# -- the guarantees of the other layouts, for the packed ones ------------------------------------------


@pytest.fixture
def text_dir(tmp_path, docs) -> Path:
    return mds_writer(tmp_path / "text", {"text": "str"}, [{"text": d} for d in docs])


def test_packed_resume_is_exact_and_dp_elastic(text_dir, tokenizer):
    one = loader(text_dir, tokenizer=tokenizer, local_batch_size=2 * B)
    expected = take(one, 12)
    two = [loader(text_dir, tokenizer=tokenizer, dp_rank=r, dp_world_size=2) for r in range(2)]
    first = [concat_ranks(step) for step in take_ranks(two, 5)]
    state = two[0].state_dict()
    assert state == two[1].state_dict()  # identical on every rank
    resumed = loader(text_dir, tokenizer=tokenizer, local_batch_size=2 * B)  # 2 -> 1 ranks
    resumed.load_state_dict(state)
    assert_batches_equal(first + take(resumed, 7), expected)


def test_packed_batches_do_not_depend_on_workers(text_dir, tokenizer):
    plain = take(loader(text_dir, tokenizer=tokenizer), 6)
    with_workers = loader(text_dir, tokenizer=tokenizer, workers=Workers(num_workers=2))
    assert_batches_equal(take(with_workers, 6), plain)


def test_another_tokenizer_refuses_the_checkpoint(text_dir, tokenizer, tmp_path):
    from titan_recipes.errors import FingerprintMismatchError
    from titan_recipes.tokenizer.sentencepiece import build_tokenizer_for_backend

    mds = loader(text_dir, tokenizer=tokenizer)
    take(mds, 1)
    other_dir = tmp_path / "tok"  # the same tokenizer with two ids swapped: other windows, other fingerprint
    other_dir.mkdir()
    src = Path(tokenizer.tokenizer_path)
    spec = json.loads((src / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other_dir / "tokenizer.json").write_text(json.dumps(spec))
    (other_dir / "tokenizer_config.json").write_text((src / "tokenizer_config.json").read_text())
    other = build_tokenizer_for_backend("hf", other_dir)
    with pytest.raises(FingerprintMismatchError):
        loader(text_dir, tokenizer=other).load_state_dict(mds.state_dict())


def test_token_counts_are_cached_beside_the_shards(text_dir, tokenizer):
    loader(text_dir, tokenizer=tokenizer)
    cached = sorted((text_dir / LENGTHS_DIR).glob("*.npy"))
    assert len(cached) == len(json.loads((text_dir / "index.json").read_text())["shards"])
    stamps = [c.stat().st_mtime_ns for c in cached]
    again = loader(text_dir, tokenizer=tokenizer)  # read from the cache, not counted again
    assert [c.stat().st_mtime_ns for c in cached] == stamps
    assert again.packed.lengths.sum() == loader(text_dir, tokenizer=tokenizer).packed.lengths.sum()


def test_an_unwritable_directory_caches_elsewhere(text_dir, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (text_dir / LENGTHS_DIR).write_text("")  # the cache directory cannot be made there (root ignores chmod)
    mds = loader(text_dir, tokenizer=tokenizer)
    assert list((tmp_path / "cache" / "titan_recipes" / "mds_lengths").glob("*/*.npy"))
    assert mds.packed is not None


def test_converter_windows_for_another_seq_len_are_repacked_without_the_overlap(tmp_path, corpus):
    from batches import write_jsonl

    jsonl = write_jsonl(tmp_path / "c.jsonl", corpus.docs)
    out = tmp_path / "mds8"
    write_mds([jsonl], TOKENIZER_DIR, 8, out, size_limit="2kb", progress=False)
    mds = loader(out, shuffle=False)
    assert mds.packed is not None
    # Unshuffled, the documents are the 9-token windows less their last token: the original stream again.
    n = (len(corpus.tokens) - 1) // 8 * 8 // L - 1
    np.testing.assert_array_equal(rows(take(mds, n // B)), np.stack(
        [corpus.tokens[g * L: g * L + L + 1] for g in range(n // B * B)]))


def test_a_mixture_of_text_and_token_streams(tmp_path, tokenizer, docs, token_docs):
    text = mds_writer(tmp_path / "text", {"text": "str"}, [{"text": d} for d in docs[:60]])
    tokens = mds_writer(tmp_path / "tok", {"tokens": "ndarray:uint16"}, [{"tokens": t.astype(np.uint16)} for t in token_docs[60:]])
    streams = [StreamSpec("text", str(text), proportion=0.5), StreamSpec("tok", str(tokens), proportion=0.5)]
    mds = loader(None, streams=streams, tokenizer=tokenizer)
    np.testing.assert_array_equal(rows(take(mds, 10)), reference_windows(mds, token_docs, 40))


def test_validation_reads_every_packed_window_once(text_dir, tokenizer, token_docs):
    val = MDSValidationLoader(streams=[StreamSpec("v", str(text_dir))], seq_len=L, local_batch_size=B,
                              dp_rank=0, dp_world_size=1, tokenizer=tokenizer, progress=False)
    flat = np.concatenate(token_docs)
    assert val.num_samples == (len(flat) - 1) // L
    got = rows([(x["input"], y) for x, y in val])
    np.testing.assert_array_equal(got, np.stack([flat[g * L: g * L + L + 1] for g in range(len(got))]))
    assert len(got) == val.num_samples // B * B


def test_encode_documents_equals_encode_one_at_a_time(tokenizer, docs):
    batched = encode_documents(tokenizer, docs[:50])
    for doc, ids in zip(docs[:50], batched):
        assert ids.tolist() == tokenizer.encode(doc, add_bos=True, add_eos=True)


def test_packed_non_iid_ranks_pack_their_own_orders(tmp_path, token_docs):
    first = mds_writer(tmp_path / "a", {"tokens": "ndarray:int32"}, [{"tokens": t.astype(np.int32)} for t in token_docs[:60]])
    second = mds_writer(tmp_path / "b", {"tokens": "ndarray:int32"}, [{"tokens": t.astype(np.int32)} for t in token_docs[60:]])
    streams = [StreamSpec("a", str(first)), StreamSpec("b", str(second))]
    rank_streams = {0: [streams[0]], 1: [streams[1]]}
    ranks = [loader(None, streams=streams, rank_streams=rank_streams, dp_rank=r, dp_world_size=2) for r in range(2)]
    for r, mds in enumerate(ranks):
        got = rows(take(mds, 6))
        # rank r's stream is its own documents in its own epoch order (sample ids are global: b's start at 60)
        np.testing.assert_array_equal(got, reference_windows(mds, token_docs, 6 * B))
        assert set(np.concatenate([mds.order.epoch_order(0)])) <= set(range(60) if r == 0 else range(60, 120))


def test_packed_reads_compressed_shards_with_predownload(tmp_path, tokenizer, docs):
    import_streaming()
    from streaming.base.format.mds.writer import MDSWriter

    local = tmp_path / "zstd"
    with MDSWriter(out=str(local), columns={"text": "str"}, compression="zstd", size_limit=1500) as writer:
        for d in docs:
            writer.write({"text": d})
    plain = take(loader(tmp_path / "zstd", tokenizer=tokenizer), 5)
    ahead = loader(local, tokenizer=tokenizer, predownload=16)
    assert_batches_equal(take(ahead, 5), plain)


def test_an_unreadable_conversion_record_is_an_error_not_a_guess(tmp_path, corpus):
    from batches import write_jsonl

    out = tmp_path / "mds"
    write_mds([write_jsonl(tmp_path / "c.jsonl", corpus.docs)], TOKENIZER_DIR, 8, out, progress=False)
    (out / "conversion.json").write_text("{not json")
    with pytest.raises(DataError, match=r"MDS stream 'data'.*conversion.json is unreadable.*overlapping windows"):
        loader(out)
