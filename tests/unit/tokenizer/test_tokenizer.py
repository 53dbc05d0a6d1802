"""check_hf_assets_path / build_tokenizer with the committed tokenizer directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from configs import job_config

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from torchtitan.components.tokenizer import HuggingFaceTokenizer

from titan_recipes.errors import ConfigError
from titan_recipes.tokenizer import build_tokenizer, check_hf_assets_path

TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "assets" / "tokenizers" / "shakespeare-bpe-2048"


def test_missing_directory_names_the_setting(tmp_path):
    missing = tmp_path / "no_tokenizer_here"
    with pytest.raises(ConfigError, match="model.hf_assets_path") as excinfo:
        check_hf_assets_path(str(missing))
    assert str(missing) in str(excinfo.value)


def test_a_file_is_not_a_tokenizer_directory(tmp_path):
    file = tmp_path / "tokenizer.json"
    file.write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="model.hf_assets_path"):
        check_hf_assets_path(str(file))


def test_directory_without_tokenizer_files(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="model.hf_assets_path.*tokenizer.json"):
        check_hf_assets_path(str(tmp_path))


def test_build_tokenizer_reports_the_missing_directory(tmp_path):
    with pytest.raises(ConfigError, match="model.hf_assets_path"):
        build_tokenizer(job_config(model={"hf_assets_path": str(tmp_path / "absent"), "tokenizer_backend": "hf"}))


def test_committed_directory_passes():
    assert check_hf_assets_path(str(TOKENIZER_DIR)) == TOKENIZER_DIR


@pytest.fixture(scope="module")
def built_tokenizer():
    return build_tokenizer(job_config(model={"hf_assets_path": str(TOKENIZER_DIR), "tokenizer_backend": "hf"}))


def test_committed_tokenizer_has_vocab_2048(built_tokenizer):
    assert isinstance(built_tokenizer, HuggingFaceTokenizer)
    assert built_tokenizer.get_vocab_size() == 2048


@pytest.mark.parametrize(
    "text",
    [
        "To be, or not to be, that is the question:",
        "ROMEO:\nBut, soft! what light through yonder window breaks?",
        "Now is the winter of our discontent 1592.",
    ],
)
def test_committed_tokenizer_round_trips_text(built_tokenizer, text):
    ids = built_tokenizer.encode(text, add_bos=False, add_eos=False)
    assert ids and all(0 <= i < 2048 for i in ids)
    assert len(ids) < len(text)  # BPE merges: fewer tokens than characters
    assert built_tokenizer.decode(ids) == text


def test_bos_and_eos_wrap_a_document(built_tokenizer):
    plain = built_tokenizer.encode("Fair is foul.", add_bos=False, add_eos=False)
    wrapped = built_tokenizer.encode("Fair is foul.", add_bos=True, add_eos=True)
    assert built_tokenizer.bos_id is not None and built_tokenizer.eos_id is not None
    assert built_tokenizer.bos_id != built_tokenizer.eos_id
    assert wrapped == [built_tokenizer.bos_id, *plain, built_tokenizer.eos_id]
    assert built_tokenizer.decode(wrapped, skip_special_tokens=True) == "Fair is foul."
