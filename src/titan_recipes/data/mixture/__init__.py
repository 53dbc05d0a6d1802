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
  ``query``, ``chunk_size``, ``seed``, ``server``, ``per_domain_loss``, ``[mixture.ado]``): each DP
  rank reads its block of every chunk, tokenizes the documents with BOS/EOS and packs them into rows of
  ``seq_len + 1`` tokens; with ``per_domain_loss`` each batch carries its label tokens' domain ids
  (``input_dict["domain_ids"]``, consumed by :mod:`titan_recipes.domain_loss`). Checkpoint state is
  global: every rank's position, all-gathered at a save (exact resume with the same DP degree; with
  another, the old ranks' unread documents first, nothing lost or repeated; fingerprint of index
  files, mixture and tokenizer), including a dynamic mixture's state. Only ``num_workers = 0``.
- :mod:`.ado` -- :class:`~.ado.AdoMixture`: ADO (arXiv 2410.11820, Mixtera's ``AdoDynamicMixing``),
  per-domain power-law fits of the DP-reduced per-domain losses that the trainer reports every step;
  new weights apply from the first chunk no rank has planned, so all ranks plan the same chunks.
- :mod:`.server` -- served mode: :class:`MixtureServer` serves one index read-only over TCP
  (``titan-recipes mixture serve DIR --host H --port P``; length-prefixed JSON frames, no pickle) and
  :class:`RemoteIndex` reads it with MixteraIndex's reading interface and results; the planner stays
  on the ranks, so the server is stateless. :func:`open_index` picks embedded or served mode. The
  ``titan-recipes mixture`` commands (serve, register, stats, download-slimpajama) are in :mod:`.cli`.

Not built: worker processes for the mixture loader (the in-process reader is measured against the
1B demand by ``scripts/bench_mixture.py``). Schedules are placed by document position (one document
per row), not exactly by optimizer step.
"""

from .ado import AdoMixture
from .chunks import Chunk, ChunkPlanner
from .index import INDEX_FILE, MixteraIndex, RegistrationReport, TextReader, find_jsonl_files
from .loader import MixtureLoader, build_mixture_loader
from .mixture import Mixture, ScheduleMixture, StaticMixture, chunk_counts
from .parsers import PARSERS, FieldParser, MetadataParser, PileParser, SlimPajamaParser
from .query import OPS, Clause, Query
from .server import MixtureServer, RemoteIndex, open_index

__all__ = [
    "AdoMixture", "Chunk", "ChunkPlanner", "Clause", "FieldParser", "INDEX_FILE", "MetadataParser", "Mixture",
    "MixteraIndex", "MixtureLoader", "OPS", "PARSERS", "PileParser", "Query", "RegistrationReport", "ScheduleMixture",
    "SlimPajamaParser", "StaticMixture", "TextReader", "build_mixture_loader", "chunk_counts",
    "find_jsonl_files", "MixtureServer", "RemoteIndex", "open_index",
]
