"""Running a preparation on datatrove's executors: all cores of one node, or a Slurm job array.

Two pipelines, each with its own datatrove logging directory under ``<out>/.prepare/logs/``:

1. ``tasks``: :class:`~.tasks.PrepareTask`, one datatrove task per input file. datatrove writes a
   completion marker, stats and a log per task; a rerun of the same command skips completed tasks.
2. ``finalize``: one task, :func:`~.finalize.finalize`, after every task of (1). Always rerun (it is
   cheap, and it only reads the task reports).

Locally (:func:`run_local`) (1) runs on :class:`LocalExecutor`, datatrove's ``LocalPipelineExecutor``
with one change: its pool is a ``concurrent.futures.ProcessPoolExecutor``, so a worker that dies
(``kill -9``, the OOM killer) stops the run with an error instead of hanging the ``multiprocess``
pool forever, and the rerun does the missing tasks. On Slurm (:func:`launch_slurm`) both are
datatrove ``SlurmPipelineExecutor`` s: (1) a job array of one element per task (``--max-concurrent``
elements at a time), (2) one job with ``--dependency=afterok`` on (1); the id of (2) is what a training
job depends on.

:data:`PLAN` records the inputs and settings of a preparation; rerunning into the same ``--out`` with
other ones is refused (their tasks would not be the same tasks), unless ``--overwrite``.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import shutil
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.stats import PipelineStats

from ..errors import ConfigError, DataError
from .tasks import PrepareSpec, PrepareTask, write_json_atomic

PLAN = ".prepare/plan.json"


class FinalizeStep(PipelineStep):
    name = "titan-recipes prepare: finalize"
    type = "Writer"

    def __init__(self, spec: PrepareSpec):
        super().__init__()
        self.spec = spec

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1):
        from .finalize import finalize

        manifest = finalize(self.spec)
        for key, value in manifest["totals"].items():
            self.stat_update(key, value=int(value))
        return
        yield


def _run_rank(executor: "LocalExecutor", rank: int) -> PipelineStats:
    os.environ["RAYON_NUM_THREADS"] = "1"
    return executor._run_for_rank(rank)


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's local executor on a process pool that reports dead workers (module docstring)."""

    def run(self) -> PipelineStats:
        ranks = self.get_incomplete_ranks(range(self.tasks))
        if not ranks:
            return PipelineStats()
        self.save_executor_as_json()
        if self.workers == 1:
            stats = [self._run_for_rank(rank) for rank in ranks]
        else:
            # Fork from this process with the workers' modules imported once here (streaming and torch
            # for MDS take seconds): each worker starts at once. Safe: nothing here has started a
            # thread pool yet (no tokenizer was used in this process).
            kind = self.pipeline[0].spec.kind
            importlib.import_module(f"titan_recipes.prepare.preload{'_mds' if kind == 'mds' else ''}")
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(min(self.workers, len(ranks)), mp_context=ctx) as pool:
                futures = [pool.submit(_run_rank, self, rank) for rank in ranks]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    missing = self.get_incomplete_ranks(range(self.tasks))
                    error = failed[0].exception()
                    if isinstance(error, BrokenProcessPool):
                        raise DataError(
                            f"A preparation worker died (killed, or out of memory); tasks {_ranges(missing)} are not "
                            f"complete. Rerun the same command: it runs only those."
                        ) from None
                    raise error
                stats = [f.result() for f in futures]
        total = sum(stats, start=PipelineStats())
        with self.logging_dir.open("stats.json", "wt") as f:
            total.save_to_disk(f)
        return total


def _ranges(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:20])) + (f" ... ({len(ranks)} in all)" if len(ranks) > 20 else "")


def check_plan(spec: PrepareSpec, overwrite: bool) -> None:
    """Record the plan of ``spec.out``, or refuse a different one already there (see the module docstring)."""
    out = Path(spec.out)
    plan_path = out / PLAN
    plan = {k: v for k, v in spec.to_json().items() if k not in ("progress",)}
    if overwrite and out.exists():
        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if plan_path.is_file():
        previous = json.loads(plan_path.read_text())
        differ = sorted(k for k in set(plan) | set(previous) if plan.get(k) != previous.get(k))
        if differ:
            raise ConfigError(
                f"{out} holds a preparation with other {', '.join(differ)}; a rerun must repeat the same command. "
                f"Use another --out, or --overwrite to delete it and start again."
            )
    elif out.exists() and any(p.name != ".prepare" for p in out.iterdir()):
        raise ConfigError(f"--out {out} is not empty and holds no preparation; use an empty directory or --overwrite.")
    write_json_atomic(plan_path, plan)


