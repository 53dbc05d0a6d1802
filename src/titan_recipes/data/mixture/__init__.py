"""A Mixtera-style mixture engine: a DuckDB sample index, property queries, mixtures and chunks.

The model follows Mixtera (eth-easl/mixtera, which cannot be installed offline): samples live in a
database with one column per metadata property; a query filters them by properties; a mixture
weights the values of one property (the domains); the samples are delivered in chunks whose
per-domain counts follow the mixture.

What exists (library only; nothing in training uses it yet):

- :mod:`.index` -- :class:`MixteraIndex`: ``<directory>/index.duckdb`` with tables datasets, files,
  samples (one column per property) and properties. ``register_dataset`` walks ``.jsonl``,
  ``.jsonl.gz`` and ``.jsonl.zst`` files with a metadata parser, one transaction per file, with a
  progress bar; it is resumable and idempotent, and refuses files changed since they were indexed.
  ``query`` / ``count`` / ``domain_counts`` / ``sample_ids_by_value`` answer queries.
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

Planned, not built: reading sample text back from the index and the training data loader
(``training.dataset = "mixture"`` with a ``[mixture]`` config section and recipe), per-domain loss
and ADO (adaptive weights from per-domain power-law fits, arXiv 2410.11820), and a server that
plans chunks for many clients.
"""

from .chunks import Chunk, ChunkPlanner
from .index import INDEX_FILE, MixteraIndex, RegistrationReport, find_jsonl_files
from .mixture import Mixture, ScheduleMixture, StaticMixture, chunk_counts
from .parsers import PARSERS, FieldParser, MetadataParser, PileParser, SlimPajamaParser
from .query import OPS, Clause, Query

__all__ = [
    "Chunk", "ChunkPlanner", "Clause", "FieldParser", "INDEX_FILE", "MetadataParser", "Mixture",
    "MixteraIndex", "OPS", "PARSERS", "PileParser", "Query", "RegistrationReport", "ScheduleMixture",
    "SlimPajamaParser", "StaticMixture", "chunk_counts", "find_jsonl_files",
]
