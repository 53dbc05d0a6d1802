"""Tokenizing documents for preparation, without torch: the same ids as training's tokenizers.

Training builds torchtitan's ``HuggingFaceTokenizer`` (``tokenizer.json`` + ``tokenizer_config.json``)
or our SentencePiece adapter; both import torch (through torchtitan), which costs seconds per process
and which a preparation worker never needs. :class:`DocumentEncoder` loads the same files with the
``tokenizers`` / ``sentencepiece`` libraries alone and wraps each document as training expects
(BOS + text + EOS, as :func:`titan_recipes.data.mds.writer.encode_batch` does):

* HF: the config's special tokens (``bos_token`` ... ``mask_token`` and ``added_tokens_decoder``) are added
  to the tokenizer as torchtitan adds them, BOS/EOS ids are the config's, and BOS/EOS are added unless
  the tokenizer's own template already adds them (probed on the empty string, as torchtitan does).
  tests/unit/prepare/test_encoder.py compares the ids with torchtitan's tokenizer.
* SentencePiece: a ``.model`` file, or a directory holding ``tokenizer.model``; BOS/EOS are its pieces.

``encode_batch`` runs in the calling thread: a preparation worker is one process on one core, and
the worker count, not Rust threads, sets the parallelism (``RAYON_NUM_THREADS=1`` in workers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SP_MODEL_FILE = "tokenizer.model"
HF_FILES = ("tokenizer.json", "tokenizer_config.json")
STANDARD_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")


def resolve_tokenizer(path: str | Path, backend: str = "auto") -> tuple[str, Path]:
    """``("hf", dir)`` or ``("sp", model_file)`` for ``--tokenizer path`` (``--tokenizer-backend``:
    auto, hf or sp); ConfigError naming the path and what was expected."""
    p = Path(path)
    backend = (backend or "auto").lower()
    if backend not in ("auto", "hf", "sp", "sentencepiece"):
        raise ConfigError(f"--tokenizer-backend = '{backend}': use auto, hf or sp.")
    if backend == "sentencepiece":
        backend = "sp"
    if not p.exists():
        raise ConfigError(
            f"--tokenizer '{path}' does not exist. Give an HF tokenizer directory (tokenizer.json + "
            f"tokenizer_config.json) or a SentencePiece .model file (or a directory with {SP_MODEL_FILE})."
        )
    sp_file = p if p.is_file() else p / SP_MODEL_FILE
    if backend == "sp" or (backend == "auto" and sp_file.is_file() and not (p / "tokenizer.json").is_file()):
        if not sp_file.is_file():
            raise ConfigError(f"--tokenizer '{path}': no SentencePiece model ({SP_MODEL_FILE}) there.")
        return "sp", sp_file
    if p.is_file():
        raise ConfigError(f"--tokenizer '{path}' is a file; an HF tokenizer is a directory with tokenizer.json.")
    if not (p / "tokenizer.json").is_file():
        raise ConfigError(
            f"--tokenizer '{path}' has no tokenizer.json (nor {SP_MODEL_FILE}). Save the tokenizer with "
            f"transformers' save_pretrained, or give the SentencePiece .model file."
        )
    return "hf", p


def tokenizer_files_sha256(kind: str, path: Path) -> str:
    """One hash over the tokenizer's files: a prepared dataset records it, so its tokenizer is known."""
    h = hashlib.sha256(kind.encode())
    files = [path] if kind == "sp" else [path / f for f in HF_FILES if (path / f).is_file()]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content")
    return None


class DocumentEncoder:
    """``encode_batch(texts) -> list[list[int]]``: each text's ids with BOS first and EOS last."""

    def __init__(self, path: str | Path, backend: str = "auto"):
        self.kind, self.path = resolve_tokenizer(path, backend)
        self.sha256 = tokenizer_files_sha256(self.kind, self.path)
        if self.kind == "sp":
            self._init_sp()
        else:
            self._init_hf()

    def _init_sp(self) -> None:
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        self.vocab_size = int(self.sp.vocab_size())
        bos, eos = int(self.sp.bos_id()), int(self.sp.eos_id())
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self._add_bos, self._add_eos = self.bos_id is not None, self.eos_id is not None

    def _init_hf(self) -> None:
        from tokenizers import AddedToken, Tokenizer

        self.tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        config_path = self.path / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        bos_token, eos_token = _token_content(config.get("bos_token")), _token_content(config.get("eos_token"))
        added = []
        for key in STANDARD_SPECIAL_KEYS:
            content = _token_content(config.get(key))
            if content is not None:
                added.append((content, config.get(key)))
        for entry in (config.get("added_tokens_decoder") or {}).values():
            if isinstance(entry, dict) and "content" in entry:
                added.append((entry["content"], entry))
        if added:
            tokens = []
            for content, spec in added:
                if isinstance(spec, dict):
                    tokens.append(AddedToken(content, single_word=spec.get("single_word", False),
                                             lstrip=spec.get("lstrip", False), rstrip=spec.get("rstrip", False),
                                             normalized=spec.get("normalized", True), special=spec.get("special", True)))
                else:
                    tokens.append(AddedToken(content, special=True))
            self.tok.add_special_tokens(tokens)
        self.bos_id = self.tok.token_to_id(bos_token) if bos_token is not None else None
        self.eos_id = self.tok.token_to_id(eos_token) if eos_token is not None else None
        empty = self.tok.encode("").ids
        self._add_bos = self.bos_id is not None and self.bos_id not in empty
        self._add_eos = self.eos_id is not None and self.eos_id not in empty
        self.vocab_size = int(self.tok.get_vocab_size())

    def encode_batch(self, texts: list[str], bos: bool = True, eos: bool = True) -> list[list[int]]:
        """Ids of each text; ``bos``/``eos`` add BOS/EOS (unless the tokenizer's template adds them)."""
        if self.kind == "sp":
            batch = self.sp.encode(texts, out_type=int)
        else:
            batch = [e.ids for e in self.tok.encode_batch(texts)]
        bos = [self.bos_id] if bos and self._add_bos else []
        eos = [self.eos_id] if eos and self._add_eos else []
        if bos or eos:
            return [bos + ids + eos for ids in batch]
        return batch

    def describe(self) -> dict[str, Any]:
        return {"backend": self.kind, "path": str(self.path), "files_sha256": self.sha256,
                "vocab_size": self.vocab_size, "bos_id": self.bos_id, "eos_id": self.eos_id}
