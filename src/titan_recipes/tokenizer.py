"""Tokenizer builders for the TrainSpec slot ``build_tokenizer_fn``.

``model.tokenizer_backend`` picks SentencePiece (:mod:`titan_recipes.tokenizers_sp`) or HuggingFace ``tokenizers`` assets (``tokenizer.json`` + ``tokenizer_config.json``) in the
directory ``model.hf_assets_path``, loaded by torchtitan's ``HuggingFaceTokenizer``. A missing or
incomplete directory is a clear error naming the setting, instead of torchtitan's warning followed by
a failure deep inside the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError

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


MOSAIC_TOKENIZER_KWARGS = ("model_max_length",)
"""``[mosaic_tokenizer] kwargs`` keys that are honoured; any other key is a ConfigError."""


def tokenizer_path(job_config) -> tuple[str | None, str]:
    """Where the run's tokenizer is, and the setting that says so.

    ``[mosaic_tokenizer] name`` (the Mosaic seed's table), when set, replaces ``model.hf_assets_path``
    for ``training.dataset = "mds"``: a local tokenizer directory (or SentencePiece model) in the
    ``model.tokenizer_backend`` format. Nothing is downloaded from a hub. Its ``kwargs`` accept
    ``model_max_length``, which must be at least ``training.seq_len`` (the samples the data holds).
    """
    mosaic = getattr(job_config, "mosaic_tokenizer", None)
    if mosaic is None or (not mosaic.name and not mosaic.kwargs):
        return getattr(job_config.model, "hf_assets_path", None), "model.hf_assets_path"
    if job_config.training.dataset != "mds":
        raise ConfigError(
            f"[mosaic_tokenizer] is set but training.dataset = '{job_config.training.dataset}'; it configures the "
            f"tokenizer of the Mosaic (mds) loader. Remove it, or use model.hf_assets_path."
        )
    unknown = sorted(set(mosaic.kwargs) - set(MOSAIC_TOKENIZER_KWARGS))
    if unknown:
        raise ConfigError(
            f"mosaic_tokenizer.kwargs {unknown} are not supported (honoured: {list(MOSAIC_TOKENIZER_KWARGS)}): the "
            f"MDS data is tokenized already, so tokenizer options cannot change it."
        )
    max_len = mosaic.kwargs.get("model_max_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len < job_config.training.seq_len):
        raise ConfigError(
            f"mosaic_tokenizer.kwargs.model_max_length = {max_len!r} is below training.seq_len = "
            f"{job_config.training.seq_len}; raise it or train on shorter samples."
        )
    if mosaic.name:
        return mosaic.name, "mosaic_tokenizer.name"
    return getattr(job_config.model, "hf_assets_path", None), "model.hf_assets_path"


def build_tokenizer(job_config):
    """The TrainSpec's ``build_tokenizer_fn``: routes on ``model.tokenizer_backend`` (sp or hf) and
    reads the tokenizer at :func:`tokenizer_path`."""
    from .tokenizers_sp import build_tokenizer_for_backend

    path, setting = tokenizer_path(job_config)
    return build_tokenizer_for_backend(job_config.model.tokenizer_backend, path, setting)
