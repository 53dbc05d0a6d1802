"""Preemption: a signal -> the ranks agree on a step -> a full checkpoint -> the launch's exit code.

``[launch] save_on_signal`` (on by default): SIGTERM or SIGUSR1 only set a flag; at the next step
boundary the ranks agree (one int all-reduced with MAX, so ranks signalled during different steps stop
after the same step), save a full checkpoint at that step, write ``preempted.json`` into the run
directory and exit with ``launch.preempt_exit_code``, so a relaunch in the same directory continues
exactly (tests/integration/test_preemption.py, slurm/train.sbatch). Reader worker processes ignore the
signals (:mod:`titan_recipes.data.workers`): this process decides.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PREEMPTED_FILE = "preempted.json"
"""Written into the run directory (``job.dump_folder``) by rank 0 when a launch stops for a signal, and
removed when the next launch starts: job scripts behind torchrun, which turns every worker exit status
into 1 once it was signalled itself, read it to decide to requeue."""

preempted: dict[str, Any] = {}
"""Set when a launch of this process stopped for a signal (``line``, ``code``); the entry point logs the
line last and exits with the code."""


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def remove_marker(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, PREEMPTED_FILE))
    except FileNotFoundError:
        pass


class Preemption:
    """One launch's preemption handling; the trainer calls :meth:`should_stop` at every step boundary
    and :meth:`stop` when it returns True."""

    def __init__(self, job_config: Any):
        self.job_config = job_config
        self.signal_name: str | None = None
        """The first preemption signal this process received."""
        self.first_step: int | None = None
        """The step this launch started from."""
        launch = job_config.launch
        if is_rank0():  # a marker left by an earlier launch must not make this one look preempted
            remove_marker(job_config.job.dump_folder)
        if not launch.save_on_signal:
            return

        def flag(signum, frame):  # only set a flag: the step in progress finishes first
            if self.signal_name is None:
                self.signal_name = signal.Signals(signum).name

        from .data.workers import set_preemption_signals

        set_preemption_signals(launch.signals)  # reader workers ignore these too: this process decides
        for name in launch.signals:
            signal.signal(getattr(signal, name), flag)
        logger.info(
            "launch.save_on_signal: %s save a full checkpoint at the next step boundary and exit with "
            "code %d.", " or ".join(launch.signals), launch.preempt_exit_code,
        )

    def should_stop(self, step: int, device: Any) -> bool:
        """Whether any rank got a signal; every rank calls it once per step boundary, so all stop after
        the same step. One int all-reduced (MAX) over the default process group."""
        if self.first_step is None:
            self.first_step = step
        if not self.job_config.launch.save_on_signal or step >= self.job_config.training.steps:
            return False
        import torch
        import torch.distributed as dist

        flag = int(self.signal_name is not None)
        if dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([flag], dtype=torch.int32, device=device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        return flag > 0

    def stop(self, trainer: Any) -> None:
        """Save a full checkpoint at the trainer's step (unless this launch trained no step, or
        checkpointing is off), write the marker and record the exit line and code."""
        cfg, step = self.job_config, trainer.step
        code = cfg.launch.preempt_exit_code
        signal_name = self.signal_name or "another rank's signal"
        ckpt = trainer.checkpointer
        saved = None  # the checkpoint step a relaunch resumes from
        if step == self.first_step:
            saved = step if step > 0 else None
            line = (f"preempted ({signal_name}) before the first step of this launch: nothing new to save "
                    f"(the run resumes from step {step}), exiting with code {code}")
        elif not ckpt.enable or ckpt.load_only:
            line = (f"preempted ({signal_name}) after step {step}: checkpointing is disabled "
                    f"(checkpoint.enable / load_only), nothing saved, exiting with code {code}")
        else:
            regular = step % cfg.checkpoint.interval == 0 or (step == 1 and cfg.checkpoint.enable_first_step_checkpoint)
            if regular:  # the loop's save() just wrote (or, async, is writing) a full checkpoint here
                ckpt._async_wait()  # the process exits next: the checkpoint must be complete first
            else:
                save_full_checkpoint(trainer, step)
            saved = step
            line = f"preempted: saved checkpoint at step {step}, exiting with code {code} ({signal_name})"
        if is_rank0():
            marker = {"step": step, "signal": signal_name, "exit_code": code, "time": time.time(),
                      "checkpoint": f"{cfg.checkpoint.folder}/step-{saved}" if saved is not None else None}
            Path(cfg.job.dump_folder, PREEMPTED_FILE).write_text(json.dumps(marker, indent=1) + "\n")
        preempted.update(line=line, code=code)


def save_full_checkpoint(trainer: Any, step: int) -> None:
    """CheckpointManager.save(last_step=True) is torchtitan's public way to save off the interval
    (synchronously, after waiting for any async save in flight). It is meant for the end of training and
    then honours checkpoint.last_save_model_only / last_save_in_hf, so those are switched off for this
    one save: a preemption checkpoint must hold the optimizer, LR scheduler, data loader and step, as
    torchtitan's own comment on _save_last_step intends."""
    ckpt = trainer.checkpointer
    reshard_model(trainer.model_parts)
    keep = ckpt.last_save_model_only, ckpt.last_save_in_hf
    ckpt.last_save_model_only = ckpt.last_save_in_hf = False
    try:
        ckpt.save(step, last_step=True)
    finally:
        ckpt.last_save_model_only, ckpt.last_save_in_hf = keep


def reshard_model(model_parts: list[Any]) -> None:
    """Put every FSDP module back into its sharded state before saving off the training step. A forward
    without backward (torchtitan's validation, e.g. at step 1) leaves the modules with
    ``reshard_after_forward=False`` (the root: final norm and output) unsharded, so their registered
    parameters are the unsharded tensors, not the sharded DTensors the optimizer holds;
    get_optimizer_state_dict then finds no name for those optimizer parameters and fails with
    ``KeyError: <param index>`` (55 for llama3 debugmodel). The loop's own saves come right after a
    backward (everything resharded), so only this preemption save needs it. No-op otherwise."""
    from torch.distributed.fsdp import FSDPModule

    for part in model_parts:
        for module in part.modules():
            if isinstance(module, FSDPModule):
                module.reshard()
