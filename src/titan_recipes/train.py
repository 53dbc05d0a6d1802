"""Training entry point: ``python -m titan_recipes.train --job.config_file X [--section.key value ...]``.

This is torchtitan 0.2.2's own ``torchtitan.train.main`` with :class:`titan_recipes.trainer.RecipeTrainer`
(imported after :func:`titan_recipes.cpu.prepare_device`, so on a machine without a usable GPU
torchtitan trains on the CPU with gloo; with a GPU nothing is patched). Launch it through torchrun
(``recipes/<name>/run_train.sh`` does). A configuration error prints its message without a traceback
and exits with :data:`CONFIG_ERROR_EXIT`; a launch stopped for a preemption signal exits with
``launch.preempt_exit_code`` (:mod:`titan_recipes.preemption`).
"""

from __future__ import annotations

import logging
import os
import sys

from . import preemption
from .errors import ConfigError
from .preemption import PREEMPTED_FILE  # noqa: F401  (re-exported: job scripts and tests read it)

logger = logging.getLogger(__name__)


def main() -> None:
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: die with the torchrun agent
        from .rundir import die_with_parent

        die_with_parent()
    from .config import check_config_file
    from .config.flags import register_toml_only_flags, with_config_module

    check_config_file(sys.argv[1:])  # a TOML syntax error names the file and line (torchtitan's does not)
    sys.argv[1:] = with_config_module(sys.argv[1:])  # before torchtitan's import binds sys.argv[1:]
    from .trainer import RecipeTrainer  # applies the CPU fixes before torchtitan.train is imported

    from torchtitan.train import main as torchtitan_main

    register_toml_only_flags()
    torchtitan_main(RecipeTrainer)
    if preemption.preempted:  # torchtitan's main has closed the trainer and destroyed the process group
        logger.info(preemption.preempted["line"])
        sys.exit(preemption.preempted["code"])


# -- the command line: a configuration error as one message ---------------------------------------------

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


def _is_config_error(e: BaseException) -> bool:
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
        if e.code == CONFIG_ERROR_EXIT and not preemption.preempted:  # tyro printed the error: an unknown flag, a bad value
            _exit_on_config_error(None)
        raise
    except Exception as e:
        if _is_config_error(e):
            _exit_on_config_error(e)
        raise


if __name__ == "__main__":
    cli_main()
