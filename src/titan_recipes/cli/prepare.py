"""Corpus-scale data preparation on datatrove (``titan_recipes.prepare``).

    titan-recipes prepare mds         INPUTS... --out DIR --tokenizer T --seq-len N [--workers K]
    titan-recipes prepare blendcorpus INPUTS... --out DIR --tokenizer T [--corpus NAME] [--epochs E]
    titan-recipes prepare mixture     INPUTS... --out DIR [--parser slimpajama|pile] [--name NAME]
    titan-recipes prepare verify      DIR        # recompute the content fingerprint from the data
        with --slurm --partition P --time HH:MM:SS [--container-image IMG | --venv DIR] [--print-job-id]
        to submit a job array (one element per input file) and a final job instead of running here.

A rerun of the same command (after a crash, ``kill -9``, a preempted array element) runs only the tasks
that did not finish. None of these commands import torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..errors import ConfigError, DataError
from . import reports

KINDS = ("mds", "blendcorpus", "mixture")


def _spec(args):
    from ..prepare.sources import find_input_files
    from ..prepare.tasks import PrepareSpec

    files = find_input_files(args.inputs)
    if args.kind == "mixture":
        if any(f.startswith("s3://") for f in files):
            raise ConfigError("prepare mixture reads documents from their files at training time: give local (or "
                              "shared-filesystem) paths, not s3:// inputs.")
        if any(f.endswith(".parquet") for f in files):
            raise ConfigError("prepare mixture indexes JSONL files (.jsonl/.jsonl.gz/.jsonl.zst); convert Parquet first.")
    elif not args.tokenizer:
        raise ConfigError(f"prepare {args.kind} needs --tokenizer (an HF tokenizer directory or a SentencePiece .model).")
    if args.kind == "mds" and (args.seq_len or 0) < 1:
        raise ConfigError("prepare mds needs --seq-len N (training.seq_len; samples hold N + 1 tokens).")
    extra = {}
    if args.kind == "blendcorpus":
        extra = {"corpus": args.corpus or Path(args.out).name, "epochs": args.epochs}
    if args.kind == "mixture":
        extra = {"name": args.name or Path(args.out).name}
    size_limit = 64 * 1024 * 1024  # MDS only
    if args.kind == "mds":
        from ..data.mds.compat import import_streaming
        from ..data.mds.writer import check_compression

        st = import_streaming()
        check_compression(st, args.compression)
        size_limit = st.bytes_to_int(int(args.size_limit) if str(args.size_limit).isdigit() else args.size_limit)
    if args.tokenizer:
        from ..prepare.encoder import resolve_tokenizer

        resolve_tokenizer(args.tokenizer, args.tokenizer_backend)
        args.tokenizer = str(Path(args.tokenizer).resolve())
    return PrepareSpec(
        kind=args.kind, files=files, out=str(Path(args.out).resolve()), tokenizer=args.tokenizer or "",
        tokenizer_backend=args.tokenizer_backend, seq_len=args.seq_len or 0, text_field=args.text_field,
        on_bad_record=args.on_bad_record, compression=None if args.compression in (None, "none") else args.compression,
        size_limit=int(size_limit), append_eod=not args.no_append_eod, parser=args.parser,
        progress=not args.no_progress, extra=extra,
    )


@reports(ConfigError, DataError)
def cmd_prepare(args) -> int:
    from ..prepare.executors import SlurmOptions, check_plan, launch_slurm, run_local

    spec = _spec(args)
    check_plan(spec, args.overwrite)
    if args.slurm:
        if not args.partition or not args.time:
            raise ConfigError("--slurm needs --partition and --time (e.g. --time 04:00:00).")
        sbatch_args = {}
        for item in args.sbatch_arg:
            key, sep, value = item.partition("=")
            if not sep:
                raise ConfigError(f"--sbatch-arg '{item}': use KEY=VALUE, e.g. account=myproject.")
            sbatch_args[key.lstrip("-")] = value
        max_concurrent = args.max_concurrent
        if args.nodes:
            max_concurrent = args.nodes * args.cores_per_node // args.cpus_per_task
        opts = SlurmOptions(partition=args.partition, time=args.time, cpus_per_task=args.cpus_per_task,
                            mem_per_cpu_gb=args.mem_per_cpu_gb, max_concurrent=max_concurrent,
                            tasks_per_job=args.tasks_per_job, job_name=args.job_name, qos=args.qos or "",
                            venv=args.venv, env_command=args.env_command, container_image=args.container_image,
                            container_mounts=args.container_mounts, sbatch_args=sbatch_args)
        job = launch_slurm(spec, opts)
        if args.print_job_id:
            print(job)
        else:
            print(f"submitted {len(spec.files)} task(s) and the final job {job}; logs and stats in "
                  f"{spec.out}/.prepare/logs. Train after it: sbatch --dependency=afterok:{job} slurm/train.sbatch ...")
        return 0
    begin = time.monotonic()
    manifest = run_local(spec, args.workers)
    _print_summary(spec, manifest, time.monotonic() - begin)
    return 0


def _print_summary(spec, manifest: dict, seconds: float) -> None:
    t = manifest["totals"]
    what = {"mds": f"{t['samples']:,} samples of {spec.seq_len + 1} tokens ({t['tail_tokens']:,} tail tokens unused)",
            "blendcorpus": f"{t['documents']:,} documents in {len(spec.files)} prefix(es), file list {spec.out}/blend.txt",
            "mixture": f"{t['rows']:,} samples indexed in {spec.out}/mixture_index"}[spec.kind]
    tokens = f"{t['tokens']:,} tokens, " if spec.kind != "mixture" else ""
    print(f"prepared {spec.out} from {len(spec.files)} file(s) in {seconds:.1f} s: {tokens}{what}; "
          f"content fingerprint {manifest['content_fingerprint']}")
    if t["bad_records"]:
        print(f"{t['bad_records']:,} bad record(s) skipped (--on-bad-record skip); first ones:", file=sys.stderr)
        for line in manifest["bad_records"][:10]:
            print(f"  {line}", file=sys.stderr)
        print(f"  all listed in {spec.out}/prepare.json", file=sys.stderr)


@reports(ConfigError, DataError)
def cmd_verify(args) -> int:
    from ..prepare.verify import verify

    recorded, actual = verify(args.dir)
    ok = recorded == actual
    print(f"{args.dir}: content fingerprint {actual} {'matches' if ok else 'DIFFERS FROM'} prepare.json ({recorded})")
    return 0 if ok else 1


def register(sub) -> None:
    """Add ``prepare`` to the ``titan-recipes`` subcommands ``sub``."""
    p = sub.add_parser("prepare", help="tokenize / index a corpus on datatrove executors (local or Slurm)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = p.add_subparsers(dest="kind", required=True)
    for kind in KINDS:
        k = kinds.add_parser(kind, help={"mds": "JSONL/Parquet -> MDS shards of seq_len + 1 token windows",
                                         "blendcorpus": "JSONL/Parquet -> Megatron .bin/.idx prefixes + blend.txt",
                                         "mixture": "JSONL -> the mixture engine's DuckDB sample index"}[kind])
        k.add_argument("inputs", nargs="+", help="files, directories, globs or s3://bucket/prefix (.jsonl[.gz|.zst], .parquet)")
        k.add_argument("--out", required=True, help="output directory (local or shared filesystem)")
        k.add_argument("--workers", type=int, default=1, help="processes on this node (default 1)")
        k.add_argument("--text-field", default="text", help="JSON key / Parquet column of the text (default text)")
        k.add_argument("--on-bad-record", choices=("fail", "skip"), default="fail",
                       help="a bad line / unreadable file stops the task (fail, default) or is counted and left out (skip)")
        k.add_argument("--overwrite", action="store_true", help="delete what --out holds first")
        k.add_argument("--no-progress", action="store_true", help="no progress bars")
        k.add_argument("--tokenizer", default=None, help="HF tokenizer directory or SentencePiece .model")
        k.add_argument("--tokenizer-backend", default="auto", choices=("auto", "hf", "sp"), help="default: from the files")
        k.add_argument("--seq-len", type=int, default=None, help="mds: training.seq_len (samples hold N + 1 tokens)")
        k.add_argument("--compression", default=None, help="mds: shard compression (none, zstd, zstd:7, ...)")
        k.add_argument("--size-limit", default="64mb", help="mds: uncompressed bytes per shard (default 64mb)")
        k.add_argument("--corpus", default=None, help="blendcorpus: corpus name in blend.txt (default: --out's name)")
        k.add_argument("--epochs", type=float, default=1.0, help="blendcorpus: weight = tokens x epochs (default 1)")
        k.add_argument("--no-append-eod", action="store_true", help="blendcorpus: no EOS after each document")
        k.add_argument("--parser", default="slimpajama", help="mixture: metadata parser (slimpajama, pile, module:Class)")
        k.add_argument("--name", default=None, help="mixture: dataset name in the index (default: --out's name)")
        s = k.add_argument_group("Slurm (datatrove SlurmPipelineExecutor)")
        s.add_argument("--slurm", action="store_true", help="submit a job array instead of running here")
        s.add_argument("--partition", default=None)
        s.add_argument("--time", default=None, help="time limit per array element, e.g. 04:00:00")
        s.add_argument("--nodes", type=int, default=None, help="nodes to fill: runs nodes x --cores-per-node / "
                                                                 "--cpus-per-task elements at once")
        s.add_argument("--cores-per-node", type=int, default=64)
        s.add_argument("--cpus-per-task", type=int, default=1)
        s.add_argument("--mem-per-cpu-gb", type=int, default=2)
        s.add_argument("--max-concurrent", type=int, default=-1, help="array elements at once (default: no limit)")
        s.add_argument("--tasks-per-job", type=int, default=1, help="input files per array element")
        s.add_argument("--job-name", default="titan-prepare")
        s.add_argument("--qos", default=None)
        s.add_argument("--container-image", default=None, help="run in this image (pyxis srun --container-image)")
        s.add_argument("--container-mounts", default=None, help="pyxis mounts (default: --out at the same path)")
        s.add_argument("--venv", default=None, help="activate this virtual environment in the job")
        s.add_argument("--env-command", default=None, help="shell command that sets up the job's environment")
        s.add_argument("--sbatch-arg", action="append", default=[], metavar="KEY=VALUE", help="extra #SBATCH option")
        s.add_argument("--print-job-id", action="store_true", help="print only the final job's id (for --dependency)")
        k.set_defaults(func=cmd_prepare)
    v = kinds.add_parser("verify", help="recompute a prepared directory's content fingerprint from its data")
    v.add_argument("dir", type=Path)
    v.set_defaults(func=cmd_verify)
