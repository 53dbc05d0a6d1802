"""titan_recipes.tokenizer.auto: real ``transformers.AutoTokenizer`` on local files only.

Tokenizer directories are made here: one saved by ``save_pretrained`` from the committed BPE tokenizer,
one holding only a SentencePiece ``tokenizer.model`` (trained in the test) plus ``tokenizer_config.json``,
and a HuggingFace hub cache laid out as huggingface_hub writes it (``models--org--name/refs/main``,
``snapshots/<sha>/``) under ``HF_HOME``. Loading never touches the network: ``socket.connect`` raises.
"""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.components.tokenizer import HuggingFaceTokenizer

from titan_recipes.errors import ConfigError
from titan_recipes.tokenizer.auto import TransformersTokenizer, build_auto_tokenizer, hf_hub_cache, resolve_tokenizer_dir

REPO = Path(__file__).resolve().parents[3]
BPE_DIR = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"
SHAKESPEARE = REPO / "assets" / "data" / "tinyshakespeare.txt"
SHA = "0123456789abcdef0123456789abcdef01234567"
TEXTS = [
    "To be, or not to be, that is the question:",
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "",
    "Now is the winter of our discontent 1592.",
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails the test: tokenizers are read from local files only."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the code must not rely on it


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory) -> Path:
    """The committed tokenizer as ``save_pretrained`` writes it (what llm-foundry users bring)."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("saved")
    AutoTokenizer.from_pretrained(str(BPE_DIR), local_files_only=True).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    """Only ``tokenizer.model`` (SentencePiece BPE, vocab 400, trained on 20 KB of Shakespeare) and
    ``tokenizer_config.json`` naming LlamaTokenizer. Trained as Llama's model was (identity normalization,
    whitespace kept, byte fallback, digits split): transformers' LlamaTokenizer converter rebuilds
    exactly that. (A model with SentencePiece's default nmt_nfkc normalization, which folds newlines
    and repeated spaces, gets other ids for such text from the converted tokenizer.)"""
    import sentencepiece

    work = tmp_path_factory.mktemp("sp_train")
    corpus = work / "corpus.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(work / "sp"), vocab_size=400, model_type="bpe",
        character_coverage=1.0, minloglevel=2, normalization_rule_name="identity", remove_extra_whitespaces=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
    )
    out = tmp_path_factory.mktemp("sp_dir")
    shutil.copy(work / "sp.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}), encoding="utf-8")
    return out


def make_hf_cache(home: Path, repo: str, files_from: Path, ref: str = "main") -> Path:
    """``home/hub/models--<org>--<name>`` as huggingface_hub lays it out; returns the snapshot dir."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / SHA
    shutil.copytree(files_from, snapshot)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / ref).write_text(SHA, encoding="utf-8")
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch, saved_dir) -> Path:
    home = tmp_path / "hf_home"
    make_hf_cache(home, "acme/shakespeare-bpe", saved_dir)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


# -- local directories ----------------------------------------------------------------------------


def test_saved_directory_encodes_like_torchtitans_hf_tokenizer(saved_dir):
    """Same ids, BOS and EOS as the loader path of model.hf_assets_path (torchtitan's HuggingFaceTokenizer),
    so data converted with one and trained with the other agree."""
    ours = build_auto_tokenizer(str(saved_dir), setting="mosaic_tokenizer.name")
    theirs = HuggingFaceTokenizer(str(BPE_DIR))
    assert isinstance(ours, TransformersTokenizer) and ours.source_dir == saved_dir
    assert (ours.bos_id, ours.eos_id, ours.get_vocab_size()) == (theirs.bos_id, theirs.eos_id, 2048)
    for text in TEXTS:
        for bos, eos in ((True, True), (False, False), (True, False), (False, True)):
            assert ours.encode(text, add_bos=bos, add_eos=eos) == theirs.encode(text, add_bos=bos, add_eos=eos)
        plain = ours.encode(text, add_bos=False, add_eos=False)
        assert ours.decode(plain) == text
    assert ours.encode(TEXTS[0]) == [ours.bos_id, *ours.encode(TEXTS[0], add_bos=False, add_eos=False), ours.eos_id]


def test_encode_batch_equals_encode(saved_dir, sp_dir):
    for directory in (saved_dir, sp_dir):
        tokenizer = build_auto_tokenizer(str(directory))
        for bos, eos in ((True, True), (False, True)):
            assert tokenizer.encode_batch(TEXTS, add_bos=bos, add_eos=eos) == [
                tokenizer.encode(t, add_bos=bos, add_eos=eos) for t in TEXTS
            ]
        assert tokenizer.encode_batch([]) == []


