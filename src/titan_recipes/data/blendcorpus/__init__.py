"""BlendCorpus: Megatron ``.bin/.idx`` shards blended by a weighted file list, ``training.dataset =
"blendcorpus"``. :mod:`.plan` holds the file list, split and greedy blend; :mod:`.loader` the loader;
:mod:`.megatron_format` reads megatron-core's indexed-dataset files."""

from ..source import DataSource
from .config import BlendCorpus

SOURCE = DataSource(
    name="blendcorpus",
    build_loader="titan_recipes.data.blendcorpus.loader:build_blendcorpus_loader",
    build_validation_loader="titan_recipes.data.blendcorpus.loader:build_blendcorpus_validation_loader",
    sections={"blendcorpus": BlendCorpus},
    summary="Megatron .bin/.idx shards blended by a weighted file list",
)

__all__ = ["SOURCE", "BlendCorpus"]
