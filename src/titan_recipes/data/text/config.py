"""``[text_data]``: the packed plain-text source's config section and its embedded datasets."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[4]


@dataclass(frozen=True)
class EmbeddedDataset:
    path: str
    """Path relative to the repository root."""
    source: str
    license: str


EMBEDDED_DATASETS: dict[str, EmbeddedDataset] = {
    "tinyshakespeare": EmbeddedDataset(
        path="assets/data/tinyshakespeare.txt",
        source="Tiny Shakespeare (1.1 MB of Shakespeare's plays), data/tinyshakespeare/input.txt of "
        "karpathy/char-rnn",
        license="public domain (Shakespeare's works); the compilation ships in an MIT-licensed repo",
    ),
}
"""``training.dataset`` names of text files shipped with the repository (no download)."""


@dataclass
class TextData:
    """``[text_data]``: the packed plain-text loader (embedded datasets and local .txt/.jsonl files)."""

    shuffle: bool = True
    """Visit the fixed-length windows of each epoch in a seeded random order (False: file order)."""

    seed: int = 1234
    """Seed of the window order. Changing it changes data order, and the data fingerprint, so a
    checkpoint written with another seed refuses to resume."""

    document_separator: str = "\n\n"
    """How a plain-text file is split into documents (each gets BOS/EOS). Ignored for JSONL, where
    every line is one document with a ``text`` field."""
