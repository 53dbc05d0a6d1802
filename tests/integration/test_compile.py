"""``--compile.enable`` on CPU (inductor, gcc) for the debug, debug_mds and mixtera_slimpajama recipes:
torchtitan compiles each TransformerBlock and the loss, and the first steps' losses equal the recipes'
eager CPU fixtures within a tolerance measured for compile; the monitors cost no recompile; the
per-domain loss and ADO work under compile.

The launches train steps 1-2 (the mixture: 1-4) of the recipes' 20-step schedule (``launch.stop_at_step``),
so their losses compare with the fixture entries (recorded eager, from 20-step runs) without an eager
launch. The three recipes build the same model at the same shapes, so after the first launch inductor's
FX graph cache serves the others (the compile is most of a launch's cost).
The mixture recipe's per-domain loss replaces torchtitan's (compiled) loss function with its own eager
one (``titan_recipes.domain_loss``); its model blocks are compiled as in the other recipes.

Tolerance (:data:`COMPILE_RTOL`), measured on one machine (Xeon, AVX512 native, 2 torch threads, torch
2.13.0+cpu, gcc): ``NGPU=1 recipes/<r>/run_train.sh --training.steps 20 --launch.stop_at_step 4
--checkpoint.interval 4 --compile.enable`` natively and with ``ATEN_CPU_CAPABILITY=default``,
``ATEN_CPU_CAPABILITY=avx2`` and ``OMP_NUM_THREADS=1`` (each with a fresh ``TORCHINDUCTOR_CACHE_DIR``:
inductor picks its vector ISA from ``ATEN_CPU_CAPABILITY``), against the eager fixture's steps 1-4.
Largest relative difference per recipe (native / default / avx2 / 1 thread):

- debug: 1.18e-07 / 6.03e-07 / 1.18e-07 / 1.18e-07
- debug_mds: 1.24e-07 / 3.02e-07 / 1.21e-07 / 2.34e-07
- mixtera_slimpajama: 1.17e-07 / 1.17e-07 / 1.17e-07 / 1.17e-07 (and 1.17e-07 for the ADO launch of
  :func:`test_mixture_compiled_per_domain_loss_and_ado`, whose eager twin equals the static fixture)

rtol = 4 x the largest (the fixtures' TOLERANCE_MULTIPLE). Determinism: a second native compiled
launch of each recipe (warm inductor cache) logged bitwise the losses of the first; CI does not repeat
a launch for it (its cost is the compile).
"""

from __future__ import annotations

import math
import re

import pytest

from launching import DEBUG_RECIPE, REPO, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics



def compiled(stop: int) -> tuple[str, ...]:
    """Train steps 1..stop of the 20-step schedule with torch.compile (a checkpoint at ``stop``, which
    ``launch.stop_at_step`` requires)."""
    return ("--training.steps", "20", "--launch.stop_at_step", str(stop), "--checkpoint.interval", str(stop),
            "--compile.enable")


COMPILE_RTOL = 2.4e-6
"""4 x 6.03e-7, the largest compiled-vs-eager relative loss difference measured (module docstring)."""
MIXTURE = REPO / "recipes" / "mixtera_slimpajama"
DOMAINS = ("RedPajamaBook", "RedPajamaC4", "RedPajamaGithub")


def assert_matches_eager_fixture(recipe, run_dir, steps: int) -> None:
    entry = fx.get_entry(recipe, fx.current_key(1))
    want = {int(s): v for s, v in entry["losses"].items() if int(s) <= steps}
    got = {s: v for s, v in fx.run_losses(run_dir).items() if s <= steps}
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    bad = {s: (got[s], want[s]) for s in want if not math.isclose(got[s], want[s], rel_tol=COMPILE_RTOL, abs_tol=0)}
    assert not bad, f"compiled losses differ from the eager fixture beyond rtol {COMPILE_RTOL}: {bad}"


def assert_compiled(proc) -> None:
    assert "Compiling each TransformerBlock with torch.compile" in proc.stdout


