"""Train llama3 ``debugmodel`` with an optimizer torchtitan does not ship (Lion, written below) and a
OneCycleLR schedule, which torchtitan's LambdaLR-only scheduler container would not accept.

    python examples/inject_custom_optimizer.py [--section.key value ...]          # one process
    torchrun --nproc_per_node 2 examples/inject_custom_optimizer.py               # FSDP over 2 processes

The job config is recipes/debug/train.toml (data, tokenizer, checkpointing, metrics, parallelism);
arguments override it as in a recipe launch (``--training.steps 6 --launch.stop_at_step 3``). The
model comes from a factory and the optimizer and schedule from Python: nothing is registered and the
Trainer is not subclassed (see titan_recipes.inject). Run from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

from titan_recipes import inject  # first: prepares torchtitan (CPU fixes) before it is imported

import torch  # noqa: E402
from torchtitan.models.llama3 import Transformer, llama3_args  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "recipes" / "debug" / "train.toml"


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
    interpolated momentum, with decoupled weight decay. Element-wise, so FSDP's sharded DTensor
    parameters need nothing special."""

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1)
                p.add_(update.sign_(), alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)


def main(argv: list[str]) -> None:
    job_config = inject.load_job_config(CONFIG, argv)  # read first: the schedule needs training.steps
    steps = job_config.training.steps

    def optimizer(named_params):  # called once per model part with its (fqn, parameter) pairs
        decay = [p for name, p in named_params if p.ndim >= 2]
        no_decay = [p for name, p in named_params if p.ndim < 2]  # norms
        return Lion([{"params": decay, "weight_decay": 0.1}, {"params": no_decay}], lr=3e-4)

    def lr_scheduler(opt):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=steps, pct_start=0.3,
                                                   cycle_momentum=False)

    inject.train(
        job_config,
        model=lambda args: Transformer(args),  # called on the meta device; Transformer has init_weights
        model_args=llama3_args["debugmodel"],  # exact FLOP count; seq_len comes from the config
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
