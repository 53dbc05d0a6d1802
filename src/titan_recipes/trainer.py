"""``RecipeTrainer``: torchtitan 0.2.2's Trainer with the config checked, the run recorded, preemption
handled and the extensions attached.

Import it after :func:`titan_recipes.cpu.prepare_device` (``titan_recipes.train.main`` and
``titan_recipes.inject`` do): ``torchtitan.train`` copies torchtitan's device type when it is first
imported, so on a machine without a GPU the CPU fixes must come first. The first lines below apply
them (idempotently) so that importing this module alone is safe too.

What it adds to torchtitan's Trainer, each in its own unit:

* validation of the whole config before anything is built (:func:`titan_recipes.config.validate_config`);
* the run directory's lock and run record (:mod:`titan_recipes.rundir`, :mod:`titan_recipes.records`);
* checkpoints that resume from the newest complete one (:mod:`titan_recipes.checkpointing`);
* preemption (:mod:`titan_recipes.preemption`) and ``launch.stop_at_step``;
* extensions (:mod:`titan_recipes.extensions`): the divergence guard, the per-domain loss, the monitors;
* at the end of a completed launch, the comparison with the recipe's fixture (:mod:`titan_recipes.fixtures`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from .cpu import prepare_device

prepare_device()  # before torchtitan.train is imported below: it binds torchtitan's device type

from torchtitan.train import Trainer  # noqa: E402  (after prepare_device, see above)

from . import preemption  # noqa: E402
from .checkpointing import install as install_checkpointer  # noqa: E402
from .config import validate_config  # noqa: E402
from .domain_loss import build_domain_loss  # noqa: E402
from .extensions import Monitors, TrainerExtension  # noqa: E402
from .guard import DivergenceGuard  # noqa: E402
from .hf.load import check_initial_load  # noqa: E402
from .monitor import build_monitors  # noqa: E402
from .records import write_run_record  # noqa: E402
from .specs import register_recipe_spec, register_recipe_specs  # noqa: E402

logger = logging.getLogger(__name__)

register_recipe_specs()


class RecipeTrainer(Trainer):
    """torchtitan's Trainer, after checking the config and writing the run record (module docstring)."""

    def __init__(self, job_config):
        validate_config(job_config)  # types, ranges, [launch], [monitor], each data source's section
        self.extensions: list[TrainerExtension] = []
        self._run_dir_locked = _lock_run_dir(job_config)  # before anything is written into the run dir
        self.preemption = preemption.Preemption(job_config)
        register_recipe_spec(job_config.model.name)  # recipes.<any TrainSpec>, on first use
        write_run_record(job_config)
        check_initial_load(job_config)  # before torchtitan loads HF weights by name, whatever they are
        super().__init__(job_config)
        install_checkpointer(self)  # resume from the newest full checkpoint; clean failed saves
        self.extensions.append(DivergenceGuard(self))  # [launch] on_nonfinite; first: it may stop the step
        domain_loss = build_domain_loss(self)  # sources with domains: per-domain loss, ADO feedback
        if domain_loss is not None:
            self.loss_fn = domain_loss.loss
            self.extensions.append(domain_loss)
        self._check_vocab()
        self.extensions.append(Monitors(build_monitors(self)))  # [monitor]: optimizer/activation hooks

    def _check_vocab(self) -> None:
        from .tokenizer import check_vocab_size

        check_vocab_size(self.tokenizer, getattr(self.model_args, "vocab_size", None), self.job_config)

    # -- torchtitan's hooks, each calling the extensions ------------------------------------------
    def post_dataloading_process(self, input_dict, labels):
        for extension in self.extensions:
            extension.on_batch(input_dict, labels)
        return super().post_dataloading_process(input_dict, labels)

    def forward_backward_step(self, **kwargs):
        loss = super().forward_backward_step(**kwargs)
        for extension in self.extensions:
            extension.on_loss(loss)
        return loss

    def train_step(self, data_iterator):
        super().train_step(data_iterator)
        for extension in self.extensions:  # before the loop saves this step's checkpoint
            extension.on_step_end(self.step)

    def should_continue_training(self) -> bool:
        if self.preemption.should_stop(self.step, self.device):
            self.preemption.stop(self)
            return False
        stop = self.job_config.launch.stop_at_step
        if stop > 0 and self.step >= stop:
            ckpt = self.checkpointer
            if ckpt.enable and getattr(ckpt, "save_future", None) is not None:
                # An asynchronous save of this step is being written. Wait here, not in close(): a failed
                # write is then this launch's error, recorded in summary.json (torchtitan closes the
                # metrics, which write it, only after the checkpointer's close() returns).
                ckpt._async_wait()
            logger.info("launch.stop_at_step = %d reached; checkpoint saved, exiting this launch.", stop)
            return False
        return super().should_continue_training()

    def train(self):
        super().train()
        if self.step >= self.job_config.training.steps and not preemption.preempted and preemption.is_rank0():
            self._report_fixture()

    def close(self) -> None:
        try:
            for extension in getattr(self, "extensions", ()):
                extension.close()
            super().close()  # the checkpointer, then summary.json
        finally:
            if getattr(self, "_run_dir_locked", False):  # the run directory's lock, last
                from .rundir import release

                self._run_dir_locked = False
                release(self.job_config.job.dump_folder)

    def _report_fixture(self) -> None:
        """End a completed launch with its recipe's fixture comparison, when the fixture has an entry for
        this machine and these overrides (recipes/<name>/expected_loss.json)."""
        from .fixtures import report_launch

        matched, text = report_launch(self.job_config.job.config_file, Path(self.job_config.job.dump_folder))
        if matched is None:
            logger.info("Loss curve not compared with a fixture: %s.", text)
        else:
            (logger.info if matched else logger.warning)("Loss curve against the recipe's fixture:\n%s", text)


def _lock_run_dir(job_config) -> bool:
    """Global rank 0 takes the run directory's lock (titan_recipes.rundir); True when it did."""
    if not preemption.is_rank0():
        return False
    from . import rundir

    rundir.acquire(job_config.job.dump_folder)
    return True
