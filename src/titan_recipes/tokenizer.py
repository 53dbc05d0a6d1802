"""Tokenizer builders for the TrainSpec slot ``build_tokenizer_fn``.

``model.tokenizer_backend`` picks SentencePiece (:mod:`titan_recipes.tokenizers_sp`) or HuggingFace ``tokenizers`` assets (``tokenizer.json`` + ``tokenizer_config.json``) in the
directory ``model.hf_assets_path``, loaded by torchtitan's ``HuggingFaceTokenizer``. A missing or
incomplete directory is a clear error naming the setting, instead of torchtitan's warning followed by
a failure deep inside the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from torchtitan.components.tokenizer import HuggingFaceTokenizer

from .config import ConfigError

HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def check_hf_assets_path(path: str) -> Path:
    """The tokenizer directory, or ConfigError saying what is missing and which setting to fix."""
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(
            f"Tokenizer directory not found: model.hf_assets_path = '{path}'. Point it at a directory "
            f"containing tokenizer.json (e.g. assets/tokenizers/shakespeare-bpe-2048, or one made by "
            f"scripts/train_tokenizer.py); relative paths resolve from the working directory."
        )
    if not any((directory / name).is_file() for name in HF_TOKENIZER_FILES):
        raise ConfigError(
            f"model.hf_assets_path = '{path}' contains none of {list(HF_TOKENIZER_FILES)}; it is not a "
            f"HuggingFace tokenizer directory."
        )
    return directory


def build_tokenizer(job_config):
    """The TrainSpec's ``build_tokenizer_fn``: routes on ``model.tokenizer_backend`` (sp or hf)."""
    from .tokenizers_sp import build_tokenizer_for_backend

    return build_tokenizer_for_backend(job_config.model.tokenizer_backend, job_config.model.hf_assets_path)
