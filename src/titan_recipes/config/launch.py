"""``[launch]``: what one launch does within a run (stop step, preemption signals, non-finite losses)."""
# No ``from __future__ import annotations`` here: torchtitan reads these field types at run time
# (``ConfigManager._dict_to_dataclass`` builds nested sections from TOML tables by ``is_dataclass(f.type)``).

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass
class Launch:
    """``[launch]``: what this launch does within a run; a run may span several launches."""

    stop_at_step: int = -1
    """Stop after this step, right after its regular checkpoint, even if ``training.steps`` is larger
    (-1: train to ``training.steps``). The LR schedule still follows ``training.steps``, so launching
    again in the same run directory continues the same run exactly. Must be a multiple of
    ``checkpoint.interval`` with checkpointing enabled, so that the stop point is always saved. For
    chunked Slurm jobs and for resume tests."""

    save_on_signal: bool = True
    """Stop cleanly when the process receives one of ``signals`` (Slurm preemption or ``scancel`` send
    SIGTERM, ``#SBATCH --signal=USR1@120`` sends SIGUSR1 before the time limit): the handler only sets
    a flag; at the next step boundary all ranks agree (an all-reduce MAX of one int per step over the
    default process group, so ranks signalled during different steps stop after the same step), save a
    full checkpoint at that step (model, optimizer, LR scheduler, data loader and step, even off
    ``checkpoint.interval`` and even with ``checkpoint.last_save_model_only``), write
    ``preempted.json`` into the run directory and exit with ``preempt_exit_code``. Launching again in
    the same run directory resumes from that checkpoint exactly. The check costs one 4-byte all-reduce
    and one host sync per step (microseconds on gloo and NCCL). The save must finish before the
    scheduler's SIGKILL (Slurm ``KillWait``, torchrun ``--shutdown-timeout``, both 30 s by default).
    False: the signals keep their default action and the process dies at once, losing the steps since
    the last regular checkpoint."""

    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signal names that trigger the save-and-exit of ``save_on_signal``. torchrun forwards SIGTERM,
    SIGINT, SIGHUP and SIGQUIT to its workers; it forwards SIGUSR1 only when started with
    ``--signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1`` (or ``PET_SIGNALS_TO_HANDLE``), and
    otherwise dies of it (slurm/train.sbatch shows both). On the command line: ``--launch.signals
    SIGTERM,SIGUSR1``. Empty: no handler is installed."""

    preempt_exit_code: int = 143
    """Exit status of a training process that stopped for a signal (143 = 128 + SIGTERM, the shell's
    convention). torchrun reports 1 whatever its workers return once it was signalled itself, so job
    scripts that launch through torchrun look for ``preempted.json`` in the run directory instead
    (slurm/train.sbatch does)."""

    on_nonfinite: str = "stop"
    """What a non-finite (NaN or inf) loss or gradient norm does, checked on every rank after every step,
    before that step's checkpoint (titan_recipes.guard): ``"stop"`` raises at once with the step and the
    values, exits non-zero and records ``exit_reason = "diverged"`` in ``summary.json``; the step is not
    saved and earlier checkpoints stay, so a relaunch (after lowering ``optimizer.lr``, say) resumes from
    the last good one. ``"warn"`` logs a warning and trains on. In both modes a checkpoint whose weights
    are non-finite is never written. Costs one pass over the local gradients (as clipping does), one
    two-float all-reduce and one host sync per step."""

    def validate(self, job_config: Any) -> None:
        validate_launch(job_config)


def validate_launch(config: Any) -> None:
    _validate_signals(config.launch)
    if config.launch.on_nonfinite not in ("stop", "warn"):
        raise ConfigError(
            f'launch.on_nonfinite must be "stop" or "warn", got {config.launch.on_nonfinite!r}. Fix it in the '
            f"[launch] table of the TOML file or with --launch.on_nonfinite."
        )
    stop = config.launch.stop_at_step
    if stop == -1:
        return
    if stop <= 0:
        raise ConfigError(f"launch.stop_at_step must be -1 (off) or a positive step, got {stop}.")
    if not config.checkpoint.enable or stop % config.checkpoint.interval:
        raise ConfigError(
            f"launch.stop_at_step = {stop} needs checkpoint.enable = true and a multiple of "
            f"checkpoint.interval (= {config.checkpoint.interval}, enable = {config.checkpoint.enable}); "
            f"otherwise the launch would stop without saving its last steps."
        )


def _validate_signals(launch: Any) -> None:
    import signal

    for name in launch.signals:
        sig = getattr(signal, name, None) if name.startswith("SIG") else None
        if not isinstance(sig, signal.Signals) or sig in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(
                f"launch.signals: {name!r} is not a signal a process can catch; use names such as "
                f"\"SIGTERM\" and \"SIGUSR1\" (got {launch.signals})."
            )
    if not 1 <= launch.preempt_exit_code <= 255:
        raise ConfigError(
            f"launch.preempt_exit_code must be in 1..255 (an exit status), got {launch.preempt_exit_code}."
        )
