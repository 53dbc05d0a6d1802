"""The final step of a preparation: the tasks' outputs joined into what a loader reads, and the manifest.

It runs once, after every task finished (a datatrove executor of one task that depends on the tasks'),
and reads only the task reports (``.prepare/tasks/task-<i>.json``):

* ``mds``: one ``index.json`` listing every task's shards in task order (basenames
  ``parts/task-<i>/shard.<j>.mds``, as streaming's ``merge_index`` joins sub-datasets), which
  streaming's ``StreamingDataset`` and our loader read as one stream, and ``conversion.json``.
* ``blendcorpus``: the weighted file list ``blend.txt``, one ``<tokens x epochs> <prefix> <corpus>``
  row per prefix with a token, prefixes relative to the list so the directory can move.
* ``mixture``: the Parquet files imported into the DuckDB index ``mixture_index/`` in file order.

Then ``prepare.json`` (:data:`MANIFEST`): the inputs, settings, tokenizer, per-task counts and bad
records, and the **content fingerprint**: the sum of every sample's content hash (:mod:`.tasks`), so
it depends on which samples there are, not on how many workers made them or in what order. For MDS
it also records the sha256 of ``index.json``, which the loader checks (:func:`check_prepared_mds`):
an ``index.json`` that does not match the manifest (a half-rewritten or foreign dataset in a prepared
directory) is refused. ``prepare.json`` is written before ``index.json`` is renamed into place, so a
directory without ``index.json`` is an unfinished preparation.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import DataError
from .manifest import MANIFEST, MASK, read_manifest, write_json_atomic  # noqa: F401  (read_manifest: used by callers)
from .tasks import PrepareSpec, task_name

FILE_LIST = "blend.txt"
MIXTURE_INDEX = "mixture_index"


def read_reports(spec: PrepareSpec) -> list[dict[str, Any]]:
    tasks_dir = Path(spec.out) / ".prepare" / "tasks"
    reports = []
    for rank in range(len(spec.files)):
        path = tasks_dir / f"{task_name(rank)}.json"
        if not path.is_file():
            raise DataError(f"{path} is missing: task {rank} ({spec.files[rank]}) has not finished. Rerun the same "
                            f"`titan-recipes prepare` command; it runs only the missing tasks.")
        reports.append(json.loads(path.read_text()))
    return reports


def content_fingerprint(reports: list[dict[str, Any]]) -> str:
    total = sum(int(r["content_sum"]) for r in reports) & MASK
    return f"{total:032x}"


def finalize(spec: PrepareSpec) -> dict[str, Any]:
    """Join the tasks' outputs and write the manifest; returns it."""
    reports = read_reports(spec)
    manifest: dict[str, Any] = {
        "version": 1,
        "kind": spec.kind,
        "writer": "titan-recipes prepare",
        "settings": {k: v for k, v in spec.to_json().items() if k not in ("files", "out", "progress")},
        "inputs": spec.files,
        "content_fingerprint": content_fingerprint(reports),
        "totals": {k: sum(int(r.get(k, 0)) for r in reports)
                   for k in ("documents", "tokens", "samples", "tail_tokens", "rows", "bad_records")},
        "tasks": [{k: v for k, v in r.items() if k != "bad_records_listed"} for r in reports],
        "bad_records": [line for r in reports for line in r.get("bad_records_listed", [])],
    }
    if spec.kind != "mixture":
        from .encoder import DocumentEncoder

        manifest["tokenizer"] = DocumentEncoder(spec.tokenizer, spec.tokenizer_backend).describe()
    getattr(_Finalizers, spec.kind)(spec, reports, manifest)
    return manifest


class _Finalizers:
    @staticmethod
    def mds(spec: PrepareSpec, reports: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
        out = Path(spec.out)
        shards = []
        for rank, _ in enumerate(reports):
            part = f"parts/{task_name(rank)}"
            index = json.loads((out / part / "index.json").read_text())
            for shard in index["shards"]:
                for key in ("raw_data", "zip_data"):
                    if shard.get(key):
                        shard[key]["basename"] = f"{part}/{shard[key]['basename']}"
                shards.append(shard)
        if not shards:
            raise DataError(
                f"{len(reports)} input file(s) gave {manifest['totals']['tokens']} tokens, fewer than one sample of "
                f"seq_len + 1 = {spec.seq_len + 1} per file; {out} holds no samples. Use more text or a smaller --seq-len."
            )
        text = json.dumps({"version": 2, "shards": shards}, sort_keys=True)
        manifest["index_sha256"] = hashlib.sha256(text.encode()).hexdigest()
        conversion = {
            "writer": "titan_recipes.prepare (titan-recipes prepare mds)",
            "seq_len": spec.seq_len,
            "column": "tokens",
            "column_encoding": f"ndarray:int32:{spec.seq_len + 1}",
            "packing": "per input file: documents with BOS+EOS concatenated; sample k = tokens[k*seq_len : "
                       "k*seq_len + seq_len + 1]; each file's tail shorter than a sample is left out",
            "tokenizer": manifest["tokenizer"],
            "samples": manifest["totals"]["samples"],
            "tokens": manifest["totals"]["tokens"],
        }
        write_json_atomic(out / "conversion.json", conversion)
        write_json_atomic(out / MANIFEST, manifest)
        tmp = out / "index.json.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / "index.json")

    @staticmethod
    def blendcorpus(spec: PrepareSpec, reports: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
        from ..data.blendcorpus.megatron_format import MegatronShard
        from ..data.blendcorpus.plan import shard_digest

        out = Path(spec.out)
        corpus = spec.extra.get("corpus") or out.name
        epochs = float(spec.extra.get("epochs", 1.0))
        lines, digests = [], {}
        for r in reports:
            for name in r["outputs"]:
                shard = MegatronShard(str(out / name))
                tokens = shard.num_tokens
                digests[name] = shard_digest(shard)
                if tokens:
                    lines.append(f"{tokens * epochs:.10g} {name} {corpus}")
        if not lines:
            raise DataError(f"{len(reports)} input file(s) gave no tokens; {out / FILE_LIST} would be empty.")
        manifest["file_list"] = FILE_LIST
        manifest["prefix_digests"] = digests
        write_json_atomic(out / MANIFEST, manifest)
        tmp = out / (FILE_LIST + ".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, out / FILE_LIST)

    @staticmethod
    def mixture(spec: PrepareSpec, reports: list[dict[str, Any]], manifest: dict[str, Any]) -> None:
        import duckdb

        from ..data.mixture.bulk import ParsedFile, import_parsed
        from ..data.mixture.index import SampleIndex
        from .mixture_fingerprint import index_fingerprint

        out = Path(spec.out)
        name = spec.extra.get("name") or out.name
        root = os.path.commonpath([os.path.dirname(f) for f in spec.files])
        index = SampleIndex(out / MIXTURE_INDEX)
        try:
            import_parsed(index, name, root, spec.parser, [ParsedFile(**r["parsed"]) for r in reports])
        finally:
            index.close()
        manifest["index_dir"] = MIXTURE_INDEX
        manifest["dataset"] = name
        manifest["content_fingerprint"] = index_fingerprint(out / MIXTURE_INDEX, name)
        manifest["duckdb_version"] = duckdb.__version__
        write_json_atomic(out / MANIFEST, manifest)

