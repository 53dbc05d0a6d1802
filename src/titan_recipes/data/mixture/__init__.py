"""A Mixtera-style mixture engine: a DuckDB sample index, property queries, mixtures and chunks.

The model follows Mixtera (eth-easl/mixtera, which cannot be installed offline): samples live in a
database with one column per metadata property; a query filters them by properties; a mixture
weights the values of one property (the domains); the samples are delivered in chunks whose
per-domain counts follow the mixture.

What exists:

- :mod:`.index` -- :class:`SampleIndex`, our own DuckDB sample index (the counterpart of Mixtera's
  data collection): ``<directory>/index.duckdb`` with tables datasets, files, samples (one column per
  property) and properties. ``query`` / ``count`` / ``domain_counts`` / ``sample_ids_by_value`` answer
  queries; ``read_texts`` reads sample texts back (:class:`~.index.TextReader`: seeks in plain
  ``.jsonl``, decompressed ``.gz``/``.zst`` files cached in memory with their line starts);
  ``files_fingerprint`` hashes the registered files.
- :mod:`.registration` -- ``SampleIndex.register_dataset`` walks ``.jsonl``, ``.jsonl.gz`` and
  ``.jsonl.zst`` files with a metadata parser, one transaction per file, with a progress bar; it is
  resumable and idempotent, and refuses files changed since they were indexed.
- :mod:`.reader` -- :class:`IndexReader`, the reading interface the planner and the loader use
  (satisfied by :class:`SampleIndex` and :class:`RemoteIndex`), and :func:`open_index`, which opens
  the index ``[mixture]`` names, embedded or served.
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
  files, mixture and tokenizer; the resharding and the older formats are in :mod:`.resume`), including a
  dynamic mixture's state. Only ``num_workers = 0``. :mod:`.config` holds the sections and turns them into
  mixtures and queries.
- :mod:`.ado` -- :class:`~.ado.AdoMixture`: ADO (arXiv 2410.11820, Mixtera's ``AdoDynamicMixing``),
  per-domain power-law fits of the DP-reduced per-domain losses that the trainer reports every step;
  new weights apply from the first chunk no rank has planned, so all ranks plan the same chunks.
- :mod:`.server` -- served mode: :class:`MixtureServer` serves one index read-only over TCP
  (``titan-recipes mixture serve DIR --host H --port P``; length-prefixed JSON frames, no pickle:
  :mod:`.protocol`) and :class:`RemoteIndex` (:mod:`.client`) reads it with the same
  :class:`IndexReader` interface and results; the planner stays on the ranks, so the server is
  stateless. :mod:`.spawn` starts a server in a subprocess (tests, benchmarks). The ``titan-recipes
  mixture`` commands (serve, register, stats, download-slimpajama) are in :mod:`titan_recipes.cli.mixture`.

Not built: worker processes for the mixture loader (the in-process reader is measured against the
1B demand by ``scripts/bench_mixture.py``). Schedules are placed by document position (one document
per row), not exactly by optimizer step.
"""

from ..source import DataSource, lazy_exports
from .config import Ado, Mixture as MixtureSection

SOURCE = DataSource(
    name="mixture",
    build_loader="titan_recipes.data.mixture.loader:build_mixture_loader",
    sections={"mixture": MixtureSection},
    has_domains=True,
    summary="Mixtera-style mixture over a DuckDB sample index: static, scheduled or ADO weights",
)

_LAZY = {
    "ado": ("AdoMixture",),
    "chunks": ("Chunk", "ChunkPlanner"),
    "client": ("RemoteIndex",),
    "config": ("mixture_from_config", "query_from_config"),
    "index": ("INDEX_FILE", "SampleIndex", "TextReader"),
    "loader": ("MixtureLoader", "build_mixture_loader"),
    "mixture": ("Mixture", "ScheduleMixture", "StaticMixture", "chunk_counts"),
    "parsers": ("PARSERS", "FieldParser", "MetadataParser", "PileParser", "SlimPajamaParser"),
    "query": ("OPS", "Clause", "Query"),
    "reader": ("IndexReader", "open_index"),
    "registration": ("RegistrationReport", "find_jsonl_files"),
    "resume": ("merge_rank_states",),
    "server": ("MixtureServer",),
}
"""Public names of the submodules, imported on first access, so ``import titan_recipes.data.mixture``
(which the config does) imports neither duckdb nor pyarrow."""
__getattr__, _LAZY_NAMES = lazy_exports(__name__, _LAZY)

__all__ = ["SOURCE", "Ado", "MixtureSection", *_LAZY_NAMES]
