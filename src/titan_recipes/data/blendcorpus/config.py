"""``[blendcorpus]``: the config section of the BlendCorpus source (keys keep the BlendCorpus seed's names)."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass


@dataclass
class BlendCorpus:
    """``[blendcorpus]``: the weighted Megatron-shard blend, used when ``training.dataset = "blendcorpus"``
    (titan_recipes/data/blendcorpus/). Keys keep the BlendCorpus seed's names; each is honoured or rejected
    with ConfigError, never ignored."""

    data_file_list: str = ""
    """File list ("<weight> <path-prefix> <corpus>" per line, from scripts/blendcorpus.py file-list).
    "" means use ``training.dataset_path``; if both are set they must name the same file."""

    seq_length: int = 0
    """Tokens per sample. 0: use ``training.seq_len``; any other value must equal it (ConfigError
    otherwise: the loader cannot serve a different length than the model trains on)."""

    micro_batch_size: int = 0
    """Samples per rank per step. 0: use ``training.local_batch_size``; any other value must equal it."""

    num_workers: int = 0
    """Loader worker processes per rank (0: the value of ``training.dataloader.num_workers``). The
    other worker settings (prefetch_factor, pin_memory) come from ``[training.dataloader]``."""

    split: str = "98,1,1"
    """Train/valid/test shares of each shard's documents (contiguous ranges, Megatron's rounding). The
    training loader reads the train part. Part of the data fingerprint."""

    dataloader_type: str = "single"
    """Megatron's sampler: only "single" (sequential over the global blend order) is supported."""

    shuffle_sample_in_corpus: bool = True
    """Visit each shard's samples and each corpus's draws in a seeded permutation (False: in order)."""

    blend_sample_in_corpus: bool = True
    """Interleave a corpus's shards by weight (greedy); False reads them one after the other in
    file-list order, with the same per-shard counts."""

    append_eod: bool = False
    """Append ``eod_token_id`` after every document when packing samples. Leave False for shards from
    scripts/blendcorpus.py tokenize, which already end each document with EOD. True needs
    ``eod_token_id >= 0``."""

    provide_attention_mask: bool = False
    """Only False is supported: torchtitan passes extra input keys to the model forward (llama3
    rejects them); use the model's document-masked attention."""

    eod_token_id: int = -1
    """Token id appended when ``append_eod`` is True (-1: none)."""

    data_cache_path: str = ""
    """Directory of the blend index caches (``<hash>-blend.npy`` + ``<hash>-description.json``).
    "": ``blendcorpus_cache/`` beside the file list."""

    seed: int = 1234
    """Seed of the in-corpus shuffles. Changing it changes the data order and the fingerprint."""

    validation_split: str = "valid"
    """Which held-out part ``validation.dataset = "blendcorpus"`` reads: "valid" (the second share of
    ``split``) or "test" (the third). Same file list and blend settings as training; the split must
    hold at least one global validation batch (DataError otherwise)."""
