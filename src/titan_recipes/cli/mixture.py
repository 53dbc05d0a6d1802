"""``titan-recipes mixture ...``: serve, register, inspect and download data for the mixture engine.

    titan-recipes mixture serve INDEX_DIR [--host 127.0.0.1] [--port 7777]
    titan-recipes mixture register INDEX_DIR DATA_PATH --name NAME [--parser slimpajama|pile]
    titan-recipes mixture stats INDEX_DIR [--property P] [--query JSON]
    titan-recipes mixture download-slimpajama OUT [--chunks 1 2] [--files N]    # needs internet access
    titan-recipes mixture plot RUN_DIR [-o PNG]    # per-domain loss and mixture weights of a run

``serve`` answers the training ranks of served mode (:mod:`titan_recipes.data.mixture.server`) until
SIGTERM or Ctrl-C. ``register`` indexes a file, directory or glob of JSONL files (resumable: run it
again after an interruption and it continues with the files not finished). ``stats`` prints the
samples and bytes of each domain (value of ``--property``) among the samples matching ``--query`` (the
``[mixture] query`` format: a JSON list of groups of ``[property, op, value]``).
``download-slimpajama`` fetches ``train/chunk<K>/example_train_<I>.jsonl.zst`` files of
cerebras/SlimPajama-627B from the Hugging Face Hub into ``OUT/train/chunk<K>/`` (skipping files
already there), ready for ``register --parser slimpajama``. Errors are printed as ``error: ...`` with
exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.mixture.parsers import PARSERS
from ..errors import ConfigError, DataError
from . import reports

if TYPE_CHECKING:
    from ..data.mixture.index import SampleIndex

logger = logging.getLogger(__name__)

# Served mode's defaults, repeated here so that building the parser does not import the server (and
# with it duckdb and pyarrow); tests/unit/test_help.py checks that they equal the server's.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777

SLIMPAJAMA_URL = "https://huggingface.co/datasets/cerebras/SlimPajama-627B/resolve/main"
"""Where ``download-slimpajama`` reads ``train/chunk<K>/example_train_<I>.jsonl.zst`` (K in 1..10)."""
SLIMPAJAMA_CHUNKS = range(1, 11)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..data.mixture.server import MixtureServer

    _logging()
    server = MixtureServer(args.index_dir, args.host, args.port, log_interval=args.log_interval)

    def stop(signum: int, _frame: Any) -> None:
        logger.info("Mixture server: %s received, stopping.", signal.Signals(signum).name)
        server.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.shutdown()
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from ..data.mixture.index import SampleIndex

    _logging()
    start = time.perf_counter()
    with SampleIndex(args.index_dir) as index:
        report = index.register_dataset(args.name, args.data_path, parser=args.parser, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    print(
        f"dataset {report.dataset}: indexed {report.files_indexed} file(s), skipped {report.files_skipped} already "
        f"indexed; {report.samples_added:,d} new sample(s) in {seconds:.1f} s "
        f"({report.samples_added / max(seconds, 1e-9):,.0f} rows/s); {report.samples_total:,d} sample(s) in all"
    )
    return 0


def domain_stats(index: SampleIndex, prop: str, query: Any = None) -> list[dict[str, Any]]:
    """``[{"domain", "samples", "bytes"}]`` per value of ``prop`` among samples matching ``query``
    (None: all), sorted by value; samples without the property are left out, as in domain_counts."""
    from ..data.mixture.query import Query

    known = index.properties
    if prop not in known:
        raise ConfigError(f"Unknown property {prop!r}; the index {index.path} knows {sorted(known)}.")
    query = query or Query()
    where, params = query.compile(known)
    rows = index.con.execute(
        f'SELECT "{prop}", count(*), sum(n_bytes) FROM samples WHERE ({where}) AND "{prop}" IS NOT NULL '
        f"GROUP BY 1 ORDER BY 1",
        params,
    ).fetchall()
    return [{"domain": d, "samples": n, "bytes": int(b)} for d, n, b in rows]


def cmd_stats(args: argparse.Namespace) -> int:
    from ..bench import format_table
    from ..data.mixture.index import SampleIndex
    from ..data.mixture.config import query_from_config

    try:
        groups = json.loads(args.query) if args.query else None
    except json.JSONDecodeError as e:
        raise ConfigError(f"--query {args.query!r} is not JSON ({e}); write e.g. "
                          f"'[[[\"redpajama_set_name\", \"!=\", \"RedPajamaBook\"]]]'.") from None
    query = query_from_config(groups)
    with SampleIndex(args.index_dir, read_only=True) as index:
        known = index.properties
        prop = args.property
        if prop is None:
            if len(known) != 1:
                raise ConfigError(f"The index {index.path} has properties {sorted(known)}; choose one with --property.")
            prop = next(iter(known))
        stats = domain_stats(index, prop, query)
        datasets = index.datasets()
    total = sum(s["samples"] for s in stats)
    total_bytes = sum(s["bytes"] for s in stats)
    rows = [[s["domain"], s["samples"], f"{s['samples'] / total:.2%}", s["bytes"] / 2**20,
             s["bytes"] / max(s["samples"], 1)] for s in stats]
    rows.append(["total", total, "100.00%" if total else "-", total_bytes / 2**20, total_bytes / max(total, 1)])
    print(f"{args.index_dir}: datasets " + ", ".join(f"{d['name']} ({d['samples']:,d} samples, {d['files_done']}/"
                                                   f"{d['files']} files)" for d in datasets))
    print(f"domains of {prop!r}" + (f" among samples matching {query}" if query else "") + ":")
    print(format_table([prop, "samples", "share", "MiB", "bytes/sample"], rows))
    return 0


def slimpajama_url(base: str, chunk: int, file: int) -> tuple[str, str]:
    """``(url, path relative to OUT)`` of SlimPajama file ``example_train_<file>`` of ``chunk``."""
    rel = f"train/chunk{chunk}/example_train_{file}.jsonl.zst"
    return f"{base.rstrip('/')}/{rel}", rel


def cmd_plot(args: argparse.Namespace) -> int:
    from ..data.mixture.plot import plot_domains

    print(plot_domains(args.run, args.output))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    bad = [c for c in args.chunks if c not in SLIMPAJAMA_CHUNKS]
    if bad or args.files <= 0:
        raise ConfigError(f"SlimPajama-627B has train chunks 1..10 of ~5,900 files each; got --chunks {args.chunks} "
                          f"--files {args.files}.")
    for chunk in args.chunks:
        for i in range(args.files):
            url, rel = slimpajama_url(args.base_url, chunk, i)
            path = args.out / rel
            if path.is_file():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(path.name + ".part")
            try:
                with urllib.request.urlopen(url, timeout=args.timeout) as response, open(part, "wb") as f:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(total=total, unit="B", unit_scale=True, desc=rel, disable=args.no_progress) as bar:
                        while block := response.read(1 << 20):
                            f.write(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError) as e:
                part.unlink(missing_ok=True)
                raise DataError(
                    f"Cannot download {url} ({type(e).__name__}: {e}). This command needs internet access to "
                    f"{args.base_url}; on an offline machine download the files elsewhere and copy them into "
                    f"{args.out}/train/chunk<K>/, then run `titan-recipes mixture register`."
                ) from None
            part.rename(path)
    print(f"SlimPajama chunk(s) {args.chunks}, {args.files} file(s) each, in {args.out}")
    return 0


_guarded = reports(ConfigError, DataError)


def register(subparsers: Any) -> None:
    """Add ``mixture {serve,register,stats,download-slimpajama,plot}`` to the ``titan-recipes`` subparsers."""
    mix = subparsers.add_parser(
        "mixture", help="mixture engine: serve an index, register data, domain statistics, download SlimPajama",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(dest="action", required=True)

    p = mix.add_parser("serve", help="serve a sample index to training ranks over TCP (served mode)")
    p.add_argument("index_dir", type=Path, help="directory holding index.duckdb (opened read-only)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}; "
                   "0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    p.add_argument("--log-interval", type=float, default=60.0, help="seconds between request-count logs (default 60)")
    p.set_defaults(func=_guarded(cmd_serve))

    p = mix.add_parser("register", help="index JSONL files (.jsonl, .jsonl.gz, .jsonl.zst) as a dataset; resumable")
    p.add_argument("index_dir", type=Path, help="index directory (created if missing)")
    p.add_argument("data_path", help="a JSONL file, a directory (searched recursively) or a glob pattern")
    p.add_argument("--name", required=True, help="dataset name in the index")
    p.add_argument("--parser", default="slimpajama", choices=sorted(PARSERS),
                   help="metadata parser (default slimpajama)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_guarded(cmd_register))

    p = mix.add_parser("stats", help="samples, share and bytes of each domain")
    p.add_argument("index_dir", type=Path)
    p.add_argument("--property", help="the property whose values are the domains (default: the only one)")
    p.add_argument("--query", help='only samples matching this JSON query, e.g. \'[[["quality", ">", 0.5]]]\'')
    p.set_defaults(func=_guarded(cmd_stats))

    p = mix.add_parser(
        "download-slimpajama", help="download SlimPajama-627B train files (needs internet access)",
        description=f"Download train/chunk<K>/example_train_<I>.jsonl.zst of cerebras/SlimPajama-627B "
                    f"(I = 0..FILES-1) from {SLIMPAJAMA_URL} into OUT. Needs internet access; files already in OUT "
                    f"are skipped.",
    )
    p.add_argument("out", type=Path, help="output directory")
    p.add_argument("--chunks", type=int, nargs="+", default=[1], help="train chunk numbers, 1..10 (default 1)")
    p.add_argument("--files", type=int, default=1, help="files per chunk, from example_train_0 (default 1)")
    p.add_argument("--base-url", default=SLIMPAJAMA_URL, help="dataset URL (default: the Hugging Face Hub)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per connection attempt (default 60)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_guarded(cmd_download))

    p = mix.add_parser("plot", help="PNG of a mixture run's per-domain loss and weights over the steps")
    p.add_argument("run", type=Path, help="run directory (with metrics.jsonl)")
    p.add_argument("-o", "--output", type=Path, default=None, help="PNG path (default: RUN/domains.png)")
    p.set_defaults(func=_guarded(cmd_plot))
