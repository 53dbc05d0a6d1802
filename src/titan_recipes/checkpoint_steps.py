"""What a run's checkpoint folder holds: ``step-N`` folders, each full, weights-only or incomplete, and
the sentence that tells a user where a relaunch resumes. Standard library only (the divergence guard
and the checkpoint manager both use it)."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

_STEP = re.compile(r"^step-(\d+)$")


def checkpoint_kind(step_dir: str) -> str:
    """``"full"`` (every training state), ``"model"`` (weights only: a final export, DCP or HF
    safetensors), or ``"incomplete"`` (no or unreadable ``.metadata``: an interrupted or failed save)."""
    meta = os.path.join(step_dir, ".metadata")
    if not os.path.isfile(meta):
        return "model" if os.path.isfile(os.path.join(step_dir, "model.safetensors.index.json")) else "incomplete"
    try:
        with open(meta, "rb") as f:
            keys = pickle.load(f).state_dict_metadata.keys()
    except Exception:  # truncated or foreign: not a checkpoint a resume can use
        return "incomplete"
    sections = {k.split(".", 1)[0] for k in keys}
    return "full" if {"optimizer", "lr_scheduler", "train_state"} <= sections else "model"


def checkpoint_steps(folder: str) -> list[tuple[int, str]]:
    """``(step, kind)`` of every ``step-N`` folder, newest first."""
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _STEP.match(name))]
    return [(step, checkpoint_kind(os.path.join(folder, name))) for step, name in sorted(found, reverse=True)]


def newest_full_step(folder: str, before: int | None = None) -> int | None:
    for step, kind in checkpoint_steps(folder):
        if (before is None or step < before) and kind == "full":
            return step
    return None


def describe_resume_point(ckpt: Any, step: int) -> str:
    """One sentence: which complete checkpoint before ``step`` a relaunch in the same run directory
    resumes from."""
    if not getattr(ckpt, "enable", False):
        return "checkpointing is off (checkpoint.enable = false), so a relaunch starts from step 0."
    prev = newest_full_step(ckpt.folder, before=step)
    if prev is None:
        return f"no earlier complete checkpoint exists in {ckpt.folder}, so a relaunch starts from step 0."
    return (f"the previous checkpoint {os.path.join(ckpt.folder, f'step-{prev}')} (step {prev}) is intact and a "
            f"relaunch in the same run directory resumes from it.")
