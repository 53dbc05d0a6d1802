"""A mixture run's per-domain loss and weights over the steps, as a PNG (``titan-recipes mixture plot``).

Reads the ``loss_domain/<d>``, ``tokens_domain/<d>`` and ``mixture_weight/<d>`` metrics that the
per-domain loss (:mod:`titan_recipes.domain_loss`) writes into a run's ``metrics.jsonl``, and draws two
panels: each domain's mean loss per logged step (with the training loss), and each domain's weight
(a static mixture is flat; ADO's weights move).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DataError
from ...run_files import LOSS_DOMAIN_PREFIX, LOSS_KEY, METRICS_FILE, MIXTURE_WEIGHT_PREFIX, read_metrics

PREFIXES = (LOSS_DOMAIN_PREFIX, MIXTURE_WEIGHT_PREFIX)


def domain_series(run_dir: str | Path) -> dict[str, dict[str, dict[int, float]]]:
    """``{"loss_domain": {d: {step: v}}, "mixture_weight": {...}, "loss": {"all": {step: v}}}`` of a run."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir} has no {METRICS_FILE}: not a run directory, or the run has not logged a step yet.")
    out: dict[str, dict[str, dict[int, float]]] = {"loss_domain": {}, "mixture_weight": {}, "loss": {"all": {}}}
    for row in read_metrics(path):
        step = int(row["step"])
        for key, value in row.items():
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    out[prefix[:-1]].setdefault(key[len(prefix):], {})[step] = float(value)
        if LOSS_KEY in row:
            out["loss"]["all"][step] = float(row[LOSS_KEY])
    if not out["mixture_weight"]:
        raise DataError(
            f"{path} has no per-domain metrics ({MIXTURE_WEIGHT_PREFIX}<domain>): the run did not read a mixture with "
            f"mixture.per_domain_loss = true."
        )
    return out


def plot_domains(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the two-panel PNG (default ``<run>/domains.png``); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = domain_series(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "domains.png"
    fig, (ax_loss, ax_w) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name, points in sorted(series["loss_domain"].items()):
        ax_loss.plot(list(points), list(points.values()), marker=".", label=name)
    if series["loss"]["all"]:
        total = series["loss"]["all"]
        ax_loss.plot(list(total), list(total.values()), color="black", linewidth=2, label="training loss")
    ax_loss.set_ylabel("mean loss per token")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    for name, points in sorted(series["mixture_weight"].items()):
        ax_w.plot(list(points), list(points.values()), marker=".", label=name)
    ax_w.set_ylabel("mixture weight")
    ax_w.set_xlabel("step")
    ax_w.set_ylim(0, 1)
    ax_w.legend(fontsize=8)
    ax_w.grid(alpha=0.3)
    fig.suptitle(f"per-domain loss and weights: {Path(run_dir).name}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
