"""Keys titan-recipes adds to torchtitan's ``[model]`` table."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass


@dataclass
class Model:
    """Keys titan-recipes adds to torchtitan's ``[model]`` table (merged with torchtitan's fields)."""

    tokenizer_backend: str = "sptoken"
    """Which tokenizer ``model.hf_assets_path`` holds: ``sptoken``/``sentencepiece``/``sp``/``spm`` (the
    default, as in the BlendCorpus seed: a SentencePiece ``.model`` file or a directory with
    ``tokenizer.model``) or ``hf``/``huggingface`` (a directory with ``tokenizer.json``, torchtitan's
    format). ``tiktoken`` and unknown names are errors that list the valid values."""
