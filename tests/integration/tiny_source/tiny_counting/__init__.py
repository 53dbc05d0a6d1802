"""A tiny data source that lives outside the package: the example of docs/adding-a-data-source.md.

``training.dataset = "tiny_counting"``: sample ``k`` counts up from ``k * stride`` modulo the tokenizer's
size. Its config section is ``[tiny_counting]``; its package imports only that section.
"""

from titan_recipes.data.source import DataSource

from .config import TinyCounting

SOURCE = DataSource(
    name="tiny_counting",
    build_loader="tiny_counting.loader:build_tiny_counting_loader",
    sections={"tiny_counting": TinyCounting},
    summary="counting token ids (a test source)",
)
