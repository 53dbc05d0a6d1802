"""Training entry point: ``python -m titan_recipes.train --job.config_file X [--section.key value ...]``.

This is torchtitan 0.2.2's own ``torchtitan.train.main`` with our TrainSpecs registered and a Trainer
subclass that validates the config first. On a machine without a usable GPU it applies the CPU fixes
of :mod:`titan_recipes.cpu` before torchtitan is imported, and torchtitan then trains with gloo; with a
GPU nothing is patched. Launch it through torchrun (``recipes/<name>/run_train.sh`` does).
"""

from __future__ import annotations

import logging

from . import cpu

logger = logging.getLogger(__name__)


def _prepare() -> None:
    cpu.prepare_torchtitan_import()
    if not cpu.cuda_available():
        cpu.use_cpu_device()


def trainer_class():
    """The Trainer subclass; importing torchtitan.train must wait until the device is prepared."""
    _prepare()
    from torchtitan.train import Trainer

    from .config import ConfigError, validate_job_config, validate_launch
    from .records import write_run_record
    from .specs import register_recipe_spec, register_recipe_specs

    register_recipe_specs()

    class RecipeTrainer(Trainer):
        """torchtitan's Trainer, after checking the config and writing the run record."""

        def __init__(self, job_config):
            validate_job_config(job_config)
            validate_launch(job_config)
            register_recipe_spec(job_config.model.name)  # recipes.<any TrainSpec>, on first use
            write_run_record(job_config)
            super().__init__(job_config)
            self._check_vocab()

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

        def should_continue_training(self) -> bool:
            stop = self.job_config.launch.stop_at_step
            if stop > 0 and self.step >= stop:
                logger.info("launch.stop_at_step = %d reached; checkpoint saved, exiting this launch.", stop)
                return False
            return super().should_continue_training()

    return RecipeTrainer


def main() -> None:
    cls = trainer_class()
    from torchtitan.train import main as torchtitan_main

    torchtitan_main(cls)


if __name__ == "__main__":
    main()
