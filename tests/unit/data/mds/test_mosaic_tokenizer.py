"""``[mosaic_tokenizer]``: the MDS source builds the run's tokenizer with transformers.AutoTokenizer
(``name`` = hub name from the local cache or a directory, ``kwargs`` passed through), whatever
``model.tokenizer_backend`` says, and the Trainer's vocabulary check still refuses a tokenizer larger than
the model's embedding."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from configs import job_config

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)

from titan_recipes.data.mds.config import MosaicTokenizer
from titan_recipes.errors import ConfigError
from titan_recipes.tokenizer import build_tokenizer, check_vocab_size, tokenizer_path
from titan_recipes.tokenizer.auto import TransformersTokenizer

REPO = Path(__file__).resolve().parents[4]
BPE_DIR = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"
SHA = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory) -> Path:
    """The committed tokenizer plus two added special tokens: 2050 tokens."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("added_tokens")
    hf = AutoTokenizer.from_pretrained(str(BPE_DIR), local_files_only=True)
    hf.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    hf.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory) -> Path:
    """Only a SentencePiece tokenizer.model (trained here, vocab 400) and a tokenizer_config.json."""
    import sentencepiece

    work = tmp_path_factory.mktemp("sp")
    corpus = work / "corpus.txt"
    corpus.write_text((REPO / "assets" / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:20_000])
    sentencepiece.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(work / "sp"), vocab_size=400, model_type="bpe", character_coverage=1.0,
        minloglevel=2, normalization_rule_name="identity", remove_extra_whitespaces=False, byte_fallback=True,
    )
    out = tmp_path_factory.mktemp("sp_dir")
    shutil.copy(work / "sp.model", out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
    return out


def mds_job(tmp_path, name="", kwargs=None, backend="hf", hf_assets_path=None, seq_len=256, dataset="mds"):
    return job_config(
        model={"hf_assets_path": hf_assets_path or str(tmp_path / "not_used"), "tokenizer_backend": backend},
        training={"dataset": dataset, "seq_len": seq_len},
        mosaic_dataloader={"dataset": {"local": str(tmp_path)}},
        mosaic_tokenizer=MosaicTokenizer(name=name, kwargs=kwargs or {}),
    )


@pytest.mark.parametrize("backend", ["hf", "sptoken"])
def test_name_is_loaded_with_auto_tokenizer_whatever_the_backend(tmp_path, sp_dir, backend):
    for directory, size in ((BPE_DIR, 2048), (sp_dir, 400)):
        tokenizer = build_tokenizer(mds_job(tmp_path, name=str(directory), backend=backend))
        assert isinstance(tokenizer, TransformersTokenizer)
        assert tokenizer.get_vocab_size() == size and tokenizer.source_dir == directory


def test_kwargs_are_passed_through(tmp_path):
    job = mds_job(tmp_path, name=str(BPE_DIR), kwargs={"model_max_length": 8192, "padding_side": "left",
                                                       "truncation_side": "left"})
    hf = build_tokenizer(job).tokenizer
    assert (hf.model_max_length, hf.padding_side, hf.truncation_side) == (8192, "left", "left")


def test_hub_name_from_the_local_cache(tmp_path, monkeypatch):
    storage = tmp_path / "hf" / "hub" / "models--acme--bard"
    shutil.copytree(BPE_DIR, storage / "snapshots" / SHA)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    job = mds_job(tmp_path, name="acme/bard")
    assert tokenizer_path(job) == ("acme/bard", "mosaic_tokenizer.name")
    tokenizer = build_tokenizer(job)
    assert tokenizer.source_dir == storage / "snapshots" / SHA and tokenizer.get_vocab_size() == 2048
    with pytest.raises(ConfigError, match=r"mosaic_tokenizer.name = 'acme/other'.*`hf download acme/other`"):
        build_tokenizer(mds_job(tmp_path, name="acme/other"))


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("", {"padding_side": "left"}, r"mosaic_tokenizer.kwargs = .* mosaic_tokenizer.name is empty"),
        ("bpe", {"model_max_length": 128}, r"model_max_length = 128 is below training.seq_len = 256"),
        ("bpe", {"local_files_only": False}, r"local_files_only = False: tokenizers are never downloaded"),
        ("no_such_dir/", {}, r"mosaic_tokenizer.name = 'no_such_dir/'"),
        ("bpe:tinyshakespeare", {}, r"\[mosaic_tokenizer\] is set but training.dataset = 'tinyshakespeare'"),
    ],
    ids=["kwargs_without_name", "too_short", "download_asked", "missing_dir", "not_mds"],
)
def test_config_errors_name_the_key(tmp_path, name, kwargs, match):
    name, _, dataset = name.partition(":")
    job = mds_job(tmp_path, name=str(BPE_DIR) if name == "bpe" else name, kwargs=kwargs, dataset=dataset or "mds")
    with pytest.raises(ConfigError, match=match):
        build_tokenizer(job)


def test_any_kwargs_parse_from_toml(tmp_path):
    from torchtitan.config import ConfigManager

    toml = tmp_path / "train.toml"
    toml.write_text(
        '[job]\ncustom_config_module = "titan_recipes.config"\n[training]\ndataset = "mds"\n'
        '[mosaic_tokenizer]\nname = "meta-llama/Llama-3.2-1B"\n'
        'kwargs = { model_max_length = 131072, padding_side = "left", revision = "main" }\n'
    )
    config = ConfigManager().parse_args(["--job.config_file", str(toml)])
    assert config.mosaic_tokenizer.kwargs == {"model_max_length": 131072, "padding_side": "left", "revision": "main"}


def _check_vocab(job, model_vocab: int) -> None:
    """The Trainer's own check (RecipeTrainer._check_vocab calls it), on the tokenizer the run would build."""
    check_vocab_size(build_tokenizer(job), model_vocab, job)


def test_vocabulary_check_refuses_a_mosaic_tokenizer_larger_than_the_model(tmp_path, big_dir):
    _check_vocab(mds_job(tmp_path, name=str(big_dir)), 2050)  # fits exactly
    with pytest.raises(ConfigError, match=rf"mosaic_tokenizer.name = '{big_dir}' has 2050 tokens but model "
                                          r"flavor '.*' has vocab_size 2048: token ids would index past"):
        _check_vocab(mds_job(tmp_path, name=str(big_dir)), 2048)
    # exactly as with model.hf_assets_path (no [mosaic_tokenizer])
    with pytest.raises(ConfigError, match=rf"model.hf_assets_path = '{BPE_DIR}' has 2048 tokens but model "
                                          r"flavor '.*' has vocab_size 2000"):
        _check_vocab(mds_job(tmp_path, hf_assets_path=str(BPE_DIR)), 2000)
