"""Packed plain text: the embedded default data of the debug recipe, and any local .txt / .jsonl file.

The file is split into documents, each tokenized with BOS and EOS and concatenated into one token
stream; sample ``k`` is the window ``tokens[k*L : k*L + L + 1]`` (``L = training.seq_len``; inputs are
the first ``L`` tokens, labels the last ``L``). Windows follow a seeded per-epoch order
(``[text_data] shuffle/seed``) through :class:`~titan_recipes.data.global_order.GlobalOrderLoader`, so the
state is global and exact. The tail shorter than one window is not used; its size is logged.

Select it with ``training.dataset = "<name>"`` for an embedded dataset (see :data:`EMBEDDED_DATASETS`),
or ``training.dataset = "text"`` with ``training.dataset_path`` pointing at a file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path

import numpy as np
from torchtitan.components.tokenizer import BaseTokenizer

from ...errors import ConfigError, DataError
from .. import state as codec
from ..global_order import GlobalOrderLoader
from ..workers import Workers, training_workers
from ..state import fingerprint
from ..documents import iter_jsonl_texts

logger = logging.getLogger(__name__)

from .config import EMBEDDED_DATASETS, REPO_ROOT


def resolve_text_path(dataset: str, dataset_path: str | None) -> Path:
    """The file to read for ``training.dataset``/``training.dataset_path``, or a clear error."""
    if dataset_path:
        path = Path(dataset_path)
        setting = "training.dataset_path"
    elif dataset in EMBEDDED_DATASETS:
        path = REPO_ROOT / EMBEDDED_DATASETS[dataset].path
        setting = f"the embedded dataset '{dataset}'"
    else:
        raise DataError(
            f"training.dataset = '{dataset}' names no embedded dataset "
            f"({sorted(EMBEDDED_DATASETS)}) and training.dataset_path is not set. Set "
            f"training.dataset_path to a .txt/.jsonl file (with training.dataset = 'text')."
        )
    if not path.is_file():
        raise DataError(
            f"Dataset file not found: {path} (from {setting}). Check training.dataset_path, or run "
            f"from the repository root so that relative paths resolve."
        )
    return path


def read_documents(path: Path, separator: str) -> list[str]:
    """Documents of a .txt (split on ``separator``) or .jsonl (``text`` field per line) file; .gz allowed."""
    if not path.is_file():
        raise DataError(f"Dataset file not found: {path}")
    if path.name.removesuffix(".gz").endswith(".jsonl"):
        docs = list(iter_jsonl_texts(path))
    else:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            docs = [d for d in f.read().split(separator) if d.strip()]
    if not docs:
        raise DataError(f"{path} contains no documents.")
    return docs


class PackedTextLoader(GlobalOrderLoader):
    """Fixed-length windows over the tokenized documents of one text file."""

    state_key = codec.PACKED_TEXT

    def __init__(
        self,
        *,
        path: Path,
        tokenizer: BaseTokenizer,
        seq_len: int,
        local_batch_size: int,
        dp_rank: int,
        dp_world_size: int,
        shuffle: bool = True,
        seed: int = 1234,
        separator: str = "\n\n",
        name: str | None = None,
        workers: Workers | None = None,
    ):
        super().__init__(
            name=name or path.name,
            local_batch_size=local_batch_size,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
            workers=workers,
        )
        docs = read_documents(path, separator)
        ids: list[int] = []
        for doc in docs:
            ids.extend(tokenizer.encode(doc, add_bos=True, add_eos=True))
        self.tokens = np.asarray(ids, dtype=np.int32)
        self.seq_len = seq_len
        self.shuffle = shuffle
        self.seed = seed
        self._num_samples = (len(self.tokens) - 1) // seq_len
        if self._num_samples < 1:
            raise DataError(
                f"{path}: {len(self.tokens)} tokens are fewer than one sample of seq_len + 1 = "
                f"{seq_len + 1}. Use more text or a smaller training.seq_len."
            )
        self._fingerprint = fingerprint(
            tokens=hashlib.sha256(self.tokens.tobytes()).hexdigest(),
            seq_len=seq_len,
            shuffle=shuffle,
            seed=seed,
        )
        unused = len(self.tokens) - self._num_samples * seq_len - 1
        logger.info(
            "Dataset %s: %d documents, %d tokens -> %d samples of %d tokens per epoch "
            "(%d tail tokens unused), shuffle=%s seed=%d, fingerprint %s",
            self.name, len(docs), len(self.tokens), self._num_samples, seq_len, unused, shuffle, seed,
            self._fingerprint,
        )

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def data_fingerprint(self) -> str:
        return self._fingerprint

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self._num_samples)
        return np.random.default_rng([self.seed, epoch]).permutation(self._num_samples)

    def sample(self, index: int) -> np.ndarray:
        start = index * self.seq_len
        return self.tokens[start : start + self.seq_len + 1]


def build_text_loader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> PackedTextLoader:
    """The text source's builder (torchtitan's ``build_dataloader_fn`` signature)."""
    training = job_config.training
    if tokenizer is None:
        raise ConfigError("The text loader needs a tokenizer; set model.hf_assets_path.")
    return PackedTextLoader(
        path=resolve_text_path(training.dataset, training.dataset_path),
        tokenizer=tokenizer,
        seq_len=training.seq_len,
        local_batch_size=training.local_batch_size,
        dp_rank=dp_rank,
        dp_world_size=dp_world_size,
        shuffle=job_config.text_data.shuffle,
        seed=job_config.text_data.seed,
        separator=job_config.text_data.document_separator,
        name=training.dataset,
        workers=training_workers(job_config),
    )
