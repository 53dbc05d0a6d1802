"""torchtitan's CheckpointManager with three guarantees a finished, diverged or disk-full run needs.

:class:`RecipeCheckpointManager` replaces the Trainer's manager right after torchtitan built it (same
arguments; :func:`install`), so torchtitan's train loop, saves and loads stay its own:

1. **Resume from the newest full checkpoint.** torchtitan's ``load()`` takes the newest ``step-N`` folder.
   With ``checkpoint.last_save_model_only = true`` (our recipes) the final save of a finished run holds
   the weights only (in ``export_dtype``, or HF safetensors with ``last_save_in_hf``): it is an export
   for downstream tools, and torchtitan's own comment says it "won't affect preemption and training
   resume". Extending a finished run (``RUN_DIR=runs/x run_train.sh --training.steps 22``) then failed
   with ``Missing key in checkpoint state_dict: dataloader...``. Here ``load()`` skips weights-only and
   incomplete folders and resumes from the newest folder that holds every state torchtitan loads
   (model, optimizer, LR scheduler, data loader, train state). The steps after it are trained again,
   at most ``checkpoint.interval`` of them. That choice is deliberate: a complete final save would
   double the export's size (AdamW moments) or move the export, and, since the LR schedule follows
   ``training.steps``, re-training those steps under the new schedule is what makes the extended run
   equal to an uninterrupted run of the new length whenever the two schedules agree up to the resume
   step (tests/integration/test_run_safety.py). An explicit ``checkpoint.load_step`` is obeyed as is.
2. **A failed save leaves nothing that looks like a checkpoint.** Any exception from a save (a full
   disk shows up as ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos ...``, or
   as OSError ENOSPC/EDQUOT) removes the partial ``step-N`` folder (rank 0) and raises
   :class:`CheckpointSaveError`, which names the step, the folder, the free space and the previous
   complete checkpoint a relaunch resumes from. ``summary.json`` records ``exit_reason = "disk_full"``
   (or ``"error"``).
3. **No non-finite weights are saved** (:func:`titan_recipes.guard.assert_finite_weights`, before each
   save that torchtitan would write).
4. **An asynchronous save is never lost or misattributed** (``checkpoint.async_mode = "async"``: DCP
   copies the state into CPU memory, then writes it in a background thread over a gloo group of its own
   while training goes on). torchtitan only waits for that write at the next save; its ``close()`` does
   not wait at all, so a launch that ends right after an interval save (``launch.stop_at_step``, a
   preemption at an interval step, an exception) destroys the process group while the write may still
   use it (not observed with the debug model on CPU, whose write ends within ~0.1-2.5 s, before that;
   a multi-GB checkpoint takes longer). Here every wait
   (:meth:`RecipeCheckpointManager._async_wait`: the next save, the preemption stop, ``close()``) logs
   when it has to block, and a failure of the background write is reported for the step that was being
   written (guarantee 2), not for the step whose save happened to wait. Until DCP writes ``.metadata``,
   last, a folder in flight is "incomplete" and a resume skips it (guarantee 1).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from typing import Any

from torch.distributed.checkpoint.api import CheckpointException
from torchtitan.components.checkpoint import DATALOADER, LR_SCHEDULER, MODEL, OPTIMIZER, CheckpointManager

from .checkpoint_steps import checkpoint_steps, describe_resume_point

logger = logging.getLogger(__name__)

_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded")
DISK_FULL_FREE_BYTES = 64 * 2**20
"""A save that fails while the checkpoint's file system has less free space than this is reported as a
full disk (the C++ writer hides the errno: "unexpected pos 704 vs 598")."""


class CheckpointSaveError(RuntimeError):
    """Writing checkpoint step N failed; the partial folder was removed."""

    def __init__(self, message: str, disk_full: bool):
        super().__init__(message)
        self.exit_reason = "disk_full" if disk_full else "error"


def _chain(exc: BaseException):
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)  # DCP's CheckpointException: rank -> exception
        if isinstance(failures, dict):
            todo += [f for f in failures.values() if isinstance(f, BaseException)]


def _free_bytes(path: str) -> int | None:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path or ".")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(exc: BaseException, folder: str) -> bool:
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in _DISK_FULL_ERRNOS:
            return True
        if any(text in str(e).lower() for text in _DISK_FULL_TEXT):
            return True
    free = _free_bytes(folder)
    return free is not None and free < DISK_FULL_FREE_BYTES


class RecipeCheckpointManager(CheckpointManager):
    """See the module docstring. ``trainer`` gives the weight check its model and config."""

    trainer: Any = None
    async_step: int | None = None
    """The step whose asynchronous save is in flight (written by a background thread), else None."""

    def load(self, step: int = -1) -> bool:
        if step == -1 and self.enable and os.path.isdir(self.folder):
            step = self._resume_step()
            if step == -1:  # nothing usable; torchtitan would take an incomplete folder with a .metadata
                return False
        return super().load(step=step)

    def _resume_step(self) -> int:
        """The newest full checkpoint (-1 when there is none); logs what it skips and why."""
        skipped = []
        steps = checkpoint_steps(self.folder)
        for step, kind in steps:
            if kind == "full" or step == 0:  # step-0 is torchtitan's weights-only seed checkpoint
                if skipped:
                    logger.warning(
                        "Resuming from %s (step %d), the newest full checkpoint; skipped %s. Steps %d-%d are "
                        "trained again, with the LR schedule of this launch's training.steps.",
                        os.path.join(self.folder, f"step-{step}"), step, "; ".join(skipped), step + 1, steps[0][0])
                return step
            if kind == "model":
                skipped.append(f"step-{step} (weights only: the final save of a finished run, "
                               f"checkpoint.last_save_model_only = true; a save of this launch at step {step} "
                               f"replaces it)")
            else:
                skipped.append(f"step-{step} (incomplete: a save that was interrupted or failed)")
        if any(kind == "model" for _, kind in steps):
            newest = steps[0][0]
            raise RuntimeError(
                f"Cannot continue the run in {os.path.dirname(self.folder)}: {self.folder} holds no full "
                f"checkpoint, only weights (step-{newest}, saved with checkpoint.last_save_model_only = true "
                f"and no earlier checkpoint.interval save). To train on from these weights with a fresh "
                f"optimizer, start a new run directory with --checkpoint.initial_load_path "
                f"{os.path.join(self.folder, f'step-{newest}')} --checkpoint.initial_load_model_only; to make "
                f"future runs extendable, keep checkpoint.interval below training.steps (the final save holds "
                f"the weights only) or set checkpoint.last_save_model_only = false."
            )
        if skipped:
            logger.warning("No complete checkpoint in %s (skipped %s); training starts from step 0.",
                           self.folder, "; ".join(skipped))
        return -1

    def save(self, curr_step: int, last_step: bool = False) -> None:
        if not self._should_save(curr_step, last_step):
            return super().save(curr_step, last_step)  # torchtitan's no-op path (and its FT save)
        if self.trainer is not None:
            from .guard import assert_finite_weights

            if not assert_finite_weights(self.trainer, curr_step):
                return
        try:
            super().save(curr_step, last_step)  # waits for the save in flight first (_async_wait)
        except CheckpointSaveError:  # the previous asynchronous save failed; already reported for its step
            raise
        except (Exception, CheckpointException) as exc:  # DCP's CheckpointException is a BaseException
            raise self._save_failed(curr_step, exc) from exc
        if self.save_future is not None:
            self.async_step = curr_step

    def _async_wait(self) -> None:
        """Block until the asynchronous save in flight (if any) is written; a failure is raised as
        :class:`CheckpointSaveError` for that save's step, with its partial folder removed."""
        step, future = self.async_step, self.save_future
        if future is not None and step is not None and not future.done():
            logger.info("Waiting for the asynchronous save of checkpoint step %d to finish writing.", step)
        try:
            super()._async_wait()
        except (Exception, CheckpointException) as exc:
            self.save_future, self.async_step = None, None  # reported once, not again at close()
            raise self._save_failed(step if step is not None else -1, exc) from exc
        if self.save_future is None:
            self.async_step = None

    def close(self) -> None:
        """torchtitan's close() after the asynchronous save in flight is written: the launch may end
        between two saves (module docstring, guarantee 4). A failed save raises, unless the launch is
        already ending on another exception: that one is what the launch reports (a full disk often shows
        up first as ENOSPC from another writer, such as metrics.jsonl, while the background save fills
        it), and raising here would skip the rest of Trainer.close() (summary.json); the failed save is
        then logged with its step and its partial folder is removed all the same."""
        ending_on_error = sys.exc_info()[1] is not None
        try:
            if getattr(self, "enable", False) and getattr(self, "save_future", None) is not None:
                self._async_wait()
        except CheckpointSaveError:
            if not ending_on_error:
                raise
        finally:
            super().close()

    def _save_failed(self, step: int, exc: BaseException) -> CheckpointSaveError:
        path = self._create_checkpoint_id(step)
        disk_full = is_disk_full(exc, self.folder)
        free = _free_bytes(self.folder)
        removed = "it was not created"
        if os.path.exists(path):
            removed = "the partial folder was removed"
            if int(os.environ.get("RANK", "0")) == 0:
                try:
                    shutil.rmtree(path)
                except OSError as e:
                    removed = (f"removing the partial folder failed ({e}); it has no complete .metadata, so a "
                               f"resume skips it")
        cause = "no space left on device" if disk_full else f"{type(exc).__name__}: {exc}"
        fix = (" Free space on that file system (delete old step-N folders or set checkpoint.keep_latest_k) or "
               "choose a RUN_DIR on a larger one, then relaunch." if disk_full else "")
        message = (f"{cause} while writing checkpoint step {step} to {path} "
                   f"({'unknown' if free is None else f'{free / 2**20:.1f} MiB'} free); {removed}; "
                   f"{describe_resume_point(self, step)}{fix}")
        logger.error(message)
        return CheckpointSaveError(message, disk_full)


def install(trainer: Any) -> RecipeCheckpointManager:
    """Replace ``trainer.checkpointer`` (torchtitan's, just built in ``Trainer.__init__``) by a
    :class:`RecipeCheckpointManager` built from the same arguments: the same stateful objects (model
    parts, optimizers, LR schedulers, data loader, train state) and the same ``[checkpoint]`` config."""
    old = trainer.checkpointer
    states = dict(old.states)
    model = states.pop(MODEL)
    dataloader, optimizers, lr_schedulers = (states.pop(k, None) for k in (DATALOADER, OPTIMIZER, LR_SCHEDULER))
    old.close()  # its purge thread / async process, if any
    new = RecipeCheckpointManager(
        dataloader=dataloader,
        model_parts=model.model,
        optimizers=optimizers,
        lr_schedulers=lr_schedulers,
        states=states,  # {"train_state": trainer} and anything else registered
        checkpoint_config=trainer.job_config.checkpoint,
        sd_adapter=getattr(old, "sd_adapter", None),
        base_folder=trainer.job_config.job.dump_folder,
    )
    new.trainer = trainer
    trainer.checkpointer = new
    return new
