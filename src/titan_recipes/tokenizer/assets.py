"""Checks of a HuggingFace tokenizer directory, shared by the tokenizer router and the SentencePiece adapter."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def check_hf_assets_path(path: str, setting: str = "model.hf_assets_path") -> Path:
    """The tokenizer directory, or ConfigError saying what is missing and which setting to fix."""
    directory = Path(path)
    if not directory.is_dir():
        raise ConfigError(
            f"Tokenizer directory not found: {setting} = '{path}'. Point it at a directory "
            f"containing tokenizer.json (e.g. assets/tokenizers/shakespeare-bpe-2048, or one made by "
            f"scripts/train_tokenizer.py); relative paths resolve from the working directory."
        )
    if not any((directory / name).is_file() for name in HF_TOKENIZER_FILES):
        raise ConfigError(
            f"{setting} = '{path}' contains none of {list(HF_TOKENIZER_FILES)}; it is not a "
            f"HuggingFace tokenizer directory."
        )
    return directory
