"""``training.dataset = "random"``: uniform random token ids, the loader-costs-nothing baseline of the
throughput benchmarks. See :mod:`.loader`."""

from ..source import DataSource

SOURCE = DataSource(
    name="random",
    build_loader="titan_recipes.data.random_tokens.loader:build_random_token_loader",
    summary="uniform random token ids (throughput baseline; no data read)",
)

__all__ = ["SOURCE"]
