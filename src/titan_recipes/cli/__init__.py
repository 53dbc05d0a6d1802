"""``titan-recipes`` command line.

    titan-recipes fixtures show   RECIPE_DIR
    titan-recipes fixtures check  RECIPE_DIR RUN_DIR [--key KEY]
    titan-recipes fixtures verify RECIPE_DIR [--nproc N]        # run the recipe, then check it
    titan-recipes fixtures regen  RECIPE_DIR [--nproc N] [--repeats R] [-- --section.key value ...]
                                  # native repeats (bitwise equal) + one run per CPU kernel variant
    titan-recipes prepare mds|blendcorpus|mixture INPUTS... --out DIR [--tokenizer T --seq-len N] [--workers K | --slurm ...]
                                  # corpus-scale tokenization / indexing on datatrove; `prepare verify DIR`
    titan-recipes mixture serve    INDEX_DIR [--host 127.0.0.1] [--port 7777]   # served mode of the mixture engine
    titan-recipes mixture register INDEX_DIR DATA_PATH --name NAME [--parser slimpajama|pile]
    titan-recipes mixture stats    INDEX_DIR [--property P] [--query JSON]
    titan-recipes mixture download-slimpajama OUT [--chunks 1] [--files N]  # needs internet access
    titan-recipes mixture plot     RUN_DIR [-o PNG]                             # per-domain loss + weights
    titan-recipes runs list [DIR] | compare RUN_A RUN_B | plot RUN [--recipe R] [-o PNG]   # run records
    titan-recipes new SRC_RECIPE DST_DIR [--name NAME]        # copy a recipe, fixtures cleared
    titan-recipes image gpu [RECIPE] [-- ...] | edf [PATH] | verify   # GPU check of a node, image checks
    titan-recipes export hf RUN_DIR OUT_DIR [--step N] [--dtype D]   # a checkpoint -> HuggingFace model dir
    titan-recipes export hf-init HF_DIR OUT_DIR --flavor F            # HF weights -> initial_load_in_hf dir
    titan-recipes eval RUN_DIR --tasks T1,T2 [--steps all|last|N,M] [--limit K]   # lm-eval scores per step

``check`` and ``verify`` print |diff| against the tolerance per step and exit 1 on a mismatch.
"""

# How the commands are put together (kept out of the docstring above, which ``--help`` prints):
# each name in GROUPS is a module of this package with ``register(subparsers)``, which adds its
# commands and sets ``func`` (``func(args) -> int``, the exit status) on each. Building the parser
# imports only those modules, which import neither torch, torchtitan, duckdb nor matplotlib: the
# commands import what they need when they run, so ``--help`` answers at once. A command that takes
# training overrides after ``--`` sets the default ``overrides=[]``; main() fills it with the
# arguments argparse did not parse, and refuses them for every other command. A command's expected
# failures print ``error: <message>`` and exit 2 (:func:`reports`).

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Callable

GROUPS = ("fixtures", "runs", "new", "prepare", "mixture", "image", "export", "eval")
"""The command groups, in the order ``--help`` lists them: modules of this package."""


def reports(*errors: type[BaseException]) -> Callable:
    """Decorate a command so that one of ``errors`` prints ``error: <message>`` to stderr and exits 2."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(args: argparse.Namespace) -> int:
            try:
                return func(args)
            except errors as e:
                print(f"error: {e}", file=sys.stderr)
                return 2

        return command

    return decorate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titan-recipes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if "overrides" in vars(args):
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.func(args)
