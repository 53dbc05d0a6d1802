"""``titan-recipes runs``: look at run records.

    titan-recipes runs list    [DIR]                                   # table of the runs under DIR (runs/)
    titan-recipes runs compare RUN_A RUN_B                             # config diff + per-step losses
    titan-recipes runs plot    RUN [--recipe R] [--key K] [-o out.png]  # loss vs the recipe's fixture

A run directory is what a launch wrote (:mod:`titan_recipes.records`): ``run.json``, ``metrics.jsonl``
and, once the launch ended, ``summary.json``. A run without one (still training, killed hard, or
recorded before summaries existed) is summarized from its metrics: exit ``completed`` /
``stop_at_step`` / ``preempted`` when its last step says so, ``unfinished?`` otherwise. ``plot`` finds the recipe from the run's
config file (``recipes/<name>/train.toml`` -> ``recipes/<name>``) unless ``--recipe`` is given, and draws
the fixture entry of the run's key (device, torch, world size) when the recipe has one.

Reading a run needs only :mod:`titan_recipes.run_files`; :mod:`titan_recipes.records` (torch) is
imported only to summarize a run that has no ``summary.json``, matplotlib only to plot.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import fixtures as fx
from .. import run_files
from . import reports

RUNS_DIR = fx.REPO_ROOT / "runs"


class RunsError(RuntimeError):
    """A run directory is missing or unreadable, or the arguments do not fit the runs found."""


_reports_errors = reports(RunsError, fx.FixtureError)


# -- reading a run ---------------------------------------------------------------------------------


def load_run(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of ``run_dir``, with ``summary`` (``summary.json``, or one computed from
    ``metrics.jsonl`` when the launch has not written it) and ``rows`` (merged metrics rows)."""
    run_dir = Path(run_dir)
    path = run_dir / run_files.RUN_FILE
    if not path.is_file():
        raise RunsError(f"{path} not found: {run_dir} is not a titan-recipes run directory (run_train.sh writes one).")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunsError(f"{path} is not valid JSON: {e}") from None
    metrics = run_dir / run_files.METRICS_FILE
    rows = run_files.read_metrics(metrics) if metrics.is_file() else []
    summary_path = run_dir / run_files.SUMMARY_FILE
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    else:
        from .. import records  # imports torch: only for a run without summary.json
        from ..preemption import PREEMPTED_FILE

        cfg = info.get("config", {})
        stats = records.LaunchStats.of(rows)
        summary = records.summarize(
            stats, last_step=stats.final_loss_step,
            training_steps=cfg.get("training", {}).get("steps", -1),
            stop_at_step=cfg.get("launch", {}).get("stop_at_step", -1),
            preempted=(run_dir / PREEMPTED_FILE).is_file(), error=None, wall_time_s=0.0,
        )
        summary["wall_time_s"] = None
        if summary["exit_reason"] == "stopped":
            summary["exit_reason"] = "unfinished?"
    return {**info, "summary": summary, "rows": rows, "dir": run_dir}


def recipe_of(info: dict[str, Any]) -> Path | None:
    """The recipe directory a run's config file lives in, if that directory holds a fixture file."""
    config_file = info.get("config_file")
    if not config_file:
        return None
    recipe = Path(config_file).parent
    return recipe if (recipe / fx.FIXTURE_FILE).is_file() else None


def _fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------------


@_reports_errors
def cmd_list(args) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise RunsError(f"{root} is not a directory; runs are written under {RUNS_DIR} unless RUN_DIR says otherwise.")
    runs = sorted(p.parent for p in root.glob(f"*/{run_files.RUN_FILE}"))
    if not runs:
        print(f"no run directories (with {run_files.RUN_FILE}) under {root}")
        return 0
    table = []
    for run_dir in runs:
        info = load_run(run_dir)
        s, git = info["summary"], info.get("git") or {}
        table.append([
            run_dir.name, Path(info["config_file"]).parent.name if info.get("config_file") else "-",
            info.get("started", "-")[:19], f"{_fmt(s.get('final_step'))}/{_fmt(s.get('training_steps'))}",
            _fmt(s.get("final_loss"), ".5f"), _fmt(s.get("tokens_per_s_mean"), ",.0f"),
            (git.get("sha") or "-")[:10], _fmt(git.get("dirty")), s.get("exit_reason") or "-",
        ])
    header = ["run", "recipe", "started", "steps", "final loss", "tok/s", "git sha", "dirty", "exit"]
    print(_table(header, table))
    return 0


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"steps": 20}}`` -> ``{"training.steps": 20}``."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@_reports_errors
def cmd_compare(args) -> int:
    a, b = load_run(args.run_a), load_run(args.run_b)
    ca, cb = flatten(a.get("config", {})), flatten(b.get("config", {}))
    diff = [[k, json.dumps(ca.get(k, "<absent>")), json.dumps(cb.get(k, "<absent>"))]
            for k in sorted(set(ca) | set(cb)) if ca.get(k, "<absent>") != cb.get(k, "<absent>")]
    print(f"A = {a['dir']}\nB = {b['dir']}\n")
    print(_table(["config key", "A", "B"], diff) if diff else "configs are identical")
    la = {r["step"]: r[run_files.LOSS_KEY] for r in a["rows"] if run_files.LOSS_KEY in r}
    lb = {r["step"]: r[run_files.LOSS_KEY] for r in b["rows"] if run_files.LOSS_KEY in r}
    rows = []
    for step in sorted(set(la) | set(lb)):
        x, y = la.get(step), lb.get(step)
        rows.append([str(step), _fmt(x, ".5f"), _fmt(y, ".5f"), _fmt(None if None in (x, y) else y - x, "+.5f")])
    print()
    print(_table(["step", "loss A", "loss B", "B - A"], rows) if rows else "no losses logged")
    for name, run in (("A", a), ("B", b)):
        s = run["summary"]
        print(f"{name}: exit {s.get('exit_reason')}, {_fmt(s.get('tokens_per_s_mean'), ',.0f')} tok/s, "
              f"peak memory {_fmt(s.get('peak_memory_gib'), '.2f')} GiB, wall {_fmt(s.get('wall_time_s'), '.1f')} s")
    return 0


