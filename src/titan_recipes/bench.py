"""Shared pieces of the benchmark scripts (``scripts/bench_*.py``, ``nox -s bench``).

A synthetic MDS dataset written with streaming's own ``MDSWriter`` in the column format of
:func:`titan_recipes.data.mds.write_mds` (random token ids, so no tokenizer pass), a timer over a
loader's batches, a plain-text table and a PNG bar chart (matplotlib, Agg backend).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .data.mds import SHARD_HASH, TOKEN_DTYPE, TOKENS_COLUMN, import_streaming

H100_1B_TOKENS_PER_S = 57_800.0
"""Tokens/s one H100 consumes training the 1B model: vanilla torchtitan 0.2.2 on random tokens, one H100 80GB, torch 2.11.0+cu130, bf16, compile, 4 x 4096 tokens."""
H100_DEBUGMODEL_TOKENS_PER_S = 690_000.0
"""Tokens/s one H100 consumes training llama3 debugmodel (approximate)."""


def write_synthetic_mds(
    out: str | Path,
    *,
    samples: int,
    seq_len: int,
    compression: str | None = None,
    size_limit: int | str = "64mb",
    seed: int = 0,
    vocab_size: int = 128_256,
    remote: str | None = None,
) -> int:
    """Write ``samples`` random samples of ``seq_len + 1`` token ids as MDS into ``out`` (uploaded to
    ``remote`` as well when given). Returns the bytes of the uncompressed sample payload."""
    st = import_streaming()
    rng = np.random.default_rng(seed)
    columns = {TOKENS_COLUMN: f"ndarray:{TOKEN_DTYPE}:{seq_len + 1}"}
    target = str(out) if remote is None else (str(out), remote)
    chunk = max(1, min(samples, 1024))
    with st.MDSWriter(
        columns=columns, out=target, keep_local=True, compression=compression, size_limit=size_limit,
        hashes=[SHARD_HASH], exist_ok=True,
    ) as writer:
        for start in range(0, samples, chunk):
            block = rng.integers(0, vocab_size, size=(min(chunk, samples - start), seq_len + 1), dtype=np.int32)
            for row in block:
                writer.write({TOKENS_COLUMN: row})
    return samples * (seq_len + 1) * np.dtype(TOKEN_DTYPE).itemsize


def time_batches(batches: Iterable[Any], *, warmup: int, measure: int, progress: str | None = None) -> float:
    """Seconds taken by ``measure`` batches of ``batches`` after skipping ``warmup`` untimed ones."""
    from tqdm import tqdm

    it = iter(batches)
    for _ in range(warmup):
        next(it)
    bar = tqdm(total=measure, desc=progress, unit="batch", leave=False, disable=progress is None)
    start = time.perf_counter()
    for _ in range(measure):
        next(it)
        bar.update()
    elapsed = time.perf_counter() - start
    bar.close()
    if hasattr(it, "close"):  # a generator over a DataLoader: shut its worker processes down now
        it.close()
    return elapsed


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (``|``-separated), readable in a terminal and pasteable into a README."""
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,d}"
    return str(value)


def bar_chart(
    path: str | Path, labels: Sequence[str], values: Sequence[float], *, title: str, ylabel: str,
    hlines: Sequence[tuple[float, str]] = (), log: bool = False,
) -> Path:
    """A PNG bar chart of ``values`` with optional labelled horizontal reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7.5, 1.1 * len(labels) + 2), 4.8))
    bars = ax.bar(range(len(labels)), values, color="tab:blue")
    ax.bar_label(bars, labels=[_fmt(float(v)) for v in values], fontsize=8)
    ax.set_xticks(range(len(labels)), labels)
    for i, (y, name) in enumerate(hlines):
        ax.axhline(y, color=f"C{i + 1}", linestyle="--", linewidth=1, label=f"{name} ({_fmt(float(y))})")
    if hlines:
        ax.legend(fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(path: str | Path, result: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def environment() -> dict[str, Any]:
    """What the figures depend on: versions, cores, host type."""
    import os
    import platform

    import torch

    st = import_streaming()
    return {
        "python": platform.python_version(), "torch": torch.__version__, "streaming": st.version,
        "cpu_count": os.cpu_count(), "machine": platform.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
