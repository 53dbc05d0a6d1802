"""Data loaders. :func:`build_dataloader` picks one from ``training.dataset``."""

from __future__ import annotations

from typing import Callable

from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.tokenizer import BaseTokenizer

from ..config import ConfigError
from .blend import build_blendcorpus_loader
from .common import DataError, FingerprintMismatchError, GlobalOrderLoader, Workers, training_workers
from .mds import build_mds_loader
from .mixture.loader import build_mixture_loader
from .random_tokens import build_random_token_loader
from .text import EMBEDDED_DATASETS, PackedTextLoader, resolve_text_path

DataLoaderBuilder = Callable[..., BaseDataLoader]


def build_text_loader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> PackedTextLoader:
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


DATALOADERS: dict[str, DataLoaderBuilder] = {"text": build_text_loader, "mds": build_mds_loader}
DATALOADERS.update({name: build_text_loader for name in EMBEDDED_DATASETS})
DATALOADERS["blendcorpus"] = build_blendcorpus_loader
DATALOADERS["mixture"] = build_mixture_loader
DATALOADERS["random"] = build_random_token_loader


def build_dataloader(dp_world_size: int, dp_rank: int, tokenizer: BaseTokenizer, job_config) -> BaseDataLoader:
    """torchtitan's ``build_dataloader_fn`` slot: dispatch on ``training.dataset``.

    Names registered in :data:`DATALOADERS` are ours; names of torchtitan's own HF datasets
    (``c4``, ``c4_test``, ...) go to torchtitan's ``build_text_dataloader`` unchanged.
    """
    name = job_config.training.dataset
    if name in DATALOADERS:
        loader = DATALOADERS[name](dp_world_size, dp_rank, tokenizer, job_config)
        if isinstance(loader, GlobalOrderLoader) and tokenizer is not None:
            loader.vocab_size = tokenizer.get_vocab_size()  # token ids read from disk are checked against it
        return loader
    from torchtitan.hf_datasets.text_datasets import DATASETS, build_text_dataloader

    if name.lower() in DATASETS:
        return build_text_dataloader(dp_world_size, dp_rank, tokenizer, job_config)
    raise ConfigError(
        f"training.dataset = '{name}' is not a known dataset. titan-recipes loaders: {sorted(DATALOADERS)}; "
        f"torchtitan HF datasets: {sorted(DATASETS)}."
    )


__all__ = [
    "DATALOADERS",
    "DataError",
    "FingerprintMismatchError",
    "GlobalOrderLoader",
    "Workers",
    "PackedTextLoader",
    "build_dataloader",
]