def test_bos_is_added_once_when_the_tokenizers_template_adds_it(tmp_path, saved_dir):
    """A tokenizer whose post-processor prepends BOS (as Llama's does) still gets exactly one."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    out = tmp_path / "with_template"
    shutil.copytree(saved_dir, out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    bos = raw.token_to_id("<|begin_of_text|>")
    raw.post_processor = TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", bos)])
    raw.save(str(out / "tokenizer.json"))
    tokenizer = build_auto_tokenizer(str(out))
    text = TEXTS[1]
    assert tokenizer.tokenizer(text)["input_ids"][0] == bos  # the template really adds it
    ids = tokenizer.encode(text)
    assert ids[0] == bos and ids.count(bos) == 1 and ids[-1] == tokenizer.eos_id
    assert tokenizer.encode_batch([text]) == [ids]
    assert tokenizer.encode(text, add_bos=False, add_eos=False).count(bos) == 0


def test_sentencepiece_only_directory_loads_with_the_models_ids(sp_dir):
    import sentencepiece

    assert sorted(p.name for p in sp_dir.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    tokenizer = build_auto_tokenizer(str(sp_dir))
    assert type(tokenizer.tokenizer).__name__ == "LlamaTokenizer"
    assert tokenizer.get_vocab_size() == sp.GetPieceSize() == 400
    assert (tokenizer.bos_id, tokenizer.eos_id) == (sp.bos_id(), sp.eos_id())
    for text in [*TEXTS, "First Citizen:\nWe are  accounted poor, Zürich 1592!"]:
        assert tokenizer.encode(text, add_bos=False, add_eos=False) == sp.EncodeAsIds(text)
        assert tokenizer.encode(text) == [sp.bos_id(), *sp.EncodeAsIds(text), sp.eos_id()]
        assert tokenizer.decode(sp.EncodeAsIds(text)) == text


def test_added_tokens_count_in_the_vocab_size(tmp_path, saved_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(saved_dir), local_files_only=True)
    hf.add_tokens(["<|tool_call|>", "<|tool_result|>"], special_tokens=True)
    hf.save_pretrained(str(tmp_path))
    tokenizer = build_auto_tokenizer(str(tmp_path))
    assert tokenizer.get_vocab_size() == 2050
    assert max(tokenizer.encode("<|tool_result|>", add_bos=False, add_eos=False)) == 2049


def test_kwargs_pass_through_to_from_pretrained(saved_dir):
    tokenizer = build_auto_tokenizer(str(saved_dir), {"model_max_length": 4096, "padding_side": "left"})
    assert (tokenizer.tokenizer.model_max_length, tokenizer.tokenizer.padding_side) == (4096, "left")
    with pytest.raises(ConfigError, match=r"local_files_only must be true.*hf download"):
        build_auto_tokenizer(str(saved_dir), {"local_files_only": False}, "mosaic_tokenizer.name")


@pytest.mark.parametrize(
    "files, match",
    [
        ({}, r"found nothing; needed tokenizer.json"),
        ({"tokenizer_config.json": "{}"}, r"found \['tokenizer_config.json'\]; needed tokenizer.json"),
        ({"tokenizer.model": ""}, r"found \['tokenizer.model'\].*tokenizer_config.json"),
    ],
    ids=["empty", "config_only", "model_without_config"],
)
def test_directory_without_tokenizer_files_names_found_and_needed(tmp_path, files, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"mosaic_tokenizer.name = '{tmp_path}'.*{match}"):
        build_auto_tokenizer(str(tmp_path), setting="mosaic_tokenizer.name")


def test_missing_directory_and_file_are_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"mosaic_tokenizer.name = '.*/absent': no such directory"):
        resolve_tokenizer_dir(str(tmp_path / "absent"), "mosaic_tokenizer.name")
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file, not a tokenizer directory"):
        resolve_tokenizer_dir(str(tmp_path / "tokenizer.json"), "mosaic_tokenizer.name")


# -- hub names, from the local cache --------------------------------------------------------------


def test_hub_name_resolves_to_the_cached_snapshot(hf_home, saved_dir):
    snapshot = hf_home / "hub" / "models--acme--shakespeare-bpe" / "snapshots" / SHA
    assert hf_hub_cache() == hf_home / "hub"
    assert resolve_tokenizer_dir("acme/shakespeare-bpe", "mosaic_tokenizer.name") == snapshot
    tokenizer = build_auto_tokenizer("acme/shakespeare-bpe", {"model_max_length": 512}, "mosaic_tokenizer.name")
    assert tokenizer.source_dir == snapshot and tokenizer.name == "acme/shakespeare-bpe"
    assert tokenizer.encode(TEXTS[0]) == build_auto_tokenizer(str(saved_dir)).encode(TEXTS[0])
    assert tokenizer.tokenizer.model_max_length == 512


def test_hub_revision_and_hf_hub_cache(tmp_path, monkeypatch, saved_dir):
    """``kwargs.revision`` picks refs/<revision> (or a commit hash); HF_HUB_CACHE wins over HF_HOME."""
    cache_home = tmp_path / "elsewhere"
    make_hf_cache(cache_home, "acme/tok", saved_dir, ref="v1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_home / "hub"))
    snapshot = cache_home / "hub" / "models--acme--tok" / "snapshots" / SHA
    assert build_auto_tokenizer("acme/tok", {"revision": "v1"}).source_dir == snapshot
    assert resolve_tokenizer_dir("acme/tok", "x", revision=SHA) == snapshot
    with pytest.raises(ConfigError, match=r"revision 'main' of the HuggingFace repo 'acme/tok' is not in the local cache"):
        resolve_tokenizer_dir("acme/tok", "mosaic_tokenizer.name")


def test_uncached_hub_name_says_how_to_download_it(hf_home):
    with pytest.raises(ConfigError) as excinfo:
        build_auto_tokenizer("meta-llama/Llama-3.2-1B", setting="mosaic_tokenizer.name")
    message = str(excinfo.value)
    assert "mosaic_tokenizer.name = 'meta-llama/Llama-3.2-1B'" in message
    assert str(hf_home / "hub") in message
    assert "`hf download meta-llama/Llama-3.2-1B`" in message
    assert "huggingface-cli download meta-llama/Llama-3.2-1B" in message
    assert "login node" in message and "same HF_HOME" in message and "local directory" in message
