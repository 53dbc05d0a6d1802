#!/usr/bin/env python
r"""Recipe throughput vs the random-token baseline, in one invocation: what does the data loader cost?

    python scripts/bench_recipe_throughput.py --recipe recipes/llama3_1b [--config recipes/llama3_1b/train.toml] \
        [--steps 60] [--warmup 10] [--nproc 1] [--out runs/bench] [-- --section.key value ...]

Trains the recipe twice through its run_train.sh (the way a user launches it): once as configured, once
with ``--training.dataset random`` (uniform random token ids below the tokenizer's size,
``titan_recipes.data.random_tokens``; everything else identical). Both runs log every step
(``--metrics.log_freq 1``) and save no checkpoint. From each run's ``metrics.jsonl`` it takes the mean
of torchtitan's per-device ``throughput(tps)`` and ``mfu(%)`` over the steps after ``--warmup`` (compile
and allocator warm-up), prints both and the ratio recipe / random, and writes
``OUT/recipe_throughput.json``. The two run directories stay under ``--runs-dir`` for ``titan-recipes
runs compare``.

On a GPU node this is the real measurement: the recipe passes when its tokens/s are at least the
random baseline's (ratio >= 1 - --tolerance, the run-to-run noise) and at least the measured torchtitan anchor of
vanilla torchtitan (H100, 1B, bs 4 x 4096, bf16 + compile: 57,800 tok/s, 52.8% MFU). Without a GPU,
run_train.sh picks the recipe's CPU smoke config, and the figures only demonstrate the procedure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from titan_recipes.fixtures import launch_recipe  # noqa: E402
from titan_recipes.records import RUN_FILE, TPS_KEY, read_metrics  # noqa: E402
from titan_recipes.run_files import MFU_KEY  # noqa: E402

ANCHOR = {"device": "H100", "tokens_per_s": 57_800.0, "mfu_percent": 52.8,
          "what": "vanilla torchtitan 0.2.2, random tokens, Llama-3.2-1B shape, bs 4 x 4096, bf16 + compile, 1 GPU"}
"""Measured with vanilla torchtitan 0.2.2: the random-token ceiling the 1B recipe must reach on one H100."""
TARGET_BF16_TOKENS_PER_S = 60_000.0
"""The 1B recipe's aim past the anchor on one H100 (bf16)."""


def steady_mean(rows: list[dict], key: str, warmup: int) -> tuple[float | None, int]:
    """Mean of ``key`` over the rows of steps > ``warmup``, and how many rows that is."""
    values = [r[key] for r in rows if key in r and r["step"] > warmup]
    return (sum(values) / len(values) if values else None), len(values)


def run_once(label: str, recipe: Path, args, overrides: list[str], run_dir: Path) -> dict:
    env = {"CONFIG_FILE": str(Path(args.config).resolve())} if args.config else {}
    command = ["--training.steps", str(args.steps), "--metrics.log_freq", "1", "--checkpoint.no-enable", *overrides]
    print(f"[{label}] training {recipe} for {args.steps} steps on {args.nproc} process(es) -> {run_dir}", flush=True)
    start = time.perf_counter()
    _, proc = launch_recipe(recipe, args.nproc, command, run_dir, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-6000:])
        raise SystemExit(f"[{label}] training failed (exit {proc.returncode}); log in {run_dir}/train.log")
    rows = read_metrics(run_dir / "metrics.jsonl")
    tps, n = steady_mean(rows, TPS_KEY, args.warmup)
    if tps is None:
        raise SystemExit(f"[{label}] no steps after the {args.warmup} warm-up steps: raise --steps above --warmup.")
    mfu, _ = steady_mean(rows, MFU_KEY, args.warmup)
    info = json.loads((run_dir / RUN_FILE).read_text())
    return {
        "run_dir": str(run_dir), "overrides": command, "tokens_per_s": tps, "mfu_percent": mfu, "steps_measured": n,
        "wall_s": round(wall, 1), "device": info["device"], "config_file": info["config_file"],
        "dataset": info["config"]["training"]["dataset"],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, required=True, help="recipe directory (has run_train.sh)")
    parser.add_argument("--config", help="TOML (CONFIG_FILE); default: the recipe's run_train.sh choice")
    parser.add_argument("--steps", type=int, default=60, help="training steps per run (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the means (default 10)")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per run (default 1)")
    parser.add_argument("--tolerance", type=float, default=0.02, help="ratio noise allowed below 1 (default 0.02)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench", help="where recipe_throughput.json goes")
    parser.add_argument("--runs-dir", type=Path, help="where the two run directories go (default: OUT)")
    args = parser.parse_args(argv)
    if not (args.recipe / "run_train.sh").is_file():
        parser.error(f"--recipe {args.recipe}: no run_train.sh there (a recipe directory, e.g. recipes/llama3_1b)")
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}: nothing would be measured")

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = args.runs_dir or args.out
    name = args.recipe.resolve().name
    recipe_run = run_once("recipe", args.recipe, args, extra, runs_dir / f"{name}-bench-recipe-{stamp}")
    random_run = run_once("random", args.recipe, args, [*extra, "--training.dataset", "random"],
                          runs_dir / f"{name}-bench-random-{stamp}")
    ratio = recipe_run["tokens_per_s"] / random_run["tokens_per_s"]
    gpu = not recipe_run["device"].lower().startswith("cpu")
    anchored = gpu and ANCHOR["device"] in recipe_run["device"] and args.nproc == 1
    result = {
        "recipe": name,
        "settings": {"steps": args.steps, "warmup": args.warmup, "nproc": args.nproc, "config": args.config,
                     "tolerance": args.tolerance, "extra_overrides": extra},
        "recipe_run": recipe_run,
        "random_run": random_run,
        "ratio": ratio,
        "loader_costs_nothing": ratio >= 1 - args.tolerance,
        "anchor": ANCHOR,
        "vs_anchor": recipe_run["tokens_per_s"] / ANCHOR["tokens_per_s"] if anchored else None,
        "meets_target_bf16": recipe_run["tokens_per_s"] >= TARGET_BF16_TOKENS_PER_S if anchored else None,
        "note": None if gpu else "CPU run (the recipe's smoke config): demonstrates the procedure, measures no GPU target",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cores": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "recipe_throughput.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    result["json"] = str(path)

    print(f"\n{name} on {recipe_run['device']}, {args.nproc} process(es), steps {args.warmup + 1}-{args.steps}:")
    for label, run in (("recipe", recipe_run), ("random", random_run)):
        mfu = f"{run['mfu_percent']:.1f}% MFU" if run["mfu_percent"] is not None else "MFU -"
        print(f"  {label:<7} {run['dataset']:<12} {run['tokens_per_s']:>12,.0f} tok/s per device  {mfu}")
    print(f"  ratio recipe / random = {ratio:.3f} ({'loader costs nothing' if result['loader_costs_nothing'] else 'LOADER COSTS THROUGHPUT'})")
    if anchored:
        print(f"  vs the {ANCHOR['tokens_per_s']:,.0f} tok/s anchor: {result['vs_anchor']:.3f}; "
              f">= {TARGET_BF16_TOKENS_PER_S:,.0f} tok/s: {result['meets_target_bf16']}")
    elif result["note"]:
        print(f"  {result['note']}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