def logs_dir(spec: PrepareSpec, pipeline: str) -> str:
    return str(Path(spec.out) / ".prepare" / "logs" / pipeline)


def run_local(spec: PrepareSpec, workers: int) -> dict[str, Any]:
    """Run every incomplete task on ``workers`` processes, then the final step; returns the manifest."""
    from .finalize import read_manifest

    tasks = LocalExecutor([PrepareTask(spec)], tasks=len(spec.files), workers=max(1, workers),
                          logging_dir=logs_dir(spec, "tasks"))
    try:
        tasks.run()
        LocalPipelineExecutor([FinalizeStep(spec)], tasks=1, workers=1, logging_dir=logs_dir(spec, "finalize"),
                              skip_completed=False).run()
    except OSError as e:
        # A full disk also fails datatrove's own log and stats files, whose error then replaces ours.
        if isinstance(e.__context__, DataError):
            raise e.__context__ from None
        raise DataError(
            f"Writing under {spec.out} failed ({type(e).__name__}: {e}). Free space (or fix the permissions) and "
            f"rerun the same command: finished tasks are kept."
        ) from None
    return read_manifest(spec.out)


@dataclass
class SlurmOptions:
    partition: str
    time: str
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    max_concurrent: int = -1
    """Array elements running at once (-1: as many as Slurm starts)."""
    tasks_per_job: int = 1
    job_name: str = "titan-prepare"
    qos: str = ""
    venv: str | None = None
    env_command: str | None = None
    container_image: str | None = None
    container_mounts: str | None = None
    sbatch_args: dict[str, str] = field(default_factory=dict)


def slurm_executors(spec: PrepareSpec, opts: SlurmOptions) -> tuple[Any, Any]:
    from datatrove.executor.slurm import SlurmPipelineExecutor

    if opts.venv and opts.container_image:
        raise ConfigError("--venv and --container-image exclude each other: the job runs in one environment.")
    srun_args = {}
    if opts.container_image:
        srun_args["container-image"] = opts.container_image
        srun_args["container-mounts"] = opts.container_mounts or f"{Path(spec.out).resolve()}:{Path(spec.out).resolve()}"
    common = dict(
        time=opts.time, partition=opts.partition, qos=opts.qos or None, mem_per_cpu_gb=opts.mem_per_cpu_gb,
        venv_path=f"{opts.venv}/bin/activate" if opts.venv else None, env_command=opts.env_command,
        sbatch_args=dict(opts.sbatch_args), srun_args=srun_args or None, mail_user=None,
        requeue_signals=("SIGUSR1",),
    )
    tasks = SlurmPipelineExecutor(
        [PrepareTask(spec)], tasks=len(spec.files), cpus_per_task=opts.cpus_per_task, workers=opts.max_concurrent,
        job_name=opts.job_name, logging_dir=logs_dir(spec, "tasks"), tasks_per_job=opts.tasks_per_job,
        slurm_logs_folder=str(Path(spec.out) / ".prepare" / "slurm_logs" / "tasks"), **common,
    )
    final = SlurmPipelineExecutor(
        [FinalizeStep(spec)], tasks=1, cpus_per_task=1, job_name=f"{opts.job_name}-finalize", depends=tasks,
        logging_dir=logs_dir(spec, "finalize"), skip_completed=False,
        slurm_logs_folder=str(Path(spec.out) / ".prepare" / "slurm_logs" / "finalize"), **common,
    )
    return tasks, final


def launch_slurm(spec: PrepareSpec, opts: SlurmOptions) -> str:
    """Submit the tasks' array and the final job; returns the final job's id (``afterok`` on it)."""
    tasks, final = slurm_executors(spec, opts)
    final.run()
    return str(final.job_id)
