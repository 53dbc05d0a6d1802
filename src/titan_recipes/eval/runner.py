"""Score a run's checkpoints with lm-evaluation-harness: export each step, run lm-eval's HF backend.

For each chosen step N (:mod:`.steps`):

1. ``RUN_DIR/hf/step-N``: the checkpoint as a HuggingFace ``LlamaForCausalLM`` directory
   (:func:`titan_recipes.hf.export.export_hf`), reused when it already holds a ``config.json``. The
   export is written to ``hf/step-N.tmp`` and renamed, so an interrupted export is never reused.
2. ``lm_eval.simple_evaluate(model="hf", model_args={"pretrained": dir, "dtype": "float32",
   "max_length": <the run's training.seq_len>}, ...)`` (:func:`evaluate_step`) with a TaskManager
   that also finds the repository's tasks (:mod:`.tasks`): fp32 because the CPU training runs and the
   parity tests are fp32, and a score should not move with a dtype change.
3. The rows go into ``RUN_DIR/eval.jsonl`` (:mod:`.results`) after every step, so a long eval that dies
   keeps the steps it finished; lm-eval's full answer (task configs, versions, model args; no per-sample
   logs) is kept as ``RUN_DIR/eval/step-N/<task>.json`` for provenance.

Finally ``RUN_DIR/eval.png`` (:mod:`.plot`) draws every step scored so far beside the loss.
``RUN_DIR`` is not locked: evaluating never writes a checkpoint, so it may run beside a training job
that is still writing further steps (only complete ones are chosen).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import results
from .plot import plot_eval
from .steps import available_steps, select_steps
from .tasks import task_manager

logger = logging.getLogger(__name__)

HF_SUBDIR = "hf"
RESULTS_SUBDIR = "eval"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def hf_dir_for(run_dir: Path, step: int) -> Path:
    """``RUN_DIR/hf/step-N``, exported now unless a complete export is there already."""
    out = Path(run_dir) / HF_SUBDIR / f"step-{step}"
    if (out / "config.json").is_file():
        logger.info("step %d: reusing the HF export in %s", step, out)
        return out
    from ..hf.export import export_hf

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_hf(run_dir, tmp, step=step)
    shutil.rmtree(out, ignore_errors=True)  # a partial directory without config.json
    os.replace(tmp, out)
    return out


def check_tasks(tasks: list[str], manager) -> None:
    """Refuse task names lm-eval does not know before exporting anything."""
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"--tasks: lm-eval knows no task {unknown}; use its names (hellaswag, arc_easy, ...: "
            "`lm_eval ls tasks`) or a YAML under assets/eval/tasks (shakespeare_heldout).")


def trained_seq_len(run_dir: Path) -> int | None:
    """``training.seq_len`` of the run (``run.json``), or None when it is not recorded."""
    run_file = Path(run_dir) / "run.json"
    if not run_file.is_file():
        return None
    seq_len = json.loads(run_file.read_text()).get("config", {}).get("training", {}).get("seq_len")
    return int(seq_len) if seq_len else None


def evaluate_step(hf_dir: Path, tasks: list[str], manager, *, device: str, limit: int | None,
                  batch_size: int | str, max_length: int | None = None) -> dict[str, Any]:
    """lm-eval's answer for one HF directory (its ``simple_evaluate`` dict, without samples).

    ``max_length`` caps lm-eval's context windows (rolling perplexity splits a long document into
    windows of this many tokens). Without it lm-eval takes the config's ``max_position_embeddings``
    (131072 for every llama3 flavor), far beyond the sequences a recipe trained on; the run's
    ``training.seq_len`` scores the model at the length it learned."""
    from lm_eval import simple_evaluate

    model_args: dict[str, Any] = {"pretrained": str(hf_dir), "dtype": "float32"}
    if max_length:
        model_args["max_length"] = max_length
    return simple_evaluate(
        model="hf", model_args=model_args, tasks=tasks,
        device=device, limit=limit, batch_size=batch_size, task_manager=manager, log_samples=False,
    )


def write_provenance(folder: Path, answer: dict[str, Any]) -> None:
    """``folder/<task>.json`` per task of one lm-eval answer: its results, task config, version and
    sample counts plus the run-wide fields (model args, lm-eval version and git hash, environment).
    Per task, so scoring other tasks later does not overwrite a task's record."""
    folder.mkdir(parents=True, exist_ok=True)
    per_task = {k for k, v in answer.items() if isinstance(v, dict) and set(answer["results"]) & set(v)}
    shared = {k: v for k, v in answer.items() if k not in per_task and k != "samples"}
    for task in answer["results"]:
        record = {**shared, **{k: {task: answer[k][task]} for k in per_task if task in answer[k]}}
        (folder / f"{task}.json").write_text(json.dumps(record, indent=1, default=str) + "\n")


def evaluate_run(run_dir: Path, tasks: list[str], steps: str = "all", *, limit: int | None = None,
                 batch_size: int | str = 8, device: str = "auto") -> list[dict[str, Any]]:
    """Score the chosen steps of ``run_dir`` on ``tasks``; returns the new rows (also merged into
    ``eval.jsonl`` and drawn into ``eval.png``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} does not exist; pass the directory a recipe launch wrote (runs/...).")
    if not tasks:
        raise ConfigError("--tasks is empty; name at least one lm-eval task, e.g. --tasks shakespeare_heldout.")
    chosen = select_steps(steps, available_steps(run_dir), where=str(run_dir))
    manager = task_manager()
    check_tasks(tasks, manager)
    device = resolve_device(device)
    max_length = trained_seq_len(run_dir)
    import lm_eval

    eval_file = run_dir / results.EVAL_FILE
    new_rows: list[dict[str, Any]] = []
    for step in chosen:
        begin = time.monotonic()
        hf_dir = hf_dir_for(run_dir, step)
        exported = time.monotonic()
        answer = evaluate_step(hf_dir, tasks, manager, device=device, limit=limit, batch_size=batch_size,
                               max_length=max_length)
        seconds = time.monotonic() - exported
        rows = results.rows_from_results(
            answer, step, limit=limit, hf_dir=os.path.relpath(hf_dir, run_dir), device=device, max_length=max_length,
            lm_eval=lm_eval.__version__, eval_seconds=round(seconds, 2),
            time=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        results.write_rows(eval_file, rows)
        write_provenance(run_dir / RESULTS_SUBDIR / f"step-{step}", answer)
        logger.info("step %d: export %.1f s, lm-eval %.1f s", step, exported - begin, seconds)
        new_rows += rows
    plot_eval(run_dir, results.read_rows(eval_file), run_dir / results.EVAL_PLOT)
    return new_rows
