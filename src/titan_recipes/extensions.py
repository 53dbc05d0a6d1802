"""The one interface through which features attach to the training loop.

:class:`~titan_recipes.trainer.RecipeTrainer` overrides each torchtitan hook once and calls its
extensions in order; a feature implements only the hooks it needs:

* :meth:`TrainerExtension.on_batch`: every micro-batch, after loading, before the forward (may pop
  extra keys, such as the per-domain loss's ``domain_ids``, that the model must not see);
* :meth:`TrainerExtension.on_loss`: every micro-batch, with the loss of its forward/backward;
* :meth:`TrainerExtension.on_step_end`: every rank after the optimizer step, before the loop saves
  this step's checkpoint (so a check can still stop the save);
* :meth:`TrainerExtension.close`: when the trainer closes.

The extensions today: the divergence guard (:mod:`titan_recipes.guard`), the per-domain loss and ADO
(:mod:`titan_recipes.domain_loss`) and the monitors (:mod:`titan_recipes.monitor`, which hook the
optimizer and modules themselves and only need ``close``).
"""

from __future__ import annotations

from typing import Any


class TrainerExtension:
    """Base class: every hook does nothing."""

    def on_batch(self, input_dict: dict[str, Any], labels: Any) -> None:
        """A micro-batch was loaded (``input_dict`` may be changed in place)."""

    def on_loss(self, loss: Any) -> None:
        """A micro-batch's forward and backward returned ``loss``."""

    def on_step_end(self, step: int) -> None:
        """Optimizer step ``step`` is done on this rank; its checkpoint is not written yet."""

    def close(self) -> None:
        """The trainer closes."""


class Monitors(TrainerExtension):
    """The optimizer and activation monitors: their hooks are on the optimizers and modules; closing
    removes them."""

    def __init__(self, monitors: list[Any]):
        self.monitors = monitors

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.remove()
