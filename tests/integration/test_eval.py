"""``titan-recipes eval`` on a real debug-recipe run (issue 17): each checkpoint is exported to an HF
directory and scored by lm-evaluation-harness on the repository's tasks: ``shakespeare_heldout``
(perplexity) and ``shakespeare_cloze`` (multiple choice, the code path of hellaswag and arc_easy).

The run trains 4 steps with a checkpoint every 2 (a full one at step 2, the weights-only final save at
step 4); the command runs as a user runs it, in a subprocess, with no network.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launching import REPO

TASKS = "shakespeare_heldout,shakespeare_cloze"
METRICS = {("shakespeare_heldout", m) for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")} | {
    ("shakespeare_cloze", m) for m in ("acc", "acc_norm")}


def titan_recipes(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "titan_recipes.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def evaluated(short_debug_run) -> tuple[Path, float]:
    """The trained run after ``eval --steps all --limit 50``, and the command's wall time."""
    run_dir = short_debug_run
    begin = time.monotonic()
    proc = titan_recipes("eval", str(run_dir), "--tasks", TASKS, "--steps", "all", "--limit", "50",
                         cache=run_dir.parent / "datasets-cache")
    seconds = time.monotonic() - begin
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"\ntitan-recipes eval, 2 steps x 2 tasks x 50 documents: {seconds:.1f} s")
    return run_dir, seconds


def test_scores_every_checkpoint_and_perplexity_improves(evaluated):
    run_dir, _ = evaluated
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert sorted((r["step"], r["task"], r["metric"]) for r in rows) == sorted((s, *m) for s in (2, 4) for m in METRICS)
    assert all(r["samples"] == 50 and r["limit"] == 50 and r["max_length"] == 256 for r in rows)  # training.seq_len
    accuracy = [r for r in rows if r["metric"] == "acc"]
    assert all(0 <= r["value"] <= 1 and r["stderr"] > 0 and r["higher_is_better"] for r in accuracy), accuracy
    ppl = {r["step"]: r["value"] for r in rows if r["metric"] == "byte_perplexity"}
    assert all(math.isfinite(v) and v > 1 for v in ppl.values()), ppl
    assert ppl[4] < ppl[2], f"byte perplexity did not improve from step 2 to 4: {ppl}"
    bpb = {r["step"]: r["value"] for r in rows if r["metric"] == "bits_per_byte"}
    assert bpb[4] == pytest.approx(math.log2(ppl[4]), rel=1e-9), "bits per byte is log2 of byte perplexity"
    for step in (2, 4):
        assert (run_dir / "hf" / f"step-{step}" / "config.json").is_file()
        for task in TASKS.split(","):
            record = json.loads((run_dir / "eval" / f"step-{step}" / f"{task}.json").read_text())
            assert list(record["results"]) == list(record["configs"]) == [task]
            assert record["config"]["model_args"]["pretrained"] == str(run_dir / "hf" / f"step-{step}")
            assert record["max_length"] == 256


def test_plot_is_a_png_beside_the_loss(evaluated):
    run_dir, _ = evaluated
    png = (run_dir / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_reevaluating_one_step_reuses_its_export_and_keeps_the_other_rows(evaluated):
    run_dir, _ = evaluated
    config = run_dir / "hf" / "step-4" / "config.json"
    before = config.stat().st_mtime_ns
    rows_before = (run_dir / "eval.jsonl").read_text().splitlines()
    proc = titan_recipes("eval", str(run_dir), "--tasks", "shakespeare_heldout", "--steps", "4", "--limit", "10",
                         cache=run_dir.parent / "datasets-cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert config.stat().st_mtime_ns == before, "the existing HF export of step 4 was rewritten"
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [r for r in rows if r["step"] == 2] == [json.loads(line) for line in rows_before if json.loads(line)["step"] == 2]
    assert {r["task"]: r["limit"] for r in rows if r["step"] == 4} == {"shakespeare_heldout": 10, "shakespeare_cloze": 50}


def test_a_step_without_checkpoint_is_refused_by_name(evaluated):
    run_dir, _ = evaluated
    proc = titan_recipes("eval", str(run_dir), "--tasks", "shakespeare_heldout", "--steps", "3",
                         cache=run_dir.parent / "datasets-cache")
    assert proc.returncode == 2
    assert "no complete checkpoint for step(s) [3]; it has [2, 4]" in proc.stderr
