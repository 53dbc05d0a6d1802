"""SentencePiece tokenizers for torchtitan, and the ``model.tokenizer_backend`` router.

BlendCorpus users tokenize with SentencePiece models (``tokenizer.model``). :class:`SentencePieceTokenizer`
gives such a model the interface torchtitan's Trainer and our loaders use: ``get_vocab_size()``,
``n_words``, ``bos_id``/``eos_id``/``pad_id``/``unk_id`` (-1 when the model has no such piece, as
SentencePiece reports it), ``encode(text, bos=, eos=)`` (torchtitan's ``add_bos=``/``add_eos=`` are
accepted too) and ``decode(ids)``.

:func:`build_tokenizer_for_backend` routes on ``model.tokenizer_backend``:

========================================  ==========================================================
``sptoken`` | ``sentencepiece`` | ``sp``   SentencePiece model: ``model.hf_assets_path`` is the
| ``spm`` (default)                         ``.model`` file or a directory holding ``tokenizer.model``
``hf`` | ``huggingface``                    torchtitan's HuggingFaceTokenizer (``tokenizer.json`` dir)
``tiktoken``                                not supported: a ConfigError says what to use instead
========================================  ==========================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchtitan.components.tokenizer import BaseTokenizer

from ..errors import ConfigError

SP_BACKENDS = ("sptoken", "sentencepiece", "sp", "spm")
HF_BACKENDS = ("hf", "huggingface")
TIKTOKEN_BACKENDS = ("tiktoken",)
TOKENIZER_BACKENDS = (*SP_BACKENDS, *HF_BACKENDS, *TIKTOKEN_BACKENDS)
"""Every accepted value of ``model.tokenizer_backend`` (case-insensitive)."""

DEFAULT_BACKEND = "sptoken"
SP_MODEL_FILE = "tokenizer.model"


class SentencePieceTokenizer(BaseTokenizer):
    """A SentencePiece model with the attributes torchtitan expects."""

    def __init__(self, model_path: str | Path):
        import sentencepiece

        path = Path(model_path)
        if not path.is_file():
            raise ConfigError(
                f"SentencePiece model not found: {path}. Point model.hf_assets_path at a .model file or a "
                f"directory containing {SP_MODEL_FILE}, or set model.tokenizer_backend = 'hf' for a "
                f"HuggingFace tokenizer.json directory."
            )
        super().__init__()
        self.model_path = path
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ConfigError(f"{path} is not a SentencePiece model: {e}") from None
        self.n_words: int = self.sp.GetPieceSize()
        self.bos_id: int = self.sp.bos_id()
        self.eos_id: int = self.sp.eos_id()
        self.pad_id: int = self.sp.pad_id()
        self.unk_id: int = self.sp.unk_id()

    @property
    def vocab_size(self) -> int:
        return self.n_words

    def get_vocab_size(self) -> int:
        return self.n_words

    def encode(
        self,
        text: str,
        bos: bool | None = None,
        eos: bool | None = None,
        *,
        add_bos: bool | None = None,
        add_eos: bool | None = None,
    ) -> list[int]:
        """Token ids of ``text``; ``bos``/``eos`` (or torchtitan's ``add_bos``/``add_eos``) wrap it.

        Both default to False. Asking for a BOS/EOS the model does not have (id -1) is an error rather
        than a silently missing token.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() expects a str, got {type(text).__name__}")
        want_bos = _either("bos", bos, "add_bos", add_bos)
        want_eos = _either("eos", eos, "add_eos", add_eos)
        ids: list[int] = self.sp.EncodeAsIds(text)
        if want_bos:
            if self.bos_id < 0:
                raise ValueError(f"{self.model_path} has no BOS piece (bos_id = -1); encode with bos=False.")
            ids = [self.bos_id, *ids]
        if want_eos:
            if self.eos_id < 0:
                raise ValueError(f"{self.model_path} has no EOS piece (eos_id = -1); encode with eos=False.")
            ids = [*ids, self.eos_id]
        return ids

    def decode(self, ids: Any, **_: Any) -> str:
        """Text of ``ids`` (a list, or anything with ``tolist()``); control pieces decode to nothing."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.sp.DecodeIds([int(i) for i in ids])


def _either(name: str, value: bool | None, alias: str, alias_value: bool | None) -> bool:
    if value is not None and alias_value is not None and bool(value) != bool(alias_value):
        raise ValueError(f"encode(): {name}={value} and {alias}={alias_value} disagree; pass one of them.")
    chosen = value if value is not None else alias_value
    return bool(chosen)


def canonical_backend(name: str | None) -> str:
    """``"sp"``, ``"hf"`` or ConfigError (tiktoken, or an unknown name listing the valid ones)."""
    key = (name or DEFAULT_BACKEND).strip().lower()
    if key in SP_BACKENDS:
        return "sp"
    if key in HF_BACKENDS:
        return "hf"
    if key in TIKTOKEN_BACKENDS:
        raise ConfigError(
            "model.tokenizer_backend = 'tiktoken' is not supported by titan-recipes. Convert the "
            "tokenizer to a HuggingFace tokenizer.json directory (e.g. with transformers' "
            "PreTrainedTokenizerFast.save_pretrained) and set model.tokenizer_backend = 'hf', or use a "
            "SentencePiece model with model.tokenizer_backend = 'sptoken'."
        )
    raise ConfigError(
        f"model.tokenizer_backend = '{name}' is not a known tokenizer backend. Valid values: "
        f"{', '.join(TOKENIZER_BACKENDS)} (default '{DEFAULT_BACKEND}')."
    )


def resolve_sp_model(path: str | Path, setting: str = "model.hf_assets_path") -> Path:
    """The ``.model`` file named by ``setting`` (a file, or a directory with tokenizer.model)."""
    p = Path(path)
    if p.is_dir():
        candidate = p / SP_MODEL_FILE
        if not candidate.is_file():
            raise ConfigError(
                f"{setting} = '{path}' is a directory without {SP_MODEL_FILE}; "
                f"model.tokenizer_backend selects SentencePiece. Put the .model file there (or point "
                f"{setting} at it), or set model.tokenizer_backend = 'hf' for tokenizer.json."
            )
        return candidate
    if not p.is_file():
        raise ConfigError(
            f"Tokenizer not found: {setting} = '{path}'. For the SentencePiece backend point it "
            f"at a .model file or a directory containing {SP_MODEL_FILE}."
        )
    return p


def build_tokenizer_for_backend(
    backend: str | None, path: str | Path, setting: str = "model.hf_assets_path"
) -> BaseTokenizer:
    """The tokenizer for ``model.tokenizer_backend = backend`` at ``path``, the value of ``setting``."""
    kind = canonical_backend(backend)
    if kind == "sp":
        return SentencePieceTokenizer(resolve_sp_model(path, setting))
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from .assets import check_hf_assets_path

    return HuggingFaceTokenizer(str(check_hf_assets_path(str(path), setting)))
