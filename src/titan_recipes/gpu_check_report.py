"""Results of ``nox -s gpu_check``: fixture entries recorded or compared, the JSON, the PNG and the table.

The fixture entries a GPU check records go to ``fixtures.json`` in its output directory, as
``{recipe: {key: entry}}`` in the format of ``recipes/<name>/expected_loss.json``
(:func:`titan_recipes.fixtures.record_entry` writes the entry); ``python scripts/gpu_check.py
apply-fixtures OUT/fixtures.json`` (:func:`apply_fixtures`) merges them into the recipes, where they are
committed. The check writes them aside because it runs on a node from a copy of the checkout.

Needs only the standard library (matplotlib for the PNG), so the driver uses it with the node's python3.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from . import fixtures as fx
from .gpu_check import throughput_summary
from .gpu_check_steps import verdict

REPORT_JSON = "gpu_check.json"
REPORT_PNG = "gpu_check.png"
FIXTURES_JSON = "fixtures.json"


def record_fixture(recipe: Path, run_dirs: list[Path], nproc: int = 1) -> tuple[str, dict[str, Any]]:
    """The fixture entry of ``run_dirs`` (repeats of one launch; the first gives the losses, their spread
    the tolerance, as ``titan-recipes fixtures regen`` on a GPU), without touching the recipe: the entry
    is written into a scratch copy of its fixture and read back. Returns (key, entry)."""
    if len(run_dirs) < 2:
        raise fx.FixtureError(f"recording {recipe} needs >= 2 runs for the tolerance, got {len(run_dirs)}.")
    base = fx.run_losses(run_dirs[0])
    spreads = {f"repeat-{i}": {"env": {}, **fx.spread(base, fx.run_losses(r))} for i, r in enumerate(run_dirs[1:], 1)}
    recorded_by = f"scripts/gpu_check.py (nox -s gpu_check), {len(run_dirs)} runs"
    tolerance = fx.tolerance_from_spread(spreads, "repeats", repeats=len(run_dirs), recorded_by=recorded_by)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / Path(recipe).name
        copy.mkdir()
        if (Path(recipe) / fx.FIXTURE_FILE).is_file():
            shutil.copy(Path(recipe) / fx.FIXTURE_FILE, copy / fx.FIXTURE_FILE)
        key = fx.record_entry(copy, run_dirs[0], nproc, [], tolerance, spreads)
        entry = fx.load_fixture(copy)["entries"][key]
    # record_entry names the launch by the recipe directory it was given: name the real one.
    config = entry["provenance"].get("config_file") or ""
    entry["provenance"]["command"] = (f"CONFIG_FILE={config} " if config else "") + f"NGPU={nproc} {recipe}/run_train.sh"
    return key, entry


def apply_fixtures(results: Path, repo: Path) -> list[str]:
    """Merge ``results`` (``{recipe: {key: entry}}``) into each ``repo/recipe/expected_loss.json``."""
    written = []
    for recipe, entries in json.loads(Path(results).read_text()).items():
        path = Path(repo) / recipe / fx.FIXTURE_FILE
        if not path.parent.is_dir():
            raise fx.FixtureError(f"{results} names recipe {recipe}, but {path.parent} is not a directory: run "
                                  "apply-fixtures from the checkout the GPU check ran on.")
        data = json.loads(path.read_text()) if path.is_file() else {"recipe": Path(recipe).name, "entries": {}}
        data["entries"].update(entries)
        data["entries"] = dict(sorted(data["entries"].items()))
        path.write_text(json.dumps(data, indent=2) + "\n")
        written += [f"{recipe}: {key}" for key in entries]
    return written


def throughput_row(step: str, run_dir: Path, warmup: int, wall_s: float) -> dict[str, Any]:
    """A throughput step's result from its run's metrics.jsonl (medians over the steps after ``warmup``)."""
    s = throughput_summary(run_dir, warmup=warmup)
    return {"step": step, "status": "ok", "tokens_per_s": s.tokens_per_s, "mfu_percent": s.mfu_percent,
            "tflops": s.tflops, "peak_memory_gib": s.peak_memory_gib, "steps_measured": len(s.steps),
            "wall_s": round(wall_s, 1), "run_dir": str(run_dir)}


def finish_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add the MDS / random ratio and each row's target and verdict."""
    by_step = {r["step"]: r for r in rows}
    random, mds = by_step.get("1b-random"), by_step.get("1b-mds")
    if random and mds and random.get("tokens_per_s") and mds.get("tokens_per_s"):
        mds["ratio_to_random"] = mds["tokens_per_s"] / random["tokens_per_s"]
    for r in rows:
        r.setdefault("target", verdict(r["step"], r)[0])
        if r.get("verdict") is None:
            r["verdict"] = verdict(r["step"], r)[1]
    return rows


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[dict[str, Any]]) -> str:
    header = f"{'step':<28} {'status':<9} {'tok/s':>10} {'MFU %':>6} {'mem GiB':>8} {'target':<30} verdict"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['step']:<28} {r['status']:<9} {_cell(r.get('tokens_per_s'), ',.0f'):>10} "
                     f"{_cell(r.get('mfu_percent'), '.1f'):>6} {_cell(r.get('peak_memory_gib'), '.1f'):>8} "
                     f"{r.get('target', '-'):<30} {r.get('verdict', '-')}")
        if r.get("detail"):
            lines.append(f"    {r['detail']}")
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """``out/gpu_check.json`` and ``out/gpu_check.png`` (tok/s per step with the targets drawn)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("tokens_per_s")]
    # The recipes' debug configs run ~10x faster than the 1B: each group gets its own panel and scale, so
    # the 1B bars can be read against their targets.
    groups = [g for g in ([r for r in rows if not r["step"].startswith("1b-")],
                          [r for r in rows if r["step"].startswith("1b-")]) if g] or [[]]
    fig, axes = plt.subplots(1, len(groups), squeeze=False, width_ratios=[max(1, len(g)) for g in groups],
                             figsize=(max(6.0, 1.4 * len(rows) + 2), 4.2))
    colors = {"pass": "tab:green", "FAIL": "tab:red"}
    for ax, group in zip(axes[0], groups):
        bars = ax.bar(range(len(group)), [r["tokens_per_s"] for r in group],
                      color=[colors.get(r.get("verdict"), "tab:blue") for r in group])
        ax.bar_label(bars, labels=[f"{r['tokens_per_s']:,.0f}" for r in group], fontsize=8)
        ax.set_xticks(range(len(group)), [r["step"] for r in group], fontsize=8)
        if any(r["step"].startswith("1b-") for r in group):
            for y, name, style in ((57_800, "H100 1B bf16 anchor", "--"), (65_000, "float8 target", ":")):
                ax.axhline(y, color="gray", linestyle=style, linewidth=1, label=f"{name} ({y:,})")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_ylabel("tokens/s per device")
    fig.suptitle(f"gpu_check on {report.get('device')} ({report.get('mode')})", fontsize=10)
    fig.tight_layout()
    png_path = out / REPORT_PNG
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return json_path, png_path
