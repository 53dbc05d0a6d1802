"""``titan-recipes fixtures``: show, check, verify and record a recipe's expected-loss fixtures.

    titan-recipes fixtures show   RECIPE_DIR
    titan-recipes fixtures check  RECIPE_DIR RUN_DIR [--key KEY]
    titan-recipes fixtures verify RECIPE_DIR [--nproc N]        # run the recipe, then check it
    titan-recipes fixtures regen  RECIPE_DIR [--nproc N] [--repeats R] [-- --section.key value ...]
                                  # native repeats (bitwise equal) + one run per CPU kernel variant

``check`` and ``verify`` print |diff| against the tolerance per step and exit 1 on a mismatch; a
:class:`~titan_recipes.fixtures.FixtureError` prints ``error: ...`` and exits 2. The fixture logic is
:mod:`titan_recipes.fixtures`; this module only parses arguments, launches and prints.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

from .. import fixtures as fx
from . import reports
from .runs import RUNS_DIR


def _new_run_dir(recipe_dir: Path, tag: str) -> Path:
    return RUNS_DIR / f"{Path(recipe_dir).resolve().name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def _launch_or_fail(recipe_dir: Path, nproc: int, overrides: list[str], run_dir: Path, env: dict[str, str] | None = None) -> None:
    extra = " ".join(f"{k}={v}" for k, v in (env or {}).items())
    print(f"training {recipe_dir} with {nproc} process(es) {extra} {' '.join(overrides)} -> {run_dir}".replace("  ", " "), flush=True)
    _, proc = fx.launch_recipe(recipe_dir, nproc, overrides, run_dir, env={**(env or {}), fx.NO_LAUNCH_CHECK_ENV: "1"})
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"training failed (exit {proc.returncode}); log in {run_dir}/train.log")


@reports(fx.FixtureError)
def cmd_show(args) -> int:
    data = fx.load_fixture(args.recipe)
    for key, entry in data["entries"].items():
        losses = entry["losses"]
        try:
            rule = fx.describe_rule(entry, key)
        except fx.FixtureError as e:
            rule = str(e)
        prov = entry["provenance"]
        print(f"{key}: {len(losses)} steps, last loss {list(losses.values())[-1]}")
        print(f"    rule: {rule}")
        print(f"    {prov['command']}  ({prov['date']}, git {(prov.get('git') or {}).get('sha')}, {prov.get('device')})")
        if entry.get("spread"):
            print("    " + fx.spread_table(entry["spread"]).replace("\n", "\n    "))
    return 0


@reports(fx.FixtureError)
def cmd_check(args) -> int:
    result = fx.check_run(args.recipe, args.run, key=args.key)
    print(result.table())
    return 0 if result.ok else 1


@reports(fx.FixtureError)
def cmd_verify(args) -> int:
    key = fx.current_key(args.nproc)
    entry = fx.get_entry(args.recipe, key)
    run_dir = _new_run_dir(args.recipe, f"verify{args.nproc}")
    _launch_or_fail(args.recipe, args.nproc, entry["overrides"], run_dir)
    result = fx.check_run(args.recipe, run_dir, key=key)
    print(result.table())
    return 0 if result.ok else 1


@reports(fx.FixtureError)
def cmd_regen(args) -> int:
    """Record this machine's entry: ``--repeats`` native runs (which must agree bitwise on CPU), then on
    CPU one run per kernel variant; the tolerance comes from the largest spread seen."""
    overrides = args.overrides
    key = fx.current_key(args.nproc)
    cpu = key.startswith("cpu-")
    recipe_rel = os.path.relpath(Path(args.recipe).resolve(), fx.REPO_ROOT)
    recorded_by = shlex.join(["titan-recipes", "fixtures", "regen", recipe_rel, "--nproc", str(args.nproc),
                              "--repeats", str(args.repeats), *(["--", *overrides] if overrides else [])])
    if args.repeats < 2:
        raise SystemExit("fixtures regen needs --repeats >= 2: CPU runs must agree bitwise, GPU runs give the spread.")
    runs = []
    for i in range(args.repeats):
        run_dir = _new_run_dir(args.recipe, f"regen{args.nproc}r{i}")
        _launch_or_fail(args.recipe, args.nproc, overrides, run_dir)
        runs.append(run_dir)
    base = fx.run_losses(runs[0])
    machine = fx.native_machine() if cpu else None
    repeats = {f"repeat-{i}": {"env": {}, **fx.spread(base, fx.run_losses(r))} for i, r in enumerate(runs[1:], start=1)}
    if cpu:
        for name, s in repeats.items():
            if s["max_abs_diff"] != 0.0:
                raise SystemExit(
                    f"CPU runs {runs[0]} and the {name} differ (largest |diff| {s['max_abs_diff']:.3g}): the recipe "
                    "is not deterministic on this machine, so no tolerance can be measured. Find the nondeterminism first."
                )
        # bitwise-equal repeats add nothing to the spread: the kernel variants measure it
        threads = (fx.run_info(runs[0]).get("hardware") or {}).get("torch_threads") or 1
        spreads: dict[str, dict] = {}
        for v in fx.cpu_variants(machine["cpu_capability"], machine["avx512"], int(threads)):
            run_dir = _new_run_dir(args.recipe, f"regen{args.nproc}-{v.name}")
            _launch_or_fail(args.recipe, args.nproc, overrides, run_dir, env=v.env)
            hw = fx.run_info(run_dir).get("hardware") or {}
            spreads[v.name] = {"env": v.env, "what": v.what, "cpu_capability": hw.get("cpu_capability"),
                               "torch_threads": hw.get("torch_threads"), **fx.spread(base, fx.run_losses(run_dir))}
        tol = fx.tolerance_from_spread(spreads, "cpu-kernel-variants", native_repeats_identical=args.repeats,
                                       recorded_by=recorded_by)
    else:
        spreads = repeats
        tol = fx.tolerance_from_spread(spreads, "repeats", repeats=args.repeats, recorded_by=recorded_by)
    print(fx.spread_table(spreads))
    print(f"largest relative spread {tol['tolerance']['max_rel_spread']:.3g} -> rtol {tol['rtol']:.3g} "
          f"({fx.TOLERANCE_MULTIPLE:g} x spread, floor {fx.RTOL_FLOOR:.2g})")
    key = fx.record_entry(args.recipe, runs[0], args.nproc, overrides, tol, spreads, machine=machine)
    print(f"recorded {key} in {Path(args.recipe) / fx.FIXTURE_FILE} from {runs[0]}")
    return 0


def register(sub) -> None:
    """Add ``fixtures {show,check,verify,regen}`` to the ``titan-recipes`` subcommands ``sub``."""
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
    p.add_argument("--repeats", type=int, default=2,
                   help="native runs; CPU runs must agree bitwise (then one run per kernel variant), GPU runs give the spread")
    p.set_defaults(func=cmd_regen, overrides=[])  # main() fills overrides with the arguments after `--`