def test_debug_compiled_matches_eager_and_monitors_cost_no_recompile(tmp_path):
    run_dir = tmp_path / "debug"
    # Both monitors on every step: step 1 is monitored while the blocks are first compiled.
    proc = launch(DEBUG_RECIPE, 1, run_dir, *compiled(2), "--monitor.optimizer_monitor_interval", "1",
                  "--monitor.no-optimizer_monitor_only_global", "--monitor.activation_monitor_enabled",
                  "--monitor.activation_monitor_interval", "1")
    assert_ok(proc)
    assert_compiled(proc)
    assert_matches_eager_fixture(DEBUG_RECIPE, run_dir, 2)

    # The activation monitor measures each compiled block from outside, plus the uncompiled modules.
    rows = {row["step"]: row for row in read_metrics(run_dir / "metrics.jsonl") if "act/model/output/max" in row}
    assert sorted(rows) == [1, 2]
    outside = {"model": ["output"], "tok_embeddings": ["output"], "norm": ["input", "output"],
               "output": ["input", "output"], **{f"layers.{i}": ["input", "output"] for i in range(6)}}
    for row in rows.values():
        act = {k for k in row if k.startswith("act/")}
        assert act == {f"act/{m}/{io}/{s}" for m, ios in outside.items() for io in ios
                       for s in ("l2_norm", "max", "min", "mean", "var", "skew", "kurtosis")}
        assert all(math.isfinite(row[k]) for k in act)
    log = (run_dir / "train.log").read_text()
    assert "modules inside torch.compile'd blocks are not monitored" in log
    # Dynamo's graph count, printed on each monitored step, does not grow: no recompile.
    summary = r"monitor step (\d+): \d+ activation metrics, (\d+) compiled graphs"
    graphs = {int(s): int(n) for s, n in re.findall(summary, log)}
    assert sorted(graphs) == [1, 2] and graphs[2] == graphs[1] > 0, graphs
    optim = [row for row in read_metrics(run_dir / "metrics.jsonl") if "optim/grad_norm/global" in row]
    assert len(optim) == 2 and "optim/grad_norm/layers.5.feed_forward.w2.weight" in optim[0]


def test_debug_mds_compiled_matches_eager(tmp_path):
    """The MDS data goes into a temporary DATA_DIR, read through a copy of train.toml whose data paths
    point there (as in test_debug_mds_recipe.py). Validation is off: its eval-mode forward compiles the
    blocks once more (measured: about 10 s on 2 busy cores; the measurement launches in the module
    docstring validated at step 1 under compile, and the training losses do not depend on it)."""
    recipe = REPO / "recipes" / "debug_mds"
    data_dir = tmp_path / "data"
    config = tmp_path / "train.toml"
    config.write_text((recipe / "train.toml").read_text().replace('"data/debug_mds/', f'"{data_dir}/'))
    run_dir = tmp_path / "debug_mds"
    proc = launch(recipe, 1, run_dir, *compiled(2), "--validation.no-enable",
                  env={"DATA_DIR": str(data_dir), "CONFIG_FILE": str(config)})
    assert_ok(proc)
    assert_compiled(proc)
    assert_matches_eager_fixture(recipe, run_dir, 2)


def test_mixture_compiled_per_domain_loss_and_ado(tmp_path):
    """ADO (ado.toml, first fit at step 3) under compile, steps 1-4 of the 20-step schedule. New weights
    apply from the first chunk not yet planned, so steps 1-4 read the static mixture's data: measured, the
    eager launch of these settings logs the static fixture's losses bitwise, and the compiled one matches
    them within :data:`COMPILE_RTOL`. The per-domain losses add up to the loss; ADO changes the weights."""
    env = {"DATA_DIR": str(tmp_path / "data"), "CONFIG_FILE": str(MIXTURE / "ado.toml")}
    run_dir = tmp_path / "ado"
    proc = launch(MIXTURE, 1, run_dir, *compiled(4), "--mixture.ado.warmup_steps", "0",
                  "--mixture.ado.fit_interval", "1", env=env)
    assert_ok(proc)
    assert_compiled(proc)
    assert_matches_eager_fixture(MIXTURE, run_dir, 4)

    rows = {}
    for row in read_metrics(run_dir / "metrics.jsonl"):
        rows.setdefault(row["step"], {}).update(row)
    losses = fx.run_losses(run_dir)
    for step, loss in losses.items():
        row = rows[step]
        tokens = {d: row[f"tokens_domain/{d}"] for d in DOMAINS}
        assert sum(tokens.values()) == 8 * 256  # local_batch_size x seq_len label tokens
        tokens = {d: n for d, n in tokens.items() if n > 0}  # a domain without tokens logs no loss
        per_domain = sum(row[f"loss_domain/{d}"] * n for d, n in tokens.items()) / sum(tokens.values())
        assert per_domain == pytest.approx(loss, rel=1e-6)  # the per-domain sums are those of the loss
        assert all(0 < row[f"loss_domain/{d}"] < 10 for d in tokens)
    assert all(any(rows[s][f"tokens_domain/{d}"] > 0 for s in losses) for d in DOMAINS)
    prior = {"RedPajamaC4": 0.5, "RedPajamaBook": 0.3, "RedPajamaGithub": 0.2}
    weights = {s: {d: rows[s][f"mixture_weight/{d}"] for d in DOMAINS} for s in losses}
    assert weights[1] == prior and weights[4] != prior  # ADO adapted the mixture
    assert "ADO step 3: weights" in proc.stdout
    assert sum(weights[4].values()) == pytest.approx(1.0)
