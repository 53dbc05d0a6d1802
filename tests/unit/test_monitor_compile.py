"""The monitors on a llama3 model compiled per ``TransformerBlock`` exactly as torchtitan compiles it
(``apply_compile``: inductor, ``fullgraph=True``): monitored steps cost no recompile, and the activation
monitor reports the modules outside the compiled blocks, with the same values as on the eager model.

Why the monitor skips modules inside compiled blocks (measured here with the monitor hooking them, and
``TORCH_LOGS=recompiles``): when the first step is not monitored, the hooks it later adds inside a block
never run (dynamo does not guard on module hooks, ``torch._dynamo.config.skip_nnmodule_hook_guards``):
0 recompiles, but the 24 inner modules are silently missing (70 activation metrics, not 406). When the
first step is monitored, the hooks are traced into the graph: 2 recompiles (a guard on each hook
closure's module name, then on the hooks' removal), 406 metrics on that step and 70 on later ones.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch._dynamo.utils import counters

import titan_recipes  # noqa: F401  (the triton stand-in, before torchtitan is imported)
from titan_recipes.fixtures import RTOL_FLOOR
from titan_recipes.monitor import ActivationMonitor, OptimizerMonitor
from torchtitan.config.job_config import Compile
from torchtitan.models.llama3.infra.parallelize import apply_compile
from torchtitan.models.llama3.model.args import TransformerModelArgs
from torchtitan.models.llama3.model.model import Transformer

ARGS = TransformerModelArgs(dim=16, n_layers=2, n_heads=2, vocab_size=64, multiple_of=16, max_seq_len=32)
STATS = ("l2_norm", "max", "min", "mean", "var", "skew", "kurtosis")
OUTSIDE = {"model": ("output",), "tok_embeddings": ("output",), "layers.0": ("input", "output"),
           "layers.1": ("input", "output"), "norm": ("input", "output"), "output": ("input", "output")}
"""What the activation monitor reports under compile: the root, the uncompiled modules, and each compiled
block from outside (its input and output); token ids (the inputs of the root and the embedding) are not
floating point and never reported."""
INSIDE = [f"layers.{i}.{m}" for i in range(2) for m in (
    "attention", "attention.wq", "attention.wk", "attention.wv", "attention.wo", "attention.inner_attention",
    "feed_forward", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3", "attention_norm", "ffn_norm")]


def build(compiled: bool) -> Transformer:
    torch.manual_seed(0)
    model = Transformer(ARGS)
    with torch.no_grad():
        model.init_weights()
    if compiled:
        apply_compile(model, Compile(enable=True))  # torch.compile(block, backend="inductor", fullgraph=True)
    return model


def train(model: Transformer, steps: list[int], interval: int, stance: str | None = None):
    """``steps`` optimizer steps numbered as given, both monitors every ``interval`` steps; returns
    (losses, {(step, "optim"|"act"): metrics}, the activation monitor)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    now, reports = [0], {}

    def report(metrics, step):
        reports[step, "act" if next(iter(metrics)).startswith("act/") else "optim"] = metrics

    common = dict(interval=interval, step_fn=lambda: now[0], report=report)
    OptimizerMonitor([model], optimizer, only_global=False, log_metrics=True, **common)
    act = ActivationMonitor([model], optimizer, **common)
    tokens = torch.randint(0, ARGS.vocab_size, (len(steps), 2, 17), generator=torch.Generator().manual_seed(1))
    losses = []
    with contextlib.ExitStack() as after_first:
        for i, step in enumerate(steps):
            now[0] = step
            optimizer.zero_grad()
            logits = model(tokens[i, :, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[i, :, 1:].flatten())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if i == 0 and stance:  # the first step compiled the blocks (forward and backward)
                after_first.enter_context(torch.compiler.set_stance(stance))
    return losses, reports, act


def test_monitored_steps_do_not_recompile_and_report_the_modules_outside_compiled_blocks():
    torch._dynamo.reset()
    graphs = counters["stats"]["unique_graphs"]
    # Step 2 (monitored) compiles the blocks; 3-5 alternate, under fail_on_recompile (raises on a recompile).
    losses, reports, monitor = train(build(compiled=True), [2, 3, 4, 5], interval=2, stance="fail_on_recompile")
    compiled_graphs = counters["stats"]["unique_graphs"] - graphs
    assert compiled_graphs == 1  # one graph serves both blocks, compiled once
    assert sorted(reports) == [(2, "act"), (2, "optim"), (4, "act"), (4, "optim")]

    want = {f"act/{name}/{io}/{stat}" for name, ios in OUTSIDE.items() for io in ios for stat in STATS}
    for step in (2, 4):
        assert set(reports[step, "act"]) == want
        assert all(math.isfinite(v) for v in reports[step, "act"].values())
    assert sorted(monitor.compiled_out) == sorted(INSIDE)
    # Parameter names as in the unwrapped model (no _orig_mod), every parameter of the compiled blocks.
    optim = reports[2, "optim"]
    assert "optim/grad_norm/layers.1.feed_forward.w2.weight" in optim
    assert not any("_orig_mod" in k for k in optim)

    # The same weights and batches on the eager model: the same losses and, on the modules and parameters
    # both report, the same statistics up to inductor's rounding. Measured (compiled vs eager, steps 2 and
    # 4; natively on AVX512 with 2 threads, with ATEN_CPU_CAPABILITY=default and =avx2, and with
    # OMP_NUM_THREADS=1): losses bitwise equal; activation statistics at most 1.84e-6 relative; optimizer
    # /global metrics at most 2.4e-7, per-parameter grad and param norms at most 3.85e-6 (per-parameter
    # update and Adam-state statistics of near-zero gradients are ill-conditioned and not compared).
    # Bounds: 4 x those (the fixtures' TOLERANCE_MULTIPLE), losses at the fixtures' 4-ulp floor.
    eager_losses, eager, _ = train(build(compiled=False), [2, 3, 4, 5], interval=2)
    assert losses == pytest.approx(eager_losses, rel=RTOL_FLOOR, abs=0)
    for step in (2, 4):
        assert want < set(eager[step, "act"])
        assert "act/layers.0.attention.wq/output/l2_norm" in eager[step, "act"]
        for key in want:
            assert math.isclose(reports[step, "act"][key], eager[step, "act"][key], rel_tol=7.5e-6), key
        assert reports[step, "optim"].keys() == eager[step, "optim"].keys()
        for key, value in eager[step, "optim"].items():
            if key.endswith("/global") or key.startswith(("optim/grad_norm/", "optim/param_norm/")):
                assert math.isclose(reports[step, "optim"][key], value, rel_tol=1.6e-5), key
