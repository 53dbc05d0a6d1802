"""Shared fixtures of the unit tests: the committed tokenizer and small synthetic text corpora."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import titan_recipes  # noqa: F401  (registers the triton stand-in before torchtitan is imported)
from torchtitan.components.tokenizer import HuggingFaceTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"

SEQ_LEN = 16
"""Window length of the corpus fixture: small, so a few hundred documents give a few hundred samples."""

SAMPLES_MULTIPLE = 8
"""The corpus fixture has a multiple of this many samples per epoch, so an epoch splits evenly into
micro-batches of 2 ranks x 4 (or 1 rank x 8) samples."""

_WORDS = (
    "king queen lord lady sword crown night day love death heart blood honour fool ghost storm "
    "sea castle war peace speak hear see come go stay fly dream sleep wake mercy grace wit tongue "
    "eye hand fair foul sweet bitter gentle noble villain friend enemy brother sister father mother"
).split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    """``n`` short, distinct documents (each starts with its own number); none contains a blank line."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        docs.append(f"Scene {i}. " + " ".join(words).capitalize() + ".")
    return docs


def encode_documents(tokenizer, docs: list[str]) -> np.ndarray:
    """The packed token stream, computed here independently of the loader: BOS doc EOS BOS doc EOS ..."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer.encode(doc, add_bos=True, add_eos=True))
    return np.asarray(ids, dtype=np.int64)


@dataclass
class Corpus:
    path: Path
    docs: list[str]
    tokens: np.ndarray
    seq_len: int
    num_samples: int
    window_to_index: dict[bytes, int]

    def window(self, k: int) -> np.ndarray:
        return self.tokens[k * self.seq_len : k * self.seq_len + self.seq_len + 1]

    def sample_ids(self, inputs, labels) -> list[int]:
        """Sample indices of the rows of one batch, recovered from their token windows."""
        rows = np.concatenate([inputs.numpy(), labels.numpy()[:, -1:]], axis=1).astype(np.int64)
        return [self.window_to_index[row.tobytes()] for row in rows]


@pytest.fixture(scope="module")
def tokenizer() -> HuggingFaceTokenizer:
    return HuggingFaceTokenizer(str(TOKENIZER_DIR))


def _build_corpus(directory: Path, tokenizer, min_docs: int, seed: int) -> Corpus:
    docs = make_documents(min_docs, seed=seed)
    tokens = encode_documents(tokenizer, docs)
    # Add one-word documents until the epoch splits evenly into micro-batches of SAMPLES_MULTIPLE
    # samples (each adds at least BOS + EOS, so this ends within a few dozen documents).
    while ((len(tokens) - 1) // SEQ_LEN) % SAMPLES_MULTIPLE:
        docs.append(f"Epilogue {len(docs)}.")
        tokens = encode_documents(tokenizer, docs)
    num_samples = (len(tokens) - 1) // SEQ_LEN
    path = directory / "corpus.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    window_to_index = {}
    for k in range(num_samples):
        window_to_index[tokens[k * SEQ_LEN : k * SEQ_LEN + SEQ_LEN + 1].tobytes()] = k
    # Samples are identified by their token windows below; that needs every window to be distinct.
    assert len(window_to_index) == num_samples, "corpus fixture has repeated windows"
    return Corpus(path, docs, tokens, SEQ_LEN, num_samples, window_to_index)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer) -> Corpus:
    """A .txt file of ~300 short documents: a few hundred samples of SEQ_LEN tokens."""
    return _build_corpus(tmp_path_factory.mktemp("corpus"), tokenizer, min_docs=300, seed=0)


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory, tokenizer) -> Corpus:
    """Different text of about the same size (for data-fingerprint tests)."""
    return _build_corpus(tmp_path_factory.mktemp("other_corpus"), tokenizer, min_docs=300, seed=99)
