"""Packed plain text: ``training.dataset = "text"`` with ``training.dataset_path``, or the name of an
embedded dataset (``tinyshakespeare``, the debug recipe's default). See :mod:`.loader`."""

from ..source import DataSource
from .config import EMBEDDED_DATASETS, TextData

SOURCE = DataSource(
    name="text",
    build_loader="titan_recipes.data.text.loader:build_text_loader",
    sections={"text_data": TextData},
    aliases=tuple(EMBEDDED_DATASETS),
    summary="packed plain text (.txt, .jsonl[.gz|.zst]) or an embedded dataset",
)

__all__ = ["EMBEDDED_DATASETS", "SOURCE", "TextData"]
