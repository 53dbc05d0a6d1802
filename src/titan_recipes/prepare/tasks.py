"""The per-file tasks of a preparation, as datatrove pipeline steps.

Task ``i`` reads input file ``i`` (:mod:`.sources`) and writes its own outputs, never another task's:

* ``mds``: the file's documents (BOS + text + EOS) packed into windows of ``seq_len + 1`` tokens with
  stride ``seq_len``, as ``scripts/mds_convert.py`` packs them, into MDS shards (streaming's
  ``MDSWriter``, column ``tokens`` = ``ndarray:int32:<seq_len+1>``, xxh64 per shard) under
  ``parts/task-<i>/``; the tail shorter than a window is counted, not written.
* ``blendcorpus``: the file's documents (text + EOD, no BOS, as Megatron's ``preprocess_data.py``)
  as one Megatron ``<stem>_text_document.{bin,idx}`` prefix.
* ``mixture``: the file's metadata (line, byte offset, length and the parser's properties per
  JSON line) as one Parquet file, imported into the DuckDB index by the final step.

Everything is written under ``.prepare/tmp/task-<i>/`` and moved into place when the task is done,
then its report ``.prepare/tasks/task-<i>.json`` is written (counts, bad records, the outputs and the
sum of its samples' content hashes). So a killed task leaves nothing a loader or the final step would
read, and rerunning it starts from an empty temporary directory. datatrove marks the task complete
after that, and a rerun skips it.

The content hash of a sample is the xxh3-128 of its bytes (MDS: the window's int32 tokens; BlendCorpus:
a document's tokens in the prefix's dtype; mixture: the index row); a task's is the sum modulo 2**128,
which does not depend on order. :mod:`.finalize` adds the tasks' sums into the dataset's content
fingerprint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from datatrove.pipeline.base import PipelineStep

from .manifest import MASK, content_hash, write_json_atomic
from .sources import BadRecords, iter_documents, stem_of

ENCODE_BATCH = 1000
"""Documents per ``encode_batch`` call."""


@dataclass
class PrepareSpec:
    """Everything a task needs: it is pickled into the Slurm job with the pipeline."""

    kind: str
    files: list[str]
    out: str
    tokenizer: str = ""
    tokenizer_backend: str = "auto"
    seq_len: int = 0
    text_field: str = "text"
    on_bad_record: str = "fail"
    compression: str | None = None
    size_limit: int = 64 * 1024 * 1024
    append_eod: bool = True
    parser: str = "slimpajama"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def task_name(rank: int) -> str:
    return f"task-{rank:05d}"


def prefix_name(source: str) -> str:
    return f"{stem_of(source)}_text_document"


class PrepareTask(PipelineStep):
    """One input file -> its outputs (see the module docstring); ``rank`` picks the file."""

    name = "titan-recipes prepare"
    type = "Tokenizer"

    def __init__(self, spec: PrepareSpec):
        super().__init__()
        self.spec = spec

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator:
        spec = self.spec
        if world_size != len(spec.files):
            raise ValueError(f"{world_size} tasks for {len(spec.files)} input files: one task per file")
        # One core per task (a local worker), or the CPUs Slurm gave the array element (--cpus-per-task).
        cpus = os.environ.get("DATATROVE_CPUS_PER_TASK", "-1")
        os.environ.setdefault("RAYON_NUM_THREADS", cpus if cpus.isdigit() and int(cpus) > 0 else "1")
        out = Path(spec.out)
        tmp = out / ".prepare" / "tmp" / task_name(rank)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        source = spec.files[rank]
        bad = BadRecords(spec.on_bad_record)
        try:
            with self.track_time():
                report = getattr(self, f"_run_{spec.kind}")(source, rank, tmp, bad)
        except OSError as e:  # reading errors are bad records (.sources); this is the output side
            from ..errors import DataError

            raise DataError(
                f"task {rank} ({source}): writing under {out} failed ({type(e).__name__}: {e}). Free space (or fix "
                f"the permissions) and rerun the same command: finished tasks are kept, this one starts again."
            ) from None
        report.update(task=rank, input=source, bad_records=bad.count, bad_records_listed=bad.listed)
        for key in ("documents", "tokens", "samples", "tail_tokens", "rows"):
            if key in report:
                self.stat_update(key, value=int(report[key]))
        self.stat_update("bad_records", value=bad.count)
        shutil.rmtree(tmp, ignore_errors=True)
        write_json_atomic(out / ".prepare" / "tasks" / f"{task_name(rank)}.json", report)
        return
        yield  # a generator, as datatrove's executors expect of a step

    def _encoder(self) -> Any:
        from .encoder import DocumentEncoder

        return DocumentEncoder(self.spec.tokenizer, self.spec.tokenizer_backend)

    def _documents(self, source: str, rank: int, bad: BadRecords, bos: bool, eos: bool,
                   encoder: Any = None) -> Iterator[np.ndarray]:
        """Token arrays of the file's documents, tokenized ``ENCODE_BATCH`` at a time, with a bar."""
        from tqdm import tqdm

        encoder = encoder or self._encoder()
        self.vocab_size = encoder.vocab_size
        dtype = np.int32
        docs = iter_documents(source, self.spec.text_field, bad)
        bar = tqdm(desc=f"{task_name(rank)} {stem_of(source)}", unit=" docs", mininterval=2.0,
                   disable=True if not self.spec.progress else None, leave=False)  # None: only on a terminal
        self.counts = {"documents": 0, "tokens": 0}
        while block := list(islice(docs, ENCODE_BATCH)):
            for ids in encoder.encode_batch(block, bos=bos, eos=eos):
                arr = np.asarray(ids, dtype=dtype)
                self.counts["tokens"] += len(arr)
                yield arr
            self.counts["documents"] += len(block)
            bar.update(len(block))
        bar.close()

    def _run_mds(self, source: str, rank: int, tmp: Path, bad: BadRecords) -> dict[str, Any]:
        from ..data.mds.compat import import_streaming
        from ..data.mds.format import SHARD_HASH, TOKEN_DTYPE, TOKENS_COLUMN

        st = import_streaming()
        seq_len, window = self.spec.seq_len, self.spec.seq_len + 1
        part = tmp / "part"
        writer = st.MDSWriter(columns={TOKENS_COLUMN: f"ndarray:{TOKEN_DTYPE}:{window}"}, out=str(part),
                              compression=self.spec.compression, size_limit=self.spec.size_limit,
                              hashes=[SHARD_HASH], exist_ok=False)
        buf = np.empty(0, dtype=np.int32)
        samples, digest = 0, 0
        try:
            for ids in self._documents(source, rank, bad, bos=True, eos=True):
                buf = np.concatenate([buf, ids]) if len(buf) else ids
                n = (len(buf) - 1) // seq_len if len(buf) > seq_len else 0
                for k in range(n):
                    sample = buf[k * seq_len : k * seq_len + window]
                    digest += content_hash(sample.tobytes())
                    writer.write({TOKENS_COLUMN: sample})
                if n:
                    buf = buf[n * seq_len :]
                    samples += n
        except BaseException:
            writer.cancel_future_jobs()
            raise
        writer.finish()
        final = Path(self.spec.out) / "parts" / task_name(rank)
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        return dict(self.counts, samples=samples, tail_tokens=max(len(buf) - 1, 0) if samples else len(buf),
                    content_sum=str(digest & MASK), vocab_size=self.vocab_size,
                    outputs=[f"parts/{task_name(rank)}"])

    def _run_blendcorpus(self, source: str, rank: int, tmp: Path, bad: BadRecords) -> dict[str, Any]:
        from ..data.blendcorpus.megatron_format import MegatronWriter, idx_path, token_dtype
        encoder = self._encoder()
        if self.spec.append_eod and encoder.eos_id is None:
            from ..errors import DataError

            raise DataError(f"--tokenizer {self.spec.tokenizer} has no EOS token to end documents with; pass --no-append-eod.")
        dtype = token_dtype(encoder.vocab_size)
        name = prefix_name(source)
        digest = 0
        with MegatronWriter(str(tmp / name), dtype) as w:
            for ids in self._documents(source, rank, bad, bos=False, eos=self.spec.append_eod, encoder=encoder):
                doc = ids.astype(dtype)
                digest += content_hash(doc.tobytes())
                w.add_document(doc)
        out = Path(self.spec.out)
        for suffix in (".bin", ".idx"):
            os.replace(tmp / f"{name}{suffix}", out / f"{name}{suffix}")
        assert idx_path(str(out / name)).is_file()
        return dict(self.counts, content_sum=str(digest & MASK), vocab_size=self.vocab_size,
                    dtype=np.dtype(dtype).name, outputs=[name])

    def _run_mixture(self, source: str, rank: int, tmp: Path, bad: BadRecords) -> dict[str, Any]:
        from ..data.mixture.bulk import parse_file

        target = Path(self.spec.out) / ".prepare" / "parsed" / f"{task_name(rank)}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        parsed = parse_file(source, self.spec.parser, target, on_bad_record=self.spec.on_bad_record)
        for path, line, reason in parsed.bad_records:
            bad.add(str(path), int(line), str(reason))
        # The content fingerprint of a mixture comes from the finished index (.mixture_fingerprint).
        return dict(rows=parsed.rows, content_sum="0", parsed=asdict(parsed) | {"bad_records": []},
                    outputs=[str(target.relative_to(self.spec.out))])
