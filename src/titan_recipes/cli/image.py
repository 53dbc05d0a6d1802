"""``titan-recipes image``: the GPU image's checks and the GPU check of a node.

    titan-recipes image gpu    [RECIPE] [--nproc N] [--warmup W] [--runs DIR] [-- --section.key value ...]
                               # train RECIPE (recipes/debug) on this node's GPUs, check its fixture,
                               # print throughput/MFU (nox -s gpu)
    titan-recipes image edf    [PATH]       # an EDF with its ${VAR}s expanded from this environment
    titan-recipes image verify [--lock L] [--nccl-root DIR ...] [--expect NAME=VERSION ...]
                               # inside the image (the Dockerfile's last step): packages and NCCL == lock

Recipe overrides of ``gpu`` go after ``--``; any other unknown argument is an error. The image itself is
built by ``nox -s image`` and ``nox -s enroot`` (:mod:`titan_recipes.image`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..image import GPU_LOCK, REPO_ROOT, ContainerError  # standard library only, so --help stays fast
from . import reports


class _OverridesAfterDashes(argparse.ArgumentParser):
    """The parser of each ``image`` command: the words after the first ``--`` are recipe overrides, and
    nothing before it may be left unparsed. argparse alone would let ``gpu``'s optional RECIPE swallow
    ``--training.steps`` after ``--``. The top-level parser hands a subcommand its words (``--``
    included) through this method; the overrides go back as unparsed words, which ``main()`` puts into
    ``args.overrides`` of a command that takes them (``gpu``) and refuses for the others (see
    :mod:`titan_recipes.cli`)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        head, overrides = (args[: args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
        namespace, unknown = super().parse_known_args(head, namespace)
        if unknown:
            hint = (" (recipe overrides go after `--`: titan-recipes image gpu recipes/debug --nproc 8 -- "
                    "--training.steps 50)") if self.get_default("overrides") is not None else ""
            self.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
        return namespace, (["--", *overrides] if overrides else [])


@reports(ContainerError)
def cmd_gpu(args) -> int:
    """Train a recipe on this node's GPUs, check its fixture, print throughput."""
    from ..gpu_check import run_gpu_check

    return run_gpu_check(args.recipe, args.nproc, args.overrides, args.runs, args.warmup)


@reports(ContainerError)
def cmd_edf(args) -> int:
    """Print an EDF with its ``${VAR}``s expanded from this environment."""
    from ..image.edf import render_edf

    print(json.dumps(render_edf(args.path, dict(os.environ)), indent=2))
    return 0


@reports(ContainerError)
def cmd_verify(args) -> int:
    """Check this environment against the lock; exit 1 with one line per problem."""
    from ..image.lock import read_lock
    from ..image.verify import verify_image

    lock = read_lock(args.lock)
    problems = verify_image(lock, args.expect, nccl_roots=[Path(p) for p in args.nccl_root] or None)
    for line in problems:
        print(f"image check: {line}", file=sys.stderr)
    if not problems:
        nccl = f"; one NCCL ({'=='.join(lock.nccl)})" if args.nccl_root else ""
        print(f"image check: {len(lock.pins)} packages match {args.lock}{nccl}")
    return 1 if problems else 0


def register(subparsers) -> None:
    """Add ``image gpu|edf|verify`` to the ``titan-recipes`` subcommands ``subparsers``."""
    group = subparsers.add_parser("image", help="check the GPU image, expand its EDF, run the GPU check",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = group.add_subparsers(dest="action", required=True, parser_class=_OverridesAfterDashes)

    gpu = actions.add_parser("gpu", help="train a recipe on this node's GPUs, check its fixture, print throughput/MFU")
    gpu.add_argument("recipe", type=Path, nargs="?", default=Path("recipes/debug"))
    gpu.add_argument("--nproc", type=int, default=None, help="GPUs to use (default: all visible)")
    gpu.add_argument("--warmup", type=int, default=None,
                     help="logged steps left out of the throughput (default: as run summaries)")
    gpu.add_argument("--runs", type=Path, default=REPO_ROOT / "runs", help="where the run directory goes")
    gpu.set_defaults(func=cmd_gpu, overrides=[])

    p = actions.add_parser("edf", help="print an EDF with its ${VAR}s expanded from this environment")
    p.add_argument("path", type=Path, nargs="?", default=REPO_ROOT / "env" / "titan-recipes.edf.toml")
    p.set_defaults(func=cmd_edf)

    p = actions.add_parser("verify", help="inside the image: installed packages and NCCL against the lock")
    p.add_argument("--lock", type=Path, default=REPO_ROOT / GPU_LOCK)
    p.add_argument("--nccl-root", action="append", default=[], help="directory searched for libnccl (repeatable)")
    p.add_argument("--expect", action="append", default=[], metavar="NAME=VERSION",
                   help="a build arg that must equal the lock: package, nccl, python or cuda-image (repeatable)")
    p.set_defaults(func=cmd_verify)
