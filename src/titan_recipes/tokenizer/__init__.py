"""Tokenizer builders for the TrainSpec slot ``build_tokenizer_fn``.

``model.tokenizer_backend`` picks SentencePiece (:mod:`titan_recipes.tokenizer.sentencepiece`) or HuggingFace
``tokenizers`` assets (``tokenizer.json`` + ``tokenizer_config.json``) in the directory
``model.hf_assets_path``, loaded by torchtitan's ``HuggingFaceTokenizer``. A data source may say where
its tokenizer is instead (its descriptor's ``tokenizer_path``: ``[mosaic_tokenizer] name`` for mds). A
missing or incomplete directory is a clear error naming the setting, instead of torchtitan's warning
followed by a failure deep inside the tokenizer.
"""

from __future__ import annotations

from typing import Any


from .assets import HF_TOKENIZER_FILES, check_hf_assets_path


def tokenizer_path(job_config: Any) -> tuple[str | None, str]:
    """Where the run's tokenizer is, and the setting that says so: the selected data source's override
    when it has one (and it is set), else ``model.hf_assets_path``. Every source section is validated
    first, so a section set for a source that is not selected is an error here too."""
    from ..data.registry import find_source, validate_sections

    dataset = getattr(getattr(job_config, "training", None), "dataset", None)
    if dataset is not None:  # a full job config (scripts may pass only [model])
        validate_sections(job_config)
    source = None if dataset is None else find_source(dataset)
    override = None if source is None else source.tokenizer_override(job_config)
    if override is not None:
        return override
    return getattr(job_config.model, "hf_assets_path", None), "model.hf_assets_path"


def build_tokenizer(job_config: Any):
    """The TrainSpec's ``build_tokenizer_fn``: routes on ``model.tokenizer_backend`` (sp or hf) and
    reads the tokenizer at :func:`tokenizer_path`."""
    from .sentencepiece import build_tokenizer_for_backend

    path, setting = tokenizer_path(job_config)
    return build_tokenizer_for_backend(job_config.model.tokenizer_backend, path, setting)


__all__ = ["HF_TOKENIZER_FILES", "build_tokenizer", "check_hf_assets_path", "tokenizer_path"]
