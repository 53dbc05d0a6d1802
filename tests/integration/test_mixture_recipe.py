"""recipes/mixtera_slimpajama for real through its run_train.sh (which registers the embedded
SlimPajama-format sample into a DuckDB index): the static mixture with its per-domain loss and an
exact stop/resume, and the ADO variant whose weights change during training, trained once embedded
and once served by a ``titan-recipes mixture serve`` process that is killed and restarted between
the two launches of a stop/resume pair -- the losses and weights equal the embedded run exactly."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from launching import REPO, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.errors import DataError
from titan_recipes.data.mixture.plot import plot_domains
from titan_recipes.data.mixture.spawn import free_port, spawn_server
from titan_recipes.records import read_metrics

RECIPE = REPO / "recipes" / "mixtera_slimpajama"
DOMAINS = ("RedPajamaBook", "RedPajamaC4", "RedPajamaGithub")


def domain_metrics(run_dir, prefix: str) -> dict[int, dict[str, float]]:
    return {
        row["step"]: {d: row[f"{prefix}/{d}"] for d in DOMAINS if f"{prefix}/{d}" in row}
        for row in read_metrics(run_dir / "metrics.jsonl")
    }


def test_static_mixture_matches_its_fixture_with_per_domain_loss_and_resumes_exactly(tmp_path):
    key = fx.current_key(1)
    entry = fx.get_entry(RECIPE, key)
    env = {"DATA_DIR": str(tmp_path / "data")}
    whole = tmp_path / "whole"
    assert_ok(launch(RECIPE, 1, whole, *entry["overrides"], env=env))
    assert (tmp_path / "data" / "index" / "index.duckdb").is_file()  # run_train.sh registered the sample
    result = fx.check_run(RECIPE, whole, key=key)
    assert result.ok, result.table()

    interval = 10  # train.toml's checkpoint.interval
    resumed = tmp_path / "resumed"
    assert_ok(launch(RECIPE, 1, resumed, *entry["overrides"], "--launch.stop_at_step", str(interval), env=env))
    second = launch(RECIPE, 1, resumed, *entry["overrides"], env=env)
    assert_ok(second)
    assert f"Training starts at step {interval + 1}" in second.stdout
    assert "Mixture loader resumes at batch" in second.stdout
    want, got = fx.run_losses(whole), fx.run_losses(resumed)
    assert got == want  # full float precision, every step

    # The per-domain losses add up to the training loss; every domain is read; weights are the static ones.
    losses, tokens = domain_metrics(whole, "loss_domain"), domain_metrics(whole, "tokens_domain")
    weights = domain_metrics(whole, "mixture_weight")
    for step, loss in want.items():
        total = sum(tokens[step].values())
        assert total == 8 * 256  # local_batch_size x seq_len label tokens, one process
        assert sum(losses[step][d] * tokens[step][d] for d in losses[step]) / total == pytest.approx(loss, rel=1e-6)
        assert weights[step] == {"RedPajamaC4": 0.5, "RedPajamaBook": 0.3, "RedPajamaGithub": 0.2}
    assert all(sum(tokens[s][d] for s in tokens) > 0 for d in DOMAINS)
    assert domain_metrics(resumed, "loss_domain") == losses


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_ado_adapts_and_a_served_stop_resume_across_a_server_restart_equals_embedded(tmp_path):
    steps, interval = 8, 4
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "CONFIG_FILE": str(RECIPE / "ado.toml")}
    common = (
        "--training.steps", str(steps), "--training.seq_len", "128", "--checkpoint.interval", str(interval),
        "--mixture.ado.warmup_steps", "0", "--mixture.ado.fit_interval", "1",  # first fit at step 3
    )
    embedded = tmp_path / "embedded"
    assert_ok(launch(RECIPE, 1, embedded, *common, "--checkpoint.no-enable", env=env))

    port = free_port()
    served = tmp_path / "served"
    address = ("--mixture.server", f"127.0.0.1:{port}")
    server = spawn_server(data / "index", port)
    try:
        first = launch(RECIPE, 1, served, *common, *address, "--launch.stop_at_step", str(interval), env=env)
        assert_ok(first)
    finally:
        _kill(server)  # the server goes away between the launches; a new one serves the resume
    server = spawn_server(data / "index", port)
    try:
        second = launch(RECIPE, 1, served, *common, *address, env=env)
        assert_ok(second)
    finally:
        _kill(server)
    assert f"Training starts at step {interval + 1}" in second.stdout

    want, got = fx.run_losses(embedded), fx.run_losses(served)
    assert sorted(want) == list(range(1, steps + 1))
    assert got == want
    weights = domain_metrics(embedded, "mixture_weight")
    assert domain_metrics(served, "mixture_weight") == weights
    prior = {"RedPajamaC4": 0.5, "RedPajamaBook": 0.3, "RedPajamaGithub": 0.2}
    assert weights[1] == prior
    assert weights[steps] != prior  # ADO changed the mixture ...
    assert "ADO step 3: weights" in first.stdout  # ... already before the stop (first fit at step 3)
    for w in weights.values():
        assert sum(w.values()) == pytest.approx(1.0)
        assert min(w.values()) >= 0.05 - 1e-12  # mixture.ado.min_weight

    png = plot_domains(embedded)  # titan-recipes mixture plot RUN
    assert png == embedded / "domains.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DataError, match="no metrics.jsonl"):
        plot_domains(tmp_path)
