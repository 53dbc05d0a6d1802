"""A Mixtera-style mixture engine: a DuckDB sample index, property queries, mixtures and chunks.

The model follows Mixtera (eth-easl/mixtera, which cannot be installed offline): samples live in a
database with one column per metadata property; a query filters them by properties; a mixture
weights the values of one property (the domains); the samples are delivered in chunks whose
per-domain counts follow the mixture.

What exists:

- :mod:`.index` -- :class:`MixteraIndex`: ``<directory>/index.duckdb`` with tables datasets, files,
  samples (one column per property) and properties. ``register_dataset`` walks ``.jsonl``,
  ``.jsonl.gz`` and ``.jsonl.zst`` files with a metadata parser, one transaction per file, with a
  progress bar; it is resumable and idempotent, and refuses files changed since they were indexed.
  ``query`` / ``count`` / ``domain_counts`` / ``sample_ids_by_value`` answer queries;
  ``read_texts`` reads sample texts back (:class:`~.index.TextReader`: seeks in plain ``.jsonl``,
  decompressed ``.gz``/``.zst`` files cached in memory with their line starts); ``files_fingerprint``
  hashes the registered files.
- :mod:`.parsers` -- the :class:`MetadataParser` interface and the built-ins ``slimpajama``
  (``meta.redpajama_set_name``) and ``pile`` (``meta.pile_set_name``).
- :mod:`.query` -- :class:`Query`: clauses ``(property, op, value)`` with ``== != < > <= >= in``, AND
  within a group, OR across groups, compiled to parameterized SQL; unknown properties and operators
  are ConfigErrors.
- :mod:`.mixture` -- :class:`StaticMixture`, :class:`ScheduleMixture` (weights by step) and
  :func:`chunk_counts` (largest remainder, ties by domain name).
- :mod:`.chunks` -- :class:`ChunkPlanner`: deterministic chunks of ``(domain, sample id)`` from seeded
  per-domain permutations with per-domain cursors (logged wrap when a domain runs out; an empty
  domain is a DataError), :meth:`Chunk.shard` for DP ranks and loader workers, and a plain-dict state.

- :mod:`.loader` -- :class:`MixtureLoader`, the training loader of ``training.dataset = "mixture"``
  with the ``[mixture]`` config section (``index_dir``, ``property``, ``weights`` or ``schedule``,
  ``query``, ``chunk_size``, ``seed``): each DP rank reads its block of every chunk, tokenizes the
  documents with BOS/EOS and packs them into rows of ``seq_len + 1`` tokens; ``last_domain_ids`` /
  ``last_token_domain_ids`` give each row's / label token's domain. Checkpoint state is per DP rank
  (exact resume with the same DP degree; fingerprint of index files, mixture and tokenizer).
  Only ``num_workers = 0``.

Planned, not built: worker processes for the loader; a per-domain loss in the trainer (from
``last_domain_ids``); ADO (adaptive weights from per-domain power-law fits, arXiv 2410.11820); a
server that plans chunks for many clients; a committed recipe directory (recipes/) using the mixture.
Schedules are placed by document position (one document per row), not exactly by optimizer step.
"""

from .chunks import Chunk, ChunkPlanner
from .index import INDEX_FILE, MixteraIndex, RegistrationReport, TextReader, find_jsonl_files
from .loader import MixtureLoader, build_mixture_loader
from .mixture import Mixture, ScheduleMixture, StaticMixture, chunk_counts
from .parsers import PARSERS, FieldParser, MetadataParser, PileParser, SlimPajamaParser
from .query import OPS, Clause, Query

__all__ = [
    "Chunk", "ChunkPlanner", "Clause", "FieldParser", "INDEX_FILE", "MetadataParser", "Mixture",
    "MixteraIndex", "MixtureLoader", "OPS", "PARSERS", "PileParser", "Query", "RegistrationReport", "ScheduleMixture",
    "SlimPajamaParser", "StaticMixture", "TextReader", "build_mixture_loader", "chunk_counts",
    "find_jsonl_files",
]
