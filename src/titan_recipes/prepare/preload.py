"""Imported by the process that forks the worker pool before it forks, so that each worker starts
with the tokenizer libraries and these modules already imported instead of importing them again: on a
node with many workers that start-up would otherwise count once per worker. ``preload_mds`` adds
streaming's writer (which imports torch)."""

import sentencepiece  # noqa: F401
import tokenizers  # noqa: F401

from . import encoder, sources, tasks  # noqa: F401
