#!/usr/bin/env python
"""Step time of llama3 debugmodel on the CPU with the ``[monitor]`` hooks off, registered but
off-interval, and monitoring every step; as ratios to the no-monitor baseline of the same run.

Four copies of the model (same initial weights, AdamW, random token batches of ``--batch`` x
``--seq-len``) train side by side, one step each in turn, starting each round with the next setting,
so that a loaded machine and the order of the settings slow all of them alike:

* ``none``: no monitor (the baseline);
* ``off-interval``: both monitors with an interval no step reaches: the cost every step between two
  monitored ones pays (one Python call per hook);
* ``optim every step``: the optimizer monitor (per-parameter statistics, parameter snapshot) every step;
* ``both every step``: optimizer and activation monitors (all modules) every step.

Step times are medians and minima over ``--steps`` timed steps after ``--warmup`` untimed ones, of wall
time and of this process's CPU time (all its threads). On a machine shared with other work, wall times
mostly measure the other work; CPU times and the wall-time minima are the figures to compare. Because the
off-interval difference is far below the noise of a shared machine, the script also times the hooks
themselves: the off-interval hook calls of one step, repeated ``--hook-calls`` times, per step and as
a share of the baseline step.

    python scripts/bench_monitors.py                          # 8 x 256 tokens, like recipes/debug
    python scripts/bench_monitors.py --threads 1 --json runs/bench/monitors.json   # on a shared machine

Measured on 2 shared cores (1 thread, 20 steps, load average about 5): CPU-time ratios 1.014
(off-interval), 1.035 (optimizer monitor every step), 1.33 (both every step); the off-interval hook
calls took 16 us per step, 0.001% of a 1.3 s step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
import torch
import torch.nn.functional as F

from titan_recipes.bench import environment, format_table, write_json
from titan_recipes.monitor import ActivationMonitor, OptimizerMonitor

SETTINGS = ("none", "off-interval", "optim every step", "both every step")
NEVER = 10**9
"""An interval no benchmark step reaches."""


def build_model(seed: int) -> torch.nn.Module:
    from torchtitan.models.llama3 import llama3_args
    from torchtitan.models.llama3.model.model import Transformer

    torch.manual_seed(seed)
    model = Transformer(llama3_args["debugmodel"])
    with torch.no_grad():  # as torchtitan's Trainer does
        model.init_weights()
    return model


def attach(setting: str, model, optimizer, step: list[int]) -> list:
    report = lambda metrics, s: None  # noqa: E731  (the cost of logging is not the monitors')
    common = dict(step_fn=lambda: step[0], report=report)
    if setting == "none":
        return []
    if setting == "off-interval":
        return [OptimizerMonitor([model], optimizer, interval=NEVER, **common),
                ActivationMonitor([model], optimizer, interval=NEVER, **common)]
    monitors = [OptimizerMonitor([model], optimizer, interval=1, only_global=False, **common)]
    if setting == "both every step":
        monitors.append(ActivationMonitor([model], optimizer, interval=1, **common))
    return monitors


def train_step(model, optimizer, tokens: torch.Tensor) -> None:
    optimizer.zero_grad()
    logits = model(tokens[:, :-1])
    F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def hook_cost_us(model, optimizer, monitors, calls: int) -> float:
    """Microseconds per step of the off-interval hook calls: the root forward pre-hook and hook and
    the optimizer pre- and post-hooks of both monitors, called as torch calls them."""
    opt_mon, act_mon = monitors
    start = time.perf_counter()
    for _ in range(calls):
        act_mon._root_pre(model, ())
        act_mon._root_post(model, (), None)
        opt_mon._pre_step(optimizer, (), {})
        opt_mon._post_step(optimizer, (), {})
        act_mon._post_step(optimizer, (), {})
    return (time.perf_counter() - start) / calls * 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8, as recipes/debug)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per setting first (default 2)")
    parser.add_argument("--hook-calls", type=int, default=20000, help="repetitions of the hook timing")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    base = build_model(seed=0)
    runs = {}
    for setting in SETTINGS:
        model = copy.deepcopy(base)
        optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4)
        step = [0]
        runs[setting] = dict(model=model, optimizer=optimizer, step=step,
                             monitors=attach(setting, model, optimizer, step), times=[], cpu_times=[])
    gen = torch.Generator().manual_seed(1)
    vocab = base.vocab_size
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(0, vocab, (args.batch, args.seq_len + 1), generator=gen)
        for j in range(len(SETTINGS)):
            setting = SETTINGS[(i + j) % len(SETTINGS)]
            run = runs[setting]
            run["step"][0] += 1
            start, cpu = time.perf_counter(), time.process_time()
            train_step(run["model"], run["optimizer"], tokens)
            if i >= args.warmup:
                run["times"].append(time.perf_counter() - start)
                run["cpu_times"].append(time.process_time() - cpu)
        print(f"step {i + 1}/{args.warmup + args.steps}", file=sys.stderr)

    baseline = statistics.median(runs["none"]["times"])
    base_cpu = statistics.median(runs["none"]["cpu_times"])
    off = runs["off-interval"]
    hooks_us = hook_cost_us(off["model"], off["optimizer"], off["monitors"], args.hook_calls)
    results = {
        setting: {"median_step_s": statistics.median(run["times"]),
                  "ratio_to_none": statistics.median(run["times"]) / baseline,
                  "min_step_s": min(run["times"]),
                  "min_ratio_to_none": min(run["times"]) / min(runs["none"]["times"]),
                  "median_cpu_s": statistics.median(run["cpu_times"]),
                  "cpu_ratio_to_none": statistics.median(run["cpu_times"]) / base_cpu,
                  "step_times_s": run["times"], "cpu_times_s": run["cpu_times"]}
        for setting, run in runs.items()
    }
    results["off-interval"]["hook_calls_us_per_step"] = hooks_us
    results["off-interval"]["hook_calls_share_of_step"] = hooks_us * 1e-6 / baseline
    rows = [(s, r["median_step_s"], f"{r['ratio_to_none']:.3f}", r["min_step_s"], f"{r['min_ratio_to_none']:.3f}",
             r["median_cpu_s"], f"{r['cpu_ratio_to_none']:.3f}") for s, r in results.items()]
    print(format_table(["setting", "median wall (s)", "ratio", "min wall (s)", "ratio", "median CPU (s)", "ratio"],
                       rows))
    print(f"off-interval hook calls: {hooks_us:.1f} us per step = {100 * hooks_us * 1e-6 / baseline:.4f}% "
          f"of the baseline step ({args.batch} x {args.seq_len} tokens, {torch.get_num_threads()} threads)")
    out = {"config": vars(args) | {"json": str(args.json) if args.json else None}, "results": results,
           "environment": environment()}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
