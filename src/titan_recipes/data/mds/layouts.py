"""What an MDS sample holds, as the loader reads it: the layouts llm-foundry and streaming's ``MDSWriter`` write.

Accepted (:func:`detect_layout`, per shard, from ``index.json``'s column names and encodings):

* ``tokens`` as ``ndarray`` of any integer dtype, with a fixed shape (``ndarray:int32:2049``, what
  ``scripts/mds_convert.py`` writes) or a per-sample shape (``ndarray:int32``, llm-foundry's
  ``--concat_tokens`` and most ``MDSWriter`` scripts), or with a per-sample dtype (``ndarray``);
* ``tokens`` as ``bytes``: the ids' raw bytes, in ``[mosaic_dataloader.dataset] token_encoding_type``
  (llm-foundry's key and default, ``int64``);
* ``text`` as ``str``: a document, tokenized on the fly with the run's tokenizer (BOS + text + EOS,
  as every converter here does).

A shard with both ``tokens`` and ``text`` is read as tokens (no tokenizer work, and the ids are what
its writer meant). Anything else is a DataError listing the columns found and these layouts.

How samples become ``seq_len + 1`` windows is :mod:`titan_recipes.data.mds.packing`'s business.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import ConfigError, DataError

TOKENS = "tokens"
TEXT = "text"

TOKEN_SETTING = "mosaic_dataloader.dataset.token_encoding_type"
"""The loader's name for the dtype of bytes token columns (the converter's is ``--token-encoding-type``)."""


def accepted_layouts(token_setting: str = TOKEN_SETTING) -> str:
    """The layouts read here, for error messages; ``token_setting`` names the bytes columns' dtype setting."""
    return (
        f"text:str (tokenized with the run's tokenizer), tokens:ndarray:<int dtype> of any length "
        f"(e.g. ndarray:int32, ndarray:uint16:2049), tokens:bytes (ids as raw bytes of {token_setting}, "
        f"default int64, as llm-foundry writes them)"
    )


ACCEPTED_LAYOUTS = accepted_layouts()


def token_dtype(name: str, setting: str = TOKEN_SETTING) -> np.dtype:
    """The numpy integer dtype called ``name`` (llm-foundry's ``token_encoding_type``), or ConfigError."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "iu":
        raise ConfigError(
            f"{setting} = {name!r} is not a numpy integer dtype; use the dtype the ids were written with "
            f"(llm-foundry's default is 'int64'; others: int32, uint32, uint16, ...)."
        )
    return dtype


@dataclass(frozen=True)
class Layout:
    """How the samples of one stream are read: ``kind`` is ``"tokens"`` or ``"text"``."""

    kind: str
    column: str
    encoding: str
    """The column's encoding in ``index.json`` (``ndarray:int32``, ``bytes``, ``str``, ...)."""
    dtype: np.dtype | None = None
    """Token dtype when fixed by the encoding (or ``token_encoding_type`` for bytes); None: per sample (``ndarray``)."""
    fixed_len: int | None = None
    """Tokens per sample when the encoding fixes the shape (``ndarray:int32:2049`` -> 2049), else None."""

    def describe(self) -> str:
        return f"{self.column}:{self.encoding}" + (f" ({self.dtype})" if self.encoding == "bytes" else "")

    def tokens(self, sample: dict[str, Any], where: str) -> np.ndarray:
        """The 1-D token ids of one decoded sample (``shard[row]``); DataError naming ``where`` if they
        are not 1-D integers (or bytes that do not divide into the dtype)."""
        value = sample[self.column]
        if self.encoding == "bytes":
            if len(value) % self.dtype.itemsize:
                raise DataError(
                    f"{where}: column '{self.column}' holds {len(value)} bytes, not a whole number of "
                    f"{self.dtype} ids ({self.dtype.itemsize} bytes each). Set "
                    f"mosaic_dataloader.dataset.token_encoding_type to the dtype the ids were written with."
                )
            return np.frombuffer(value, self.dtype)
        array = np.asarray(value)
        if array.dtype.kind not in "iu" or array.ndim != 1:
            raise DataError(
                f"{where}: column '{self.column}' holds a {array.dtype} array of shape {array.shape}; "
                f"token samples are 1-D integer arrays."
            )
        return array


