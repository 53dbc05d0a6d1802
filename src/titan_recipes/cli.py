"""``titan-recipes`` command line.

    titan-recipes fixtures show   RECIPE_DIR
    titan-recipes fixtures check  RECIPE_DIR RUN_DIR [--key KEY]
    titan-recipes fixtures verify RECIPE_DIR [--nproc N]        # run the recipe, then check it
    titan-recipes fixtures regen  RECIPE_DIR [--nproc N] [--repeats R] [-- --section.key value ...]
    titan-recipes mixture serve    INDEX_DIR [--host 127.0.0.1] [--port 7777]   # served mode of the mixture engine
    titan-recipes mixture register INDEX_DIR DATA_PATH --name NAME [--parser slimpajama|pile]
    titan-recipes mixture stats    INDEX_DIR [--property P] [--query JSON]
    titan-recipes mixture download-slimpajama OUT [--chunks 1] [--files N]  # needs internet access
    titan-recipes mixture plot     RUN_DIR [-o PNG]                             # per-domain loss + weights
    titan-recipes runs list [DIR] | compare RUN_A RUN_B | plot RUN [--recipe R] [-o PNG]   # run records
    titan-recipes new SRC_RECIPE DST_DIR [--name NAME]        # copy a recipe, fixtures cleared

``check`` and ``verify`` print a step-by-step diff table and exit 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import fixtures as fx
from .data.mixture.cli import add_mixture_commands
from .runs_cli import register as register_runs_commands

RUNS_DIR = fx.REPO_ROOT / "runs"
GPU_RTOL_FLOOR = 1e-4


def _new_run_dir(recipe_dir: Path, tag: str) -> Path:
    return RUNS_DIR / f"{Path(recipe_dir).resolve().name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def _launch_or_fail(recipe_dir: Path, nproc: int, overrides: list[str], run_dir: Path) -> None:
    print(f"training {recipe_dir} with {nproc} process(es) {' '.join(overrides)} -> {run_dir}", flush=True)
    _, proc = fx.launch_recipe(recipe_dir, nproc, overrides, run_dir)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"training failed (exit {proc.returncode}); log in {run_dir}/train.log")


def cmd_show(args) -> int:
    data = fx.load_fixture(args.recipe)
    for key, entry in data["entries"].items():
        losses = entry["losses"]
        rule = f"rtol {entry['rtol']}" if entry.get("rtol") is not None else f"{entry['decimals']} decimals"
        print(f"{key}: {len(losses)} steps, {rule}, last loss {list(losses.values())[-1]}")
        print(f"    {entry['provenance']['command']}  ({entry['provenance']['date']}, git {(entry['provenance'].get('git') or {}).get('sha')})")
    return 0


def cmd_check(args) -> int:
    result = fx.check_run(args.recipe, args.run, key=args.key)
    print(result.table())
    return 0 if result.ok else 1


def cmd_verify(args) -> int:
    key = fx.current_key(args.nproc)
    entry = fx.get_entry(args.recipe, key)
    run_dir = _new_run_dir(args.recipe, f"verify{args.nproc}")
    _launch_or_fail(args.recipe, args.nproc, entry["overrides"], run_dir)
    result = fx.check_run(args.recipe, run_dir, key=key)
    print(result.table())
    return 0 if result.ok else 1


def cmd_regen(args) -> int:
    overrides = args.overrides
    runs = []
    for i in range(args.repeats):
        run_dir = _new_run_dir(args.recipe, f"regen{args.nproc}r{i}")
        _launch_or_fail(args.recipe, args.nproc, overrides, run_dir)
        runs.append(run_dir)
    rtol = None
    if not fx.current_key(args.nproc).startswith("cpu-"):
        if args.repeats < 2:
            raise SystemExit("GPU fixtures need --repeats >= 2 to derive their relative tolerance.")
        base = fx.run_losses(runs[0])
        spread = max(
            abs(fx.run_losses(r)[s] - v) / abs(v) for r in runs[1:] for s, v in base.items()
        )
        rtol = max(2 * spread, GPU_RTOL_FLOOR)
        print(f"max relative spread over {args.repeats} runs: {spread:.3g} -> rtol {rtol:.3g}")
    else:
        base = fx.run_losses(runs[0])
        for r in runs[1:]:
            other = fx.run_losses(r)
            if {s: round(v, fx.CPU_DECIMALS) for s, v in other.items()} != {
                s: round(v, fx.CPU_DECIMALS) for s, v in base.items()
            }:
                raise SystemExit(f"CPU runs {runs[0]} and {r} differ: the recipe is not deterministic here.")
    key = fx.record_entry(args.recipe, runs[0], args.nproc, overrides, rtol=rtol)
    print(f"recorded {key} in {Path(args.recipe) / fx.FIXTURE_FILE} from {runs[0]}")
    print(json.dumps(fx.get_entry(args.recipe, key)["losses"]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="titan-recipes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fix = sub.add_parser("fixtures", help="expected-loss fixtures").add_subparsers(dest="action", required=True)

    p = fix.add_parser("show", help="list a recipe's fixture entries")
    p.add_argument("recipe", type=Path)
    p.set_defaults(func=cmd_show)

    p = fix.add_parser("check", help="compare a finished run with the recipe's fixture")
    p.add_argument("recipe", type=Path)
    p.add_argument("run", type=Path)
    p.add_argument("--key", help="fixture key (default: derived from the run's device, torch and world size)")
    p.set_defaults(func=cmd_check)

    p = fix.add_parser("verify", help="train the recipe with the fixture's overrides and compare")
    p.add_argument("recipe", type=Path)
    p.add_argument("--nproc", type=int, default=1)
    p.set_defaults(func=cmd_verify)

    p = fix.add_parser("regen", help="record this machine's fixture entry from real run(s)")
    p.add_argument("recipe", type=Path)
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="runs to make; CPU runs must agree, GPU runs give rtol")
    p.set_defaults(func=cmd_regen)
    add_mixture_commands(sub)
    register_runs_commands(sub)  # runs list/compare/plot, new
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    if getattr(args, "action", None) == "regen":
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except fx.FixtureError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