@_reports_errors
def cmd_plot(args) -> int:
    run = load_run(args.run)
    losses = {r["step"]: r[run_files.LOSS_KEY] for r in run["rows"] if run_files.LOSS_KEY in r}
    if not losses:
        raise RunsError(f"{args.run} logged no losses ({run_files.METRICS_FILE} has no '{run_files.LOSS_KEY}' rows).")
    recipe = Path(args.recipe) if args.recipe else recipe_of(run)
    key = args.key or fx.run_key(args.run)
    comparison, note = None, None
    if recipe is None:
        note = f"no recipe fixture found from config {run.get('config_file')}; pass --recipe"
    else:
        entries = fx.load_fixture(recipe)["entries"]
        if key in entries:
            comparison = fx.compare(entries[key], losses, key)
        else:
            note = f"{recipe / fx.FIXTURE_FILE} has no entry {key} (has: {sorted(entries)})"
    out = Path(args.output) if args.output else Path(args.run) / "loss.png"
    plot_losses(out, losses, comparison, title=f"{Path(args.run).name} vs {recipe.name if recipe else '-'} [{key}]")
    if comparison is None:
        print(f"wrote {out} (run only: {note})")
    else:
        verdict = "within" if comparison.ok else "OUTSIDE"
        print(f"wrote {out} (run vs fixture {key}: {verdict} tolerance, largest |diff| {comparison.worst:.2f} x tolerance)")
    return 0


def plot_losses(path: Path, actual: dict[int, float], comparison: "fx.Comparison | None", *, title: str) -> Path:
    """A PNG of the run's loss per step. With a fixture comparison: the fixture's curve beside the
    run's, and a second panel with the difference per step against the tolerance band, so a drift too
    small to see in the loss curve shows (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if comparison is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
        axes = [ax]
    else:
        fig, axes = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
        ax = axes[0]
        expected = {r.step: r.expected for r in comparison.rows if r.expected is not None}
        # wide and pale under the run's line, so both stay visible where they coincide
        ax.plot(list(expected), list(expected.values()), "-", color="tab:gray", linewidth=5, alpha=0.45, label="fixture")
    ax.plot(list(actual), list(actual.values()), ".-", color="tab:blue", linewidth=1.2, label="run")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    if comparison is not None:
        both = [r for r in comparison.rows if r.expected is not None and r.actual is not None]
        steps = [r.step for r in both]
        bounds = [r.bound for r in both]
        diff_ax = axes[1]
        diff_ax.fill_between(steps, [-b for b in bounds], bounds, color="tab:green", alpha=0.2, step="mid",
                             label="tolerance")
        diff_ax.axhline(0.0, color="tab:gray", linewidth=0.8)
        colors = ["tab:blue" if r.ok else "tab:red" for r in both]
        diff_ax.plot(steps, [r.actual - r.expected for r in both], "-", color="tab:blue", linewidth=0.8)
        diff_ax.scatter(steps, [r.actual - r.expected for r in both], c=colors, s=14, zorder=3,
                        label="run - fixture")
        diff_ax.set_ylabel("run - fixture")
        diff_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        verdict = "MATCH" if comparison.ok else f"MISMATCH ({sum(not r.ok for r in comparison.rows)} steps)"
        diff_ax.set_title(f"{verdict}: {comparison.rule}", fontsize=8)
        diff_ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def register(sub) -> None:
    """Add ``runs {list,compare,plot}`` to the ``titan-recipes`` subcommands ``sub``."""
    runs = sub.add_parser("runs", help="list, compare and plot run records").add_subparsers(dest="action", required=True)
    p = runs.add_parser("list", help="one line per run directory under DIR")
    p.add_argument("dir", nargs="?", default=str(RUNS_DIR), help="default: the repository's runs/")
    p.set_defaults(func=cmd_list)

    p = runs.add_parser("compare", help="config differences and per-step losses of two runs")
    p.add_argument("run_a", type=Path)
    p.add_argument("run_b", type=Path)
    p.set_defaults(func=cmd_compare)

    p = runs.add_parser("plot", help="PNG of a run's loss against its recipe's fixture")
    p.add_argument("run", type=Path)
    p.add_argument("--recipe", help="recipe directory (default: the one holding the run's config file)")
    p.add_argument("--key", help="fixture key (default: derived from the run's device, torch and world size)")
    p.add_argument("-o", "--output", help="PNG path (default: RUN/loss.png)")
    p.set_defaults(func=cmd_plot)
