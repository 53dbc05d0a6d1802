"""Tokenizer builders for the TrainSpec slot ``build_tokenizer_fn``.

``model.tokenizer_backend`` picks SentencePiece (:mod:`titan_recipes.tokenizer.sentencepiece`) or HuggingFace
``tokenizers`` assets (``tokenizer.json`` + ``tokenizer_config.json``) in the directory
``model.hf_assets_path``, loaded by torchtitan's ``HuggingFaceTokenizer``. A data source may say where
its tokenizer is instead (its descriptor's ``tokenizer_path``: ``[mosaic_tokenizer] name`` for mds), and
how to build it (its ``build_tokenizer``: ``transformers.AutoTokenizer`` for mds, :mod:`.auto`). A
missing or incomplete directory is a clear error naming the setting, instead of torchtitan's warning
followed by a failure deep inside the tokenizer.
"""

from __future__ import annotations

from typing import Any


from ..errors import ConfigError
from .assets import HF_TOKENIZER_FILES, check_hf_assets_path


def _override(job_config: Any) -> tuple[Any, tuple[str | None, str] | None]:
    """The selected data source (None for scripts that pass only [model]) and its tokenizer override.
    Every source section is validated first, so a section set for a source that is not selected is an
    error here too."""
    from ..data.registry import find_source, validate_sections

    dataset = getattr(getattr(job_config, "training", None), "dataset", None)
    if dataset is not None:  # a full job config (scripts may pass only [model])
        validate_sections(job_config)
    source = None if dataset is None else find_source(dataset)
    return source, None if source is None else source.tokenizer_override(job_config)


def tokenizer_path(job_config: Any) -> tuple[str | None, str]:
    """Where the run's tokenizer is, and the setting that says so: the selected data source's override
    when it has one (and it is set), else ``model.hf_assets_path``."""
    _, override = _override(job_config)
    if override is not None:
        return override
    return getattr(job_config.model, "hf_assets_path", None), "model.hf_assets_path"


def build_tokenizer(job_config: Any):
    """The TrainSpec's ``build_tokenizer_fn``. With a source override and a source ``build_tokenizer``,
    that builder (whatever ``model.tokenizer_backend`` says); otherwise routes on
    ``model.tokenizer_backend`` (sp or hf) and reads the tokenizer at :func:`tokenizer_path`."""
    from .sentencepiece import build_tokenizer_for_backend

    source, override = _override(job_config)
    builder = None if override is None else source.tokenizer_builder()
    if builder is not None:
        return builder(job_config)
    path, setting = override or (getattr(job_config.model, "hf_assets_path", None), "model.hf_assets_path")
    return build_tokenizer_for_backend(job_config.model.tokenizer_backend, path, setting)


def check_vocab_size(tokenizer: Any, vocab_size: int | None, job_config: Any) -> None:
    """ConfigError when the run's tokenizer has more tokens than the model's embedding (``vocab_size``):
    its ids would index past it. Called by the Trainer once model and tokenizer exist."""
    if tokenizer is None or vocab_size is None:
        return
    n = tokenizer.get_vocab_size()
    if n > vocab_size:
        path, setting = tokenizer_path(job_config)
        raise ConfigError(
            f"The tokenizer at {setting} = '{path}' has {n} tokens but model flavor "
            f"'{job_config.model.flavor}' has vocab_size {vocab_size}: token ids would index "
            f"past the embedding. Use a tokenizer with at most {vocab_size} tokens or another flavor."
        )


__all__ = ["HF_TOKENIZER_FILES", "build_tokenizer", "check_vocab_size", "check_hf_assets_path", "tokenizer_path"]
