"""``RUN_DIR/eval.png``: the training loss (left) beside each task metric against checkpoint step.

The loss comes from the run's ``metrics.jsonl``; the eval steps are marked on it with dotted lines, so
a score can be read against the loss the model had when it was saved. One panel per (task, metric),
filter ``none``; the y label says whether higher or lower is better. matplotlib (Agg) only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import run_files
from .results import series

MAX_COLUMNS = 4
"""Panels per row; more metrics wrap onto further rows."""


def plot_eval(run_dir: Path, rows: list[dict[str, Any]], out: Path, title: str | None = None) -> Path:
    """Draw the loss and every metric of ``rows`` into ``out`` (PNG); returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics_file = Path(run_dir) / run_files.METRICS_FILE
    loss_rows = run_files.read_metrics(metrics_file) if metrics_file.is_file() else []
    losses = [(r["step"], r[run_files.LOSS_KEY]) for r in loss_rows if run_files.LOSS_KEY in r]
    scores = series(rows)
    better = {(r["task"], r["metric"]): r.get("higher_is_better") for r in rows}
    eval_steps = sorted({r["step"] for r in rows})

    panels = 1 + len(scores)
    ncols = min(panels, MAX_COLUMNS)
    nrows = -(-panels // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    flat = list(axes.flat)
    ax = flat[0]
    if losses:
        ax.plot(*zip(*losses), color="tab:blue", lw=1.2)
    else:
        ax.text(0.5, 0.5, f"no {run_files.METRICS_FILE}", ha="center", va="center", transform=ax.transAxes)
    for s in eval_steps:
        ax.axvline(s, color="grey", ls=":", lw=0.8)
    ax.set(title="training loss", xlabel="step", ylabel="loss")
    for ax, ((task, metric), points) in zip(flat[1:], scores.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", color="tab:orange")
        hib = better.get((task, metric))
        hint = "" if hib is None else (" (higher is better)" if hib else " (lower is better)")
        ax.set(title=task, xlabel="checkpoint step", ylabel=metric + hint)
        if min(values) > 0 and max(values) / min(values) > 10:  # early perplexities span decades
            ax.set_yscale("log")
        if losses:  # the same step axis as the loss, so a score sits under the loss it was saved at
            ax.set_xlim(flat[0].get_xlim())
    for ax in flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(title or Path(run_dir).name)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
