"""``titan-recipes eval RUN_DIR --tasks T1,T2 [--steps all|last|N,M] [--limit K] [--batch-size B]``.

Exports each chosen checkpoint step of a run to ``RUN_DIR/hf/step-N`` (reused when present) and scores
it with lm-evaluation-harness's HF backend: the repository's ``shakespeare_heldout`` task here, lm-eval's
own tasks (``hellaswag,arc_easy``, downloaded from the Hub on first use) on a cluster. Writes
``RUN_DIR/eval.jsonl`` (one row per step, task and metric) and ``RUN_DIR/eval.png`` (loss beside each
score against step), then prints the scores. ``--limit K`` scores the first K documents of each task
(a quick look; lm-eval warns that such scores are not comparable to published ones).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from . import reports


def _format_table(rows: list[dict]) -> str:
    from ..eval.results import series

    lines = []
    for (task, metric), points in series(rows).items():
        values = "  ".join(f"step {s}: {v:.4g}" for s, v in points)
        lines.append(f"{task:24s} {metric:18s} {values}")
    return "\n".join(lines)


@reports(ConfigError, DataError)
def cmd_eval(args) -> int:
    from ..eval.results import EVAL_FILE, EVAL_PLOT
    from ..eval.runner import evaluate_run

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows = evaluate_run(args.run_dir, tasks, args.steps, limit=args.limit, batch_size=args.batch_size,
                        device=args.device)
    print(_format_table(rows))
    print(f"scores in {args.run_dir / EVAL_FILE}, plot in {args.run_dir / EVAL_PLOT}")
    return 0


def _batch_size(value: str):
    return value if value.startswith("auto") else int(value)


def register(sub) -> None:
    """Add ``eval`` to the ``titan-recipes`` subcommands ``sub``."""
    p = sub.add_parser("eval", help="score a run's checkpoints with lm-evaluation-harness (HF export per step)")
    p.add_argument("run_dir", type=Path, help="run directory a recipe launch wrote (runs/...)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated lm-eval tasks: shakespeare_heldout (ships here), hellaswag,arc_easy, ...")
    p.add_argument("--steps", default="all", help="checkpoint steps: all (default), last, or N,M")
    p.add_argument("--limit", type=int, default=None, help="score only the first K documents of each task")
    p.add_argument("--batch-size", type=_batch_size, default=8, help="lm-eval batch size, or 'auto' (default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when a GPU is visible)")
    p.set_defaults(func=cmd_eval)
