"""scripts/blendcorpus.py: tokenize (plain/.gz/.zst, EOD), metadata, file-list with per-corpus epochs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import zstd

import titan_recipes  # noqa: F401
from torchtitan.components.tokenizer import HuggingFaceTokenizer

from titan_recipes.data.blendcorpus.megatron_format import MegatronShard

REPO_ROOT = Path(__file__).resolve().parents[4]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"
_spec = importlib.util.spec_from_file_location("blendcorpus_script", REPO_ROOT / "scripts" / "blendcorpus.py")
script = importlib.util.module_from_spec(_spec)
sys.modules["blendcorpus_script"] = script  # so worker processes can unpickle its functions
_spec.loader.exec_module(script)

DOCS = ["Fair is foul, and foul is fair.", "Hover through the fog and filthy air.", "When shall we three meet again?"]


def _jsonl(docs) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("raw")
    (d / "a.jsonl").write_bytes(_jsonl(DOCS))
    (d / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl(DOCS[:2])))
    (d / "c.jsonl.zst").write_bytes(zstd.compress(_jsonl(DOCS[1:])))
    return d


@pytest.fixture(scope="module")
def tokenized(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    rc = script.main(["--quiet", "tokenize", *map(str, sorted(raw.iterdir())), "--output-dir", str(out),
                      "--tokenizer", str(TOKENIZER_DIR), "--tokenizer-backend", "hf", "--workers", "2"])
    assert rc == 0
    return out


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        script.main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in ("tokenize", "metadata", "file-list"))


def test_tokenize_plain_gz_zst_with_eod(tokenized):
    tok = HuggingFaceTokenizer(str(TOKENIZER_DIR))
    expected = {"a": DOCS, "b": DOCS[:2], "c": DOCS[1:]}
    for stem, docs in expected.items():
        shard = MegatronShard(tokenized / f"{stem}_text_document")
        assert shard.dtype == np.uint16 and len(shard) == len(docs)
        for i, d in enumerate(docs):
            assert shard[i].tolist() == [*tok.encode(d, add_bos=False, add_eos=False), tok.eos_id]


def test_metadata(tokenized, tmp_path):
    out = tmp_path / "meta.json"
    assert script.main(["--quiet", "metadata", str(tokenized), "--output", str(out)]) == 0
    meta = json.loads(out.read_text())
    assert len(meta) == 3
    a = meta[str(tokenized / "a_text_document")]
    assert a["documents"] == 3 and a["tokens"] == MegatronShard(tokenized / "a_text_document").num_tokens


def test_file_list_per_corpus_epochs(tokenized, tmp_path):
    # Two corpora over the same shards; each corpus keeps its own epochs (not the last one's).
    out = tmp_path / "list.txt"
    rc = script.main(["--quiet", "file-list", "--corpus", f"web={tokenized}", "--corpus", f"books={tokenized}",
                      "--epochs", "web=2", "--epochs", "books=0.5", "--output", str(out)])
    assert rc == 0
    rows = [line.split() for line in out.read_text().splitlines()]
    assert len(rows) == 6
    for weight, prefix, corpus in rows:
        tokens = MegatronShard(prefix).num_tokens
        assert float(weight) == pytest.approx(tokens * {"web": 2.0, "books": 0.5}[corpus])


def test_file_list_rejects_epochs_for_unknown_corpus(tokenized, capsys):
    assert script.main(["--quiet", "file-list", "--corpus", f"web={tokenized}", "--epochs", "wbe=2"]) == 1
    assert "wbe" in capsys.readouterr().err


def test_tokenize_bad_json_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    rc = script.main(["--quiet", "tokenize", str(bad), "--output-dir", str(tmp_path / "o"),
                      "--tokenizer", str(TOKENIZER_DIR), "--tokenizer-backend", "hf"])
    assert rc == 1 and "bad.jsonl:2" in capsys.readouterr().err


def test_tokenize_with_sentencepiece_default_backend(raw, tmp_path):
    import sentencepiece

    (tmp_path / "train.txt").write_text("\n".join(DOCS * 30), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.Train(input=str(tmp_path / "train.txt"), model_prefix=str(tmp_path / "sp"),
                                             vocab_size=48, model_type="bpe", minloglevel=2)
    rc = script.main(["--quiet", "tokenize", str(raw / "a.jsonl"), "--output-dir", str(tmp_path / "o"),
                      "--tokenizer", str(tmp_path / "sp.model")])
    assert rc == 0
    shard = MegatronShard(tmp_path / "o" / "a_text_document")
    sp = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "sp.model"))
    assert [shard[i].tolist() for i in range(len(shard))] == [[*sp.encode(d), sp.eos_id()] for d in DOCS]


def test_file_list_feeds_the_loader(tokenized, tmp_path, monkeypatch):
    from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader

    monkeypatch.chdir(tokenized.parent)  # a relative --corpus dir still yields usable (absolute) prefixes
    out = tmp_path / "list.txt"
    assert script.main(["--quiet", "file-list", "--corpus", f"web={tokenized.name}", "--output", str(out)]) == 0
    loader = BlendCorpusLoader(file_list=out, seq_len=4, local_batch_size=2, dp_rank=0, dp_world_size=1,
                               split="100,0,0", cache_dir=tmp_path / "cache")
    inputs, labels = next(iter(loader))
    assert inputs["input"].shape == (2, 4) and loader.corpus_names == ["web"]
