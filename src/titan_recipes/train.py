"""Training entry point: ``python -m titan_recipes.train --job.config_file X [--section.key value ...]``.

This is torchtitan 0.2.2's own ``torchtitan.train.main`` with our TrainSpecs registered and a Trainer
subclass that validates the config first. On a machine without a usable GPU it applies the CPU fixes
of :mod:`titan_recipes.cpu` before torchtitan is imported, and torchtitan then trains with gloo; with a
GPU nothing is patched. Launch it through torchrun (``recipes/<name>/run_train.sh`` does).

Preemption (``[launch] save_on_signal``, on by default): SIGTERM or SIGUSR1 only set a flag; at the
next step boundary the ranks agree, save a full checkpoint at that step, write ``preempted.json`` into
the run directory and exit with ``launch.preempt_exit_code``, so a relaunch in the same directory
continues exactly (tests/integration/test_preemption.py, slurm/train.sbatch).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import cpu

logger = logging.getLogger(__name__)

PREEMPTED_FILE = "preempted.json"
"""Written into the run directory (``job.dump_folder``) by rank 0 when a launch stops for a signal, and
removed when the next launch starts: job scripts behind torchrun, which turns every worker exit status
into 1 once it was signalled itself, read it to decide to requeue."""

_preempted: dict[str, Any] = {}
"""Set by RecipeTrainer when it stopped for a signal; main() logs it last and exits with its code."""


def _prepare() -> None:
    cpu.prepare_torchtitan_import()
    if not cpu.cuda_available():
        cpu.use_cpu_device()


def trainer_class():
    """The Trainer subclass; importing torchtitan.train must wait until the device is prepared."""
    _prepare()
    from torchtitan.train import Trainer

    from .checkpointing import install as install_checkpointer
    from .config import ConfigError, validate_job_config, validate_launch, validate_monitor, validate_values
    from .domain_loss import build_domain_loss
    from .guard import DivergenceGuard
    from .monitor import build_monitors
    from .records import write_run_record
    from .specs import register_recipe_spec, register_recipe_specs

    register_recipe_specs()

    class RecipeTrainer(Trainer):
        """torchtitan's Trainer, after checking the config and writing the run record."""

        def __init__(self, job_config):
            validate_job_config(job_config)
            validate_values(job_config)  # ranges: steps, seq_len, checkpoint.interval ... (before validate_launch divides)
            validate_launch(job_config)
            validate_monitor(job_config)  # [monitor] errors before the model is built
            self._signal_name: str | None = None  # first preemption signal this process received
            self._first_step: int | None = None  # the step this launch started from
            self.domain_loss = None  # set after torchtitan's __init__ built the data loader
            self.guard = None  # divergence guard, set once the model exists
            self._run_dir_locked = _lock_run_dir(job_config)  # before anything is written into the run dir
            self._install_signal_handlers(job_config)
            register_recipe_spec(job_config.model.name)  # recipes.<any TrainSpec>, on first use
            write_run_record(job_config)
            super().__init__(job_config)
            install_checkpointer(self)  # resume from the newest full checkpoint; clean failed saves
            self.guard = DivergenceGuard(self)  # [launch] on_nonfinite
            self.domain_loss = build_domain_loss(self)  # mixture runs: per-domain loss, ADO feedback
            if self.domain_loss is not None:
                self.loss_fn = self.domain_loss.loss
            self._check_vocab()
            self.monitors = build_monitors(self)  # [monitor]: optimizer/activation hooks

        def _check_vocab(self) -> None:
            vocab = getattr(self.model_args, "vocab_size", None)
            if self.tokenizer is not None and vocab is not None:
                n = self.tokenizer.get_vocab_size()
                if n > vocab:
                    from .tokenizer import tokenizer_path

                    path, setting = tokenizer_path(self.job_config)
                    raise ConfigError(
                        f"The tokenizer at {setting} = '{path}' has {n} tokens but model flavor "
                        f"'{self.job_config.model.flavor}' has vocab_size {vocab}: token ids would index "
                        f"past the embedding. Use a tokenizer with at most {vocab} tokens or another flavor."
                    )

        def post_dataloading_process(self, input_dict, labels):
            if self.domain_loss is not None:  # the batch's domain ids go to the loss, not the model
                self.domain_loss.take(input_dict)
            return super().post_dataloading_process(input_dict, labels)

        def forward_backward_step(self, **kwargs):
            loss = super().forward_backward_step(**kwargs)
            if self.guard is not None:
                self.guard.add_loss(loss)
            return loss

        def train_step(self, data_iterator):
            super().train_step(data_iterator)
            if self.guard is not None:  # before the loop saves this step's checkpoint
                self.guard.check(self.step)
            if self.domain_loss is not None:
                self.domain_loss.end_step(self.step)

        def train(self):
            super().train()
            if self.step >= self.job_config.training.steps and not _preempted and _is_rank0():
                self._report_fixture()

        def close(self) -> None:
            try:
                super().close()  # the checkpointer, then summary.json
            finally:
                if getattr(self, "_run_dir_locked", False):  # the run directory's lock, last
                    from .rundir import release

                    self._run_dir_locked = False
                    release(self.job_config.job.dump_folder)

        def _report_fixture(self) -> None:
            """End a completed launch with its recipe's fixture comparison, when the fixture has an
            entry for this machine and these overrides (recipes/<name>/expected_loss.json)."""
            from .fixtures import report_launch

            matched, text = report_launch(self.job_config.job.config_file, Path(self.job_config.job.dump_folder))
            if matched is None:
                logger.info("Loss curve not compared with a fixture: %s.", text)
            else:
                (logger.info if matched else logger.warning)("Loss curve against the recipe's fixture:\n%s", text)

        def should_continue_training(self) -> bool:
            if self._first_step is None:
                self._first_step = self.step
            if self._signal_agreed():
                self._stop_for_signal()
                return False
            stop = self.job_config.launch.stop_at_step
            if stop > 0 and self.step >= stop:
                logger.info("launch.stop_at_step = %d reached; checkpoint saved, exiting this launch.", stop)
                return False
            return super().should_continue_training()

        # -- preemption: SIGTERM/SIGUSR1 -> agree at a step boundary -> full checkpoint -> exit --------

        def _install_signal_handlers(self, job_config) -> None:
            launch = job_config.launch
            if _is_rank0():  # a marker left by an earlier launch must not make this one look preempted
                _remove_marker(job_config.job.dump_folder)
            if not launch.save_on_signal:
                return

            def flag(signum, frame):  # only set a flag: the step in progress finishes first
                if self._signal_name is None:
                    self._signal_name = signal.Signals(signum).name

            from .data.common import set_preemption_signals

            set_preemption_signals(launch.signals)  # reader workers ignore these too: this process decides
            for name in launch.signals:
                signal.signal(getattr(signal, name), flag)
            logger.info(
                "launch.save_on_signal: %s save a full checkpoint at the next step boundary and exit with "
                "code %d.", " or ".join(launch.signals), launch.preempt_exit_code,
            )

        def _signal_agreed(self) -> bool:
            """Whether any rank got a signal; every rank calls it once per step boundary, so all stop
            after the same step. One int all-reduced (MAX) over the default process group."""
            if not self.job_config.launch.save_on_signal or self.step >= self.job_config.training.steps:
                return False
            import torch
            import torch.distributed as dist

            flag = int(self._signal_name is not None)
            if dist.is_initialized() and dist.get_world_size() > 1:
                t = torch.tensor([flag], dtype=torch.int32, device=self.device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = int(t.item())
            return flag > 0

        def _stop_for_signal(self) -> None:
            cfg, step = self.job_config, self.step
            code = cfg.launch.preempt_exit_code
            signal_name = self._signal_name or "another rank's signal"
            ckpt = self.checkpointer
            saved = None  # the checkpoint step a relaunch resumes from
            if step == self._first_step:
                saved = step if step > 0 else None
                line = (f"preempted ({signal_name}) before the first step of this launch: nothing new to save "
                        f"(the run resumes from step {step}), exiting with code {code}")
            elif not ckpt.enable or ckpt.load_only:
                line = (f"preempted ({signal_name}) after step {step}: checkpointing is disabled "
                        f"(checkpoint.enable / load_only), nothing saved, exiting with code {code}")
            else:
                regular = step % cfg.checkpoint.interval == 0 or (step == 1 and cfg.checkpoint.enable_first_step_checkpoint)
                if regular:  # the loop's save() just wrote (or, async, is writing) a full checkpoint here
                    ckpt._async_wait()  # the process exits next; CheckpointManager.close() does not wait
                else:
                    self._save_full_checkpoint(step)
                saved = step
                line = f"preempted: saved checkpoint at step {step}, exiting with code {code} ({signal_name})"
            if _is_rank0():
                marker = {"step": step, "signal": signal_name, "exit_code": code, "time": time.time(),
                          "checkpoint": f"{cfg.checkpoint.folder}/step-{saved}" if saved is not None else None}
                Path(cfg.job.dump_folder, PREEMPTED_FILE).write_text(json.dumps(marker, indent=1) + "\n")
            _preempted.update(line=line, code=code)  # logged by main() as the launch's last line

        def _save_full_checkpoint(self, step: int) -> None:
            """CheckpointManager.save(last_step=True) is torchtitan's public way to save off the
            interval (synchronously, after waiting for any async save in flight). It is meant for the
            end of training and then honours checkpoint.last_save_model_only / last_save_in_hf, so those
            are switched off for this one save: a preemption checkpoint must hold the optimizer, LR
            scheduler, data loader and step, as torchtitan's own comment on _save_last_step intends."""
            ckpt = self.checkpointer
            self._reshard_model()
            keep = ckpt.last_save_model_only, ckpt.last_save_in_hf
            ckpt.last_save_model_only = ckpt.last_save_in_hf = False
            try:
                ckpt.save(step, last_step=True)
            finally:
                ckpt.last_save_model_only, ckpt.last_save_in_hf = keep

        def _reshard_model(self) -> None:
            """Put every FSDP module back into its sharded state before saving off the training step.
            A forward without backward (torchtitan's validation, e.g. at step 1) leaves the modules with
            ``reshard_after_forward=False`` (the root: final norm and output) unsharded, so their
            registered parameters are the unsharded tensors, not the sharded DTensors the optimizer holds;
            get_optimizer_state_dict then finds no name for those optimizer parameters and fails with
            ``KeyError: <param index>`` (55 for llama3 debugmodel). The loop's own saves come right after
            a backward (everything resharded), so only this preemption save needs it. No-op otherwise."""
            from torch.distributed.fsdp import FSDPModule

            for part in self.model_parts:
                for module in part.modules():
                    if isinstance(module, FSDPModule):
                        module.reshard()

    return RecipeTrainer


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _remove_marker(run_dir: str) -> None:
    try:
        os.remove(os.path.join(run_dir, PREEMPTED_FILE))
    except FileNotFoundError:
        pass


def _lock_run_dir(job_config) -> bool:
    """Global rank 0 takes the run directory's lock (titan_recipes.rundir); True when it did."""
    if not _is_rank0():
        return False
    from . import rundir

    rundir.acquire(job_config.job.dump_folder)
    return True


def main() -> None:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: die with the torchrun agent
        from .rundir import die_with_parent

        die_with_parent()
    from .config import check_config_file

    check_config_file(sys.argv[1:])  # a TOML syntax error names the file and line (torchtitan's does not)
    sys.argv[1:] = with_config_module(sys.argv[1:])  # before torchtitan's import binds sys.argv[1:]
    cls = trainer_class()
    from torchtitan.train import main as torchtitan_main

    register_toml_only_flags()
    torchtitan_main(cls)
    if _preempted:  # torchtitan's main has closed the trainer and destroyed the process group
        logger.info(_preempted["line"])
        sys.exit(_preempted["code"])


# -- the command line: every key in --help, a configuration error as one message --------------------------

CONFIG_ERROR_EXIT = 2
"""Exit status of ``python -m titan_recipes.train`` stopped by a configuration error (a ConfigError, an
unknown TOML key, an unknown flag or a value the parser rejects): the status of a command-line usage
error, as argparse and tyro use it. The message is printed without a traceback, followed by
:data:`CONFIG_ERROR_LINE`."""

CONFIG_ERROR_LINE = (
    f"titan_recipes.train: configuration error (exit status {CONFIG_ERROR_EXIT}); fix the setting named above."
)
"""Printed last by a process stopped by a configuration error. scripts/recipe_launch.sh looks for it to
leave torchrun's own failure report (a traceback and the ChildFailedError summary) off the console."""

CUSTOM_CONFIG_MODULE = "titan_recipes.config"
_CUSTOM_CONFIG_FLAGS = ("--job.custom_config_module", "--job.custom-config-module")


def with_config_module(args: list[str]) -> list[str]:
    """``args`` plus ``--job.custom_config_module titan_recipes.config`` unless the command line or the
    TOML file names a module. torchtitan merges our sections only when one of them does, so without it
    ``--help`` with no config file would list none of ours, and RecipeTrainer would find no
    ``[launch]``. (The same rule as :func:`titan_recipes.inject.load_job_config`.)"""
    from .config import config_file_from_args, load_toml

    if any(arg.split("=", 1)[0] in _CUSTOM_CONFIG_FLAGS for arg in args):
        return args
    path = config_file_from_args(args)
    job = load_toml(path).get("job", {}) if path is not None else {}
    if isinstance(job, dict) and job.get("custom_config_module"):
        return args
    return [*args, "--job.custom_config_module", CUSTOM_CONFIG_MODULE]


_toml_only_registered = False


def _mentions_any(annotation: Any) -> bool:
    from typing import get_args

    return annotation is Any or any(_mentions_any(a) for a in get_args(annotation))


def _toml_only(args: list[str]) -> Any:
    raise ValueError(
        f"this key holds nested tables or lists, which the command line cannot express (got {args[0]!r}); "
        f"set it in the TOML file, as its help text below shows."
    )


def register_toml_only_flags() -> None:
    """Give each key whose type holds ``Any`` (``mixture.query``, ``mosaic_dataloader.dataset.streams``,
    ``mosaic_tokenizer.kwargs`` ...) a ``--section.key {TOML only}`` flag, so that ``--help`` lists it
    with its docstring. tyro, torchtitan's CLI parser, cannot build such a value from a string and
    drops the field from the parser and the help without a word when it has a default; with this rule
    the flag exists and using it is an error that says to set the key in the TOML file. Registered on
    torchtitan's own tyro registry (``torchtitan.config.manager.custom_registry``, which its
    ConfigManager passes to ``tyro.cli``); idempotent."""
    global _toml_only_registered
    if _toml_only_registered:
        return
    from torchtitan.config.manager import custom_registry
    from tyro.constructors import PrimitiveConstructorSpec

    @custom_registry.primitive_rule
    def toml_only_rule(type_info):
        if not _mentions_any(type_info.type):
            return None
        return PrimitiveConstructorSpec(
            nargs=1, metavar="{TOML only}", instance_from_str=_toml_only,
            is_instance=lambda value: True, str_from_instance=lambda value: [json.dumps(value)],
        )

    _toml_only_registered = True


def _is_config_error(e: BaseException) -> bool:
    from .config import ConfigError

    # torchtitan's ConfigManager rejects an unknown TOML key with a plain ValueError (manager.py L168)
    return isinstance(e, ConfigError) or (isinstance(e, ValueError) and str(e).startswith("Invalid field names"))


def _exit_on_config_error(e: BaseException | None) -> None:
    """Print ``e`` (None: tyro printed its message already) and CONFIG_ERROR_LINE to stderr, and exit
    with CONFIG_ERROR_EXIT. Every rank prints (torchrun shows the ranks in LOG_RANK), so an error only
    one rank meets is not lost. Under torchrun the message also goes to the worker's error file
    (TORCHELASTIC_ERROR_FILE), so torchrun's failure summary, where it is shown (slurm/train.sbatch),
    holds the message instead of "To enable traceback see ..."."""
    if e is not None:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            from torch.distributed.elastic.multiprocessing.errors import get_error_handler

            get_error_handler().record_exception(e)
    print(CONFIG_ERROR_LINE, file=sys.stderr, flush=True)
    sys.exit(CONFIG_ERROR_EXIT)


def cli_main() -> None:
    """``python -m titan_recipes.train``: :func:`main`, with a configuration error printed as its
    message, without a traceback, and exit status CONFIG_ERROR_EXIT. ``main()`` itself raises."""
    try:
        main()
    except SystemExit as e:
        if e.code == CONFIG_ERROR_EXIT and not _preempted:  # tyro printed the error: an unknown flag, a bad value
            _exit_on_config_error(None)
        raise
    except Exception as e:
        if _is_config_error(e):
            _exit_on_config_error(e)
        raise


if __name__ == "__main__":
    cli_main()
