#!/usr/bin/env python3
r"""One prepared check of a GPU node (``nox -s gpu_check``): install the wheelhouse, train, report.

    python3 scripts/gpu_check.py [--out DIR] [--budget-s 360]   # on the GPU node, with its python3
    python3 scripts/gpu_check.py --dry-run [--out DIR]           # on a CPU machine: everything but the GPU
    python3 scripts/gpu_check.py wheelhouse                      # = nox -s wheelhouse (needs a package index)
    python3 scripts/gpu_check.py apply-fixtures DIR/fixtures.json  # commit what a check recorded

The node needs the checkout and ``wheelhouse/`` (``nox -s wheelhouse`` on a machine with internet; the
wheels of ``env/wheelhouse.txt`` and titan-recipes itself, <= 60 MiB). The check installs them into
``DIR/site`` (``pip install --no-index --no-deps --target``; trained with ``PYTHONPATH=DIR/site`` so the
node's torch is used), proves they import from there, then runs the steps of
:mod:`titan_recipes.gpu_check_steps` under ``timeout``: (a) every recipe's debug config (fixture entry
compared, or recorded into ``DIR/fixtures.json``), (b) the 1B at 4 x 4096 with compile on random tokens
and on MDS shards, (c) float8. It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.png`` and prints a
table (step, status, tok/s, MFU, memory, target, verdict). Exit status 0 when nothing failed.

``--dry-run`` (CPU, CI): the same wheelhouse checks (pip resolves every cp312 pin against the wheelhouse
alone; every wheel's requirements are met by wheels, the node's image or a listed skip), installs what
the running Python can install into a fresh ``--target`` and imports it from there, trains the debug
recipe for 2 steps on the CPU from that install and compares it with the recipe's CPU fixture, prints
every GPU command line it would run, and writes the report ("cpu dry run") from that real run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from titan_recipes import gpu_check_plan as plan  # noqa: E402  (standard library and pip only)
from titan_recipes import gpu_check_steps as steps  # noqa: E402

IMPORTS = ["torchtitan", "torchdata", "tyro", "datasets", "streaming"]
"""Imported from the fresh install to prove it (pure wheels: the dry run installs them too)."""
NODE_IMPORTS = ["duckdb", "megatron.core", "zstd"]
TIMED_OUT = (124, 137)
"""Exit statuses of ``timeout``: the limit ran out (TERM), or the command outlived it by 15 s (KILL)."""
"""cp312-only wheels, imported on the node only."""


def log(message: str) -> None:
    print(message, flush=True)


class Clock:
    """The check's total budget: a step gets min(its own budget, what is left)."""

    def __init__(self, total_s: float):
        self.start, self.total_s = time.monotonic(), total_s

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def budget(self, step: str) -> float:
        return min(steps.BUDGETS_S[step], self.left())


