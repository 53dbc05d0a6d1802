"""Corpus-scale data preparation on datatrove executors: ``titan-recipes prepare {mds,blendcorpus,mixture}``.

sources (input files, local or S3; documents; bad records) -> encoder (tokenizers/sentencepiece, no
torch) -> tasks (one datatrove task per input file, atomic outputs, content hashes) -> finalize (one
index / file list / DuckDB import + ``prepare.json``) on executors (local pool or Slurm job array).
manifest holds what loaders check; verify recomputes a fingerprint from the data.
"""