def detect_layout(
    column_names: Sequence[str] | None, column_encodings: Sequence[str] | None, *, where: str,
    token_encoding_type: str = "int64", token_setting: str = TOKEN_SETTING,
) -> Layout:
    """The :class:`Layout` of a shard with these columns, or DataError naming ``where`` (the shard and
    its ``index.json``), the columns found and the layouts accepted. ``token_encoding_type`` (the value of
    ``token_setting``) is the dtype of a bytes ``tokens`` column."""
    names, encodings = list(column_names or ()), list(column_encodings or ())
    columns = dict(zip(names, encodings))
    found = ", ".join(f"{n}:{e}" for n, e in columns.items()) or "none"
    if TOKENS in columns:
        encoding = columns[TOKENS]
        if encoding == "bytes":
            return Layout("tokens", TOKENS, encoding, token_dtype(token_encoding_type, token_setting))
        parts = encoding.split(":")
        if parts[0] == "ndarray" and len(parts) <= 3:
            dtype = np.dtype(parts[1]) if len(parts) > 1 and parts[1] else None
            shape = parts[2].split(",") if len(parts) == 3 else None
            if (dtype is None or dtype.kind in "iu") and (shape is None or len(shape) == 1):
                return Layout("tokens", TOKENS, encoding, dtype, int(shape[0]) if shape else None)
    elif columns.get(TEXT) == "str":
        return Layout("text", TEXT, "str")
    raise DataError(
        f"{where}: columns [{found}] are not a layout read here. Accepted: {accepted_layouts(token_setting)}. "
        f"Write the data with one of those columns."
    )


# -- tokenizing text samples ------------------------------------------------------------------------


def encode_documents(tokenizer: Any, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text as ``tokenizer.encode(text, add_bos=True, add_eos=True)`` would give it, as int64 arrays.

    Batched where the tokenizer allows it: its own ``encode_batch(texts, add_bos=, add_eos=)``, or, for
    torchtitan's ``HuggingFaceTokenizer``, the Rust tokenizer's ``encode_batch`` (all cores) with the
    same BOS/EOS rule as its ``encode``. Else one text at a time."""
    if not texts:
        return []
    if hasattr(tokenizer, "encode_batch"):
        return [np.asarray(ids, np.int64) for ids in tokenizer.encode_batch(list(texts), add_bos=True, add_eos=True)]
    inner = getattr(tokenizer, "tokenizer", None)
    if hasattr(inner, "encode_batch") and hasattr(tokenizer, "hf_adds_bos") and hasattr(tokenizer, "hf_adds_eos"):
        bos = [tokenizer.bos_id] if not tokenizer.hf_adds_bos and tokenizer.bos_id is not None else []
        eos = [tokenizer.eos_id] if not tokenizer.hf_adds_eos and tokenizer.eos_id is not None else []
        return [np.asarray(bos + e.ids + eos, np.int64) for e in inner.encode_batch(list(texts))]
    return [np.asarray(tokenizer.encode(t, add_bos=True, add_eos=True), np.int64) for t in texts]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's files (a text layout's windows depend on every id it produces), found
    from the attributes our tokenizers and torchtitan's carry (``source_dir``, ``tokenizer_path``,
    ``model_path``); falls back to the ids of a fixed probe text and the vocabulary size."""
    h = hashlib.sha256()
    for attr in ("source_dir", "tokenizer_path", "model_path"):
        value = getattr(tokenizer, attr, None)
        if not value:
            continue
        path = Path(value)
        files = [path] if path.is_file() else [path / f for f in TOKENIZER_FILES if (path / f).is_file()]
        if files:
            for f in files:
                h.update(f.name.encode() + b"\0" + f.read_bytes())
            return h.hexdigest()
    probe = "The quick brown fox jumps over the lazy dog. 0123456789 \u00e9\u4e2d\n"
    h.update(str(tokenizer.get_vocab_size()).encode())
    h.update(np.asarray(tokenizer.encode(probe, add_bos=True, add_eos=True), np.int64).tobytes())
    return h.hexdigest()