def run(command: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
        log_file: Path | None = None) -> tuple[int, str, float]:
    """(exit status, last output, seconds); 124 when ``timeout`` ran out."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        partial = e.stdout or ""
        code, output = 124, partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(output)
    return code, output[-4000:], time.perf_counter() - start


def install(args, out: Path, clock: Clock, report: dict) -> tuple[Path, dict]:
    """Check the wheelhouse (size, closure, pip's cp312 resolution), install it into ``out/site``, import it.
    Returns the install directory and what the import saw (CUDA, device, torch, torchao)."""
    wheelhouse = Path(args.wheelhouse)
    version = subprocess.run([args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True).stdout.strip()
    if not args.dry_run and version != plan.TARGET_PYTHON:
        raise SystemExit(f"{args.python} is Python {version or '?'}, but the wheelhouse holds CPython "
                         f"{plan.TARGET_PYTHON} wheels for the GPU node: run this with the node's python3 "
                         "(--python), or pass --dry-run to check everything but the GPU on this machine.")
    if not plan.wheels_in(wheelhouse):
        if not args.dry_run:
            raise SystemExit(f"no wheels in {wheelhouse}: run `nox -s wheelhouse` on a machine with a package index "
                             "(a login node) and copy wheelhouse/ to this checkout.")
        report["wheelhouse_build"] = plan.build_wheelhouse(wheelhouse, log=log)  # download time: separate entry
    spec = plan.read_wheelhouse_spec(args.spec)
    size = plan.check_size(wheelhouse)
    needs = plan.check_closure(wheelhouse, spec)
    pins = spec.pins
    command = plan.resolve_command(args.python, wheelhouse, pins, out / "resolve-scratch")
    log("+ " + " ".join(command))
    proc = subprocess.run(command, env=plan.offline_pip_env(os.environ), capture_output=True, text=True,
                          timeout=clock.budget("install"))
    if proc.returncode != 0:
        raise SystemExit(f"pip cannot resolve the cp312 pins from {wheelhouse} alone (exit {proc.returncode}):\n"
                         f"{proc.stderr[-4000:]}")
    resolved = sorted(i["download_info"]["url"].rsplit("/", 1)[-1] for i in json.loads(proc.stdout)["install"])
    outside = [u for u in resolved if not (wheelhouse / u).is_file()]
    if len(resolved) != len(pins) or outside:
        raise SystemExit(f"pip resolved {len(resolved)} wheels for {len(pins)} pins, not all from {wheelhouse}: {outside}")
    wheels = plan.wheels_in(wheelhouse)
    if args.dry_run:
        wheels = plan.installable_here(wheels)  # the cp312-only ones were resolved above
    site = out / "site"
    command = plan.install_command(args.python, wheels, site)
    log("+ " + " ".join(command[:11]) + f" <{len(wheels)} wheels>")
    code, output, install_s = run(command, env=plan.offline_pip_env(os.environ), timeout=clock.budget("install"))
    if code != 0:
        raise SystemExit(f"installing the wheelhouse into {site} failed (exit {code}):\n{output}")
    modules = IMPORTS + ([] if args.dry_run else NODE_IMPORTS)
    code, output, _ = run(steps.import_check_command(args.python, modules), env={"PYTHONPATH": steps.search_path(site)},
                          timeout=120)
    if code != 0:
        raise SystemExit(f"importing {modules} from {site} failed:\n{output}")
    where = dict(line.split("=", 1) for line in output.splitlines() if line.split("=", 1)[0] in modules)
    elsewhere = {m: p for m, p in where.items() if not Path(p).resolve().is_relative_to(site.resolve())}
    if elsewhere or len(where) != len(modules):
        raise SystemExit(f"imported from outside {site}: {elsewhere or where}; PYTHONPATH does not reach the install.")
    report["wheelhouse"] = {"dir": str(wheelhouse), "wheels": len(plan.wheels_in(wheelhouse)), "bytes": size,
                            "limit_bytes": plan.WHEELHOUSE_LIMIT_BYTES, "resolved_cp312": resolved,
                            "installed": [w.name for w in wheels], "install_s": round(install_s, 1),
                            "needs_from_node": needs, "imported_from_site": sorted(where)}
    log(f"wheelhouse: {len(plan.wheels_in(wheelhouse))} wheels, {size / 2**20:.1f} MiB; {len(resolved)} cp312 pins "
        f"resolved offline; {len(wheels)} installed into {site} in {install_s:.1f} s; {', '.join(modules)} import from it")
    return site, json.loads(next(line[6:] for line in output.splitlines() if line.startswith("PROBE ")))


def launch(item: steps.Launch, args, site: Path, timeout_s: float, out: Path) -> tuple[int, str, float]:
    """``item`` under ``timeout``; its console output goes to ``out/logs/<run>.log`` (train.log has it too)."""
    return run(item.command(REPO, timeout_s), env=item.environment(args.python, site), timeout=timeout_s + 30,
               log_file=out / "logs" / f"{item.run_dir.name}.log")


def judge(group: list[steps.Launch], key: str, compare_steps: list[int] | None, recorded: dict) -> dict:
    """A fixture step's verdict: its run compared with the entry for ``key``, or (two runs) an entry
    recorded into ``recorded``."""
    from titan_recipes import fixtures as fx
    from titan_recipes.gpu_check_report import record_fixture

    recipe, first = group[0].recipe, group[0].run_dir
    if len(group) == 1:
        result = fx.check_run(REPO / recipe, first, key=key, steps=compare_steps)
        worst = max((abs(r.actual - r.expected) / max(r.bound, 1e-30) for r in result.rows
                     if r.actual is not None and r.expected is not None), default=float("nan"))
        if not result.ok:
            log(result.table())
        return {"verdict": "pass" if result.ok else "FAIL", "target": f"fixture {key}",
                "detail": f"{len(result.rows)} steps vs {key}: {'match' if result.ok else 'MISMATCH'}, "
                          f"largest |diff| / bound {worst:.3g}"}
    found, entry = record_fixture(Path(recipe), [item.run_dir for item in group])
    recorded.setdefault(recipe, {})[found] = entry
    return {"verdict": "recorded", "target": f"fixture {found}",
            "detail": f"no entry {key}: recorded from {len(group)} runs, rtol {entry['rtol']:.3g} "
                      f"(spread {entry['tolerance']['max_rel_spread']:.3g})"}


def fixture_step(args, site: Path, out: Path, clock: Clock, key: str, recipes: dict[str, str],
                 overrides: list[str], compare_steps: list[int] | None, report: dict) -> list[dict]:
    """(a): compare each recipe with its entry for ``key``, or record one (two runs) when it has none."""
    from titan_recipes import fixtures as fx
    from titan_recipes.gpu_check_report import throughput_row
    from titan_recipes.image import ContainerError

    def has_entry(recipe):
        try:
            return key in fx.load_fixture(REPO / recipe)["entries"]
        except fx.FixtureError:
            return False

    groups = steps.fixture_launches(out, 2, recipes, overrides)
    groups = [g if not has_entry(g[0].recipe) else g[:1] for g in groups]
    timeout_s = clock.budget("fixtures") / max(len(g) for g in groups)
    for g in groups:
        for item in g:
            log("+ " + item.display(REPO, args.python, site, timeout_s))

    def run_group(group):
        return [launch(item, args, site, timeout_s, out) for item in group]

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        results = list(pool.map(run_group, groups))
    rows, recorded = [], {}
    for group, outcome in zip(groups, results):
        recipe = group[0].recipe
        row = {"step": f"fixture {Path(recipe).name}", "wall_s": round(sum(o[2] for o in outcome), 1)}
        failed = [(item, o) for item, o in zip(group, outcome) if o[0] != 0]
        if failed:
            item, (code, output, _) = failed[0]
            row.update(status="timeout" if code in TIMED_OUT else "failed", verdict="FAIL",
                       detail=f"exit {code}; log {out / 'logs' / (item.run_dir.name + '.log')}: {output.strip()[-300:]}")
        else:
            first = group[0].run_dir
            try:
                row.update(throughput_row(row["step"], first, 1, row["wall_s"]))
            except ContainerError as e:  # too few logged steps for a median: the losses still count
                row.update(status="ok", detail=str(e))
            try:
                row.update(judge(group, key, compare_steps, recorded))
            except fx.FixtureError as e:  # a run without losses, a non-finite loss: this recipe fails, not the check
                row.update(verdict="FAIL", detail=f"fixture: {e}")
        rows.append(row)
    if recorded:
        path = out / "fixtures.json"
        path.write_text(json.dumps(recorded, indent=2) + "\n")
        report["fixtures_file"] = str(path)
        log(f"recorded {sum(len(v) for v in recorded.values())} fixture entr(ies) into {path}; commit them with "
            f"`python3 scripts/gpu_check.py apply-fixtures {path}` in the checkout, then `git diff recipes/`")
    return rows


def throughput_steps(args, site: Path, out: Path, clock: Clock, float8: bool) -> list[dict]:
    """(b) and (c): the 1B at 4 x 4096 with compile; MDS shards written first."""
    from titan_recipes.gpu_check_report import throughput_row

    mds = out / "mds_random"
    code, output, seconds = run(steps.mds_command(args.python, mds), env={"PYTHONPATH": steps.search_path(site)},
                                timeout=120)
    if code != 0:
        raise SystemExit(f"writing the synthetic MDS set into {mds} failed:\n{output}")
    log(f"wrote {steps.MDS_SAMPLES} MDS samples of {steps.SEQ_LEN + 1} random ids into {mds} in {seconds:.1f} s")
    steps.write_1b_tomls(out, mds)
    rows = []
    for item in steps.throughput_launches(out, args.steps, float8=float8):
        budget = clock.budget(item.step)
        if budget < 30:
            rows.append({"step": item.step, "status": "skipped", "detail": f"{clock.left():.0f} s of the budget left"})
            continue
        log("+ " + item.display(REPO, args.python, site, budget))
        code, output, wall = launch(item, args, site, budget, out)
        if code != 0:
            rows.append({"step": item.step, "status": "timeout" if code in TIMED_OUT else "failed", "verdict": "FAIL",
                         "wall_s": round(wall, 1), "detail": f"exit {code}: {output.strip()[-300:]}"})
            continue
        rows.append(throughput_row(item.step, item.run_dir, steps.THROUGHPUT_WARMUP, wall))
    if not float8:
        rows.append({"step": "1b-float8", "status": "skipped", "detail": "torchao does not import on this node"})
    return rows


def dry_run_1b_inputs(args, site: Path, gpu_out: Path, launches: list[steps.Launch], report: dict) -> list[dict]:
    """What the 1B steps need, made for real on the CPU: the synthetic MDS set (with the installed
    streaming) and their configs parsed as the trainer parses them. Rows "planned": no training."""
    code, output, seconds = run(steps.mds_command(args.python, gpu_out / "mds_random"),
                                env={"PYTHONPATH": steps.search_path(site)}, timeout=120)
    if code != 0:
        raise SystemExit(f"writing the synthetic MDS set into {gpu_out / 'mds_random'} failed:\n{output}")
    code, output, parse_s = run(steps.config_check_command(args.python, launches),
                                env={"PYTHONPATH": steps.search_path(site)}, timeout=120)
    if code != 0:
        raise SystemExit(f"the 1B command lines do not parse as titan_recipes.train parses them:\n{output}")
    parsed = [json.loads(line[7:]) for line in output.splitlines() if line.startswith("CONFIG ")]
    report["planned_1b"] = {"mds_dir": str(gpu_out / "mds_random"), "mds_write_s": round(seconds, 1),
                            "config_parse_s": round(parse_s, 1), "configs": parsed}
    log(f"dry run: wrote the 1B steps' MDS set in {seconds:.1f} s; their {len(parsed)} configs parse ({parse_s:.1f} s)")
    return [{"step": c["step"], "status": "planned",
             "detail": f"GPU only; parsed: {c['flavor']} {c['batch']} x {c['seq_len']}, compile {c['compile']}, "
                       f"dataset {c['dataset']}, converters {c['converters']}"} for c in parsed]


def check(args) -> int:
    from titan_recipes.gpu_check_report import finish_rows, table, write_report

    out = Path(args.out or REPO / "runs" / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    clock = Clock(args.budget_s)
    report = {"mode": "cpu dry run" if args.dry_run else "gpu", "out": str(out), "python": args.python}
    site, info = install(args, out, clock, report)
    report["install_phase_s"] = round(time.monotonic() - clock.start, 1)  # checks, install, import (download apart)
    report.update(device=info["device"], torch=info["torch"], torchao=info["torchao"])
    from titan_recipes import fixtures as fx

    if args.dry_run:
        key = fx.fixture_key(info["device"], info["torch"], 1)
        dry = {"recipes/debug": steps.FIXTURE_RECIPES["recipes/debug"]}
        rows = fixture_step(args, site, out, clock, key, dry, ["--training.steps", "2", "--checkpoint.no-enable"],
                            [1, 2], report)
        gpu_out = out / "gpu-plan"
        log("GPU steps this dry run does not run (on the node, with timeouts from the budget):")
        for group in steps.fixture_launches(gpu_out, 2):  # two runs each: recording, the first time
            for item in group:
                log("  would run: " + item.display(REPO, "python3", gpu_out / "site", steps.BUDGETS_S["fixtures"] / 2))
        gpu_out.mkdir(exist_ok=True)
        steps.write_1b_tomls(gpu_out, gpu_out / "mds_random")
        log("  would run: " + " ".join(steps.mds_command("python3", gpu_out / "mds_random")))
        launches = steps.throughput_launches(gpu_out, args.steps)
        for item in launches:
            log("  would run: " + item.display(REPO, "python3", gpu_out / "site", steps.BUDGETS_S[item.step]))
        rows += dry_run_1b_inputs(args, site, gpu_out, launches, report)
    else:
        if not info["cuda"]:
            raise SystemExit(f"no CUDA GPU visible to {args.python} (torch {info['torch']}): run this on the GPU node, "
                             "or pass --dry-run to check everything else on a CPU machine.")
        key = fx.fixture_key(info["device"], info["torch"], 1)
        rows = fixture_step(args, site, out, clock, key, steps.FIXTURE_RECIPES, [], None, report)
        rows += throughput_steps(args, site, out, clock, info["torchao"])
    report["key"] = key
    report["rows"] = finish_rows(rows)
    report["total_s"] = round(time.monotonic() - clock.start, 1)
    json_path, png_path = write_report(out, report)
    log(table(report["rows"]))
    log(f"{report['mode']} on {info['device']}, {report['total_s']} s; report {json_path}, {png_path}")
    return 1 if any(r.get("verdict") == "FAIL" or r["status"] in ("failed", "timeout") for r in report["rows"]) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["wheelhouse"]:
        plan.build_wheelhouse(Path(argv[1]) if len(argv) > 1 else plan.WHEELHOUSE, log=log)
        return 0
    if argv[:1] == ["apply-fixtures"]:
        from titan_recipes.gpu_check_report import apply_fixtures

        if len(argv) != 2:
            raise SystemExit("usage: scripts/gpu_check.py apply-fixtures DIR/fixtures.json")
        for line in apply_fixtures(Path(argv[1]), REPO):
            log(f"wrote {line}")
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU: everything but the GPU steps")
    parser.add_argument("--out", type=Path, help="output directory (default runs/gpu_check-<time>)")
    parser.add_argument("--wheelhouse", type=Path, default=plan.WHEELHOUSE)
    parser.add_argument("--spec", type=Path, default=plan.SPEC_FILE)
    parser.add_argument("--python", default=sys.executable, help="interpreter that trains (the node's python3)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="total time for all steps (6 min)")
    parser.add_argument("--steps", type=int, default=steps.THROUGHPUT_STEPS, help="steps of each 1B run")
    return check(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
