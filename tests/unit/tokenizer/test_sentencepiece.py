"""SentencePiece adapter and the model.tokenizer_backend router, with tiny models trained in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.components.tokenizer import HuggingFaceTokenizer

from titan_recipes.errors import ConfigError
from titan_recipes.tokenizer.sentencepiece import (
    TOKENIZER_BACKENDS,
    SentencePieceTokenizer,
    build_tokenizer_for_backend,
    canonical_backend,
)

HF_DIR = Path(__file__).resolve().parents[3] / "assets" / "tokenizers" / "shakespeare-bpe-2048"
TEXT = [
    "To be, or not to be, that is the question.",
    "Now is the winter of our discontent made glorious summer.",
    "But soft, what light through yonder window breaks?",
    "All the world's a stage, and all the men and women merely players.",
] * 20


def _train(directory: Path, **extra) -> Path:
    import sentencepiece

    corpus = directory / "corpus.txt"
    corpus.write_text("\n".join(TEXT), encoding="utf-8")
    prefix = directory / "tokenizer"
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(prefix), vocab_size=64, model_type="bpe",
        character_coverage=1.0, minloglevel=2, **extra,
    )
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="module")
def sp_model_with_pad(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("sp_pad"), pad_id=3)


def test_special_ids_and_vocab(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    assert tok.get_vocab_size() == tok.n_words == tok.vocab_size == 64
    # SentencePiece's defaults: unk 0, bos 1, eos 2, no pad piece (-1).
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, -1)


def test_pad_id_when_the_model_has_one(sp_model_with_pad):
    assert SentencePieceTokenizer(sp_model_with_pad).pad_id == 3


def test_encode_decode_round_trip_and_bos_eos(sp_model):
    tok = SentencePieceTokenizer(sp_model)
    text = "To be, or not to be."
    plain = tok.encode(text)
    assert plain and all(0 <= i < 64 for i in plain)
    assert tok.decode(plain) == text
    assert tok.encode(text, bos=True, eos=True) == [1, *plain, 2]
    assert tok.encode(text, add_bos=True, add_eos=False) == [1, *plain]  # torchtitan's kwargs
    assert tok.decode([1, *plain, 2]) == text
    with pytest.raises(ValueError, match="disagree"):
        tok.encode(text, bos=True, add_bos=False)


@pytest.mark.parametrize("name", ["sptoken", "sentencepiece", "sp", "SPM", None])
def test_sentencepiece_names(name, sp_model, tmp_path):
    assert canonical_backend(name) == "sp"
    assert isinstance(build_tokenizer_for_backend(name, sp_model), SentencePieceTokenizer)
    (tmp_path / "tokenizer.model").write_bytes(sp_model.read_bytes())
    assert isinstance(build_tokenizer_for_backend(name, tmp_path), SentencePieceTokenizer)


@pytest.mark.parametrize("name", ["hf", "HuggingFace"])
def test_huggingface_names(name):
    assert isinstance(build_tokenizer_for_backend(name, HF_DIR), HuggingFaceTokenizer)


def test_tiktoken_says_what_to_use_instead():
    with pytest.raises(ConfigError, match="tiktoken.*not supported.*tokenizer_backend = 'hf'"):
        canonical_backend("tiktoken")


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ConfigError, match="'bpe' is not a known") as excinfo:
        canonical_backend("bpe")
    assert all(name in str(excinfo.value) for name in TOKENIZER_BACKENDS)


def test_sp_backend_on_hf_directory_names_the_setting():
    with pytest.raises(ConfigError, match="model.hf_assets_path.*without tokenizer.model"):
        build_tokenizer_for_backend("sp", HF_DIR)


def test_not_a_model_file(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="is not a SentencePiece model"):
        SentencePieceTokenizer(bad)
