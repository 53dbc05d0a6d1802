"""Scores as rows of ``RUN_DIR/eval.jsonl``: one JSON object per (step, task, metric, filter).

A row::

    {"step": 20, "task": "shakespeare_heldout", "metric": "word_perplexity", "filter": "none",
     "value": 912.4, "stderr": null, "higher_is_better": false, "limit": 50, "samples": 50,
     "hf_dir": "hf/step-20", "lm_eval": "0.4.13", "time": "2026-11-30T20:01:02Z"}

lm-eval reports each metric as ``"<metric>,<filter>"`` with ``"<metric>_stderr,<filter>"`` beside it
(``"N/A"`` where it has none: ``stderr`` is then null). Evaluating a step and task again replaces
that step's and task's rows and keeps every other row, so ``--steps 30`` after ``--steps all`` adds to
the record. The file is rewritten whole (to a temporary name, then renamed): a killed eval leaves the
previous record, not half a line. Standard library only.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

EVAL_FILE = "eval.jsonl"
EVAL_PLOT = "eval.png"
ROW_KEY = ("step", "task", "metric", "filter")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def rows_from_results(results: dict[str, Any], step: int, **extra: Any) -> list[dict[str, Any]]:
    """The rows of one ``simple_evaluate`` answer for checkpoint ``step`` (``extra`` is added to each)."""
    rows = []
    higher = results.get("higher_is_better", {})
    samples = results.get("n-samples", {})
    for task, metrics in sorted(results["results"].items()):
        for key, value in metrics.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr") or _number(value) is None:
                continue
            rows.append({
                "step": int(step), "task": task, "metric": metric, "filter": filt, "value": float(value),
                "stderr": _number(metrics.get(f"{metric}_stderr,{filt}")),
                "higher_is_better": higher.get(task, {}).get(metric),
                "samples": samples.get(task, {}).get("effective"), **extra,
            })
    return rows


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an ``eval.jsonl`` (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` without the (step, task) pairs that ``new`` scores again, plus ``new``; sorted by
    step, task, metric, filter."""
    redone = {(r["step"], r["task"]) for r in new}
    kept = [r for r in old if (r["step"], r["task"]) not in redone]
    return sorted(kept + new, key=lambda r: tuple(str(r[k]) if k != "step" else r[k] for k in ROW_KEY))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Merge ``rows`` into the ``eval.jsonl`` at ``path``; returns ``path``. NaN and infinite scores
    are written as JSON ``null`` (``json`` would write ``NaN``, which other JSON readers reject)."""
    path = Path(path)
    merged = merge_rows(read_rows(path), rows)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in merged:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
            f.write(json.dumps(clean, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def series(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """``(task, metric) -> [(step, value), ...]`` ascending by step, filter ``none`` (or the only one),
    for plotting and printing."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in rows:
        if r["value"] is None or r["filter"] not in ("none", ""):
            continue
        out.setdefault((r["task"], r["metric"]), []).append((r["step"], r["value"]))
    return {k: sorted(v) for k, v in sorted(out.items())}
