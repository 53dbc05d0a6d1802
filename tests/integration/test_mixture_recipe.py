"""The debug model trains on a mixture (``training.dataset = "mixture"``) of a SlimPajama-format corpus
registered in a sample index, for real through run_train.sh; a stop/resume pair equals an
uninterrupted run exactly."""

from __future__ import annotations

import gzip
import json

import zstd

from launching import DEBUG_RECIPE, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.data.mixture import MixteraIndex
from titan_recipes.data.text import read_documents, resolve_text_path

DOMAINS = ("RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia")
STEPS = 4
INTERVAL = 2


def write_slimpajama_corpus(directory, n_docs: int = 1500) -> None:
    """Tiny Shakespeare documents as SlimPajama JSONL, domains round-robin, in a plain, a gzip and a
    zstd file."""
    docs = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")[:n_docs]
    directory.mkdir()
    parts = {"part-00.jsonl": None, "part-01.jsonl.gz": gzip.compress, "part-02.jsonl.zst": zstd.compress}
    per_file = -(-len(docs) // len(parts))
    for p, (name, compress) in enumerate(parts.items()):
        lines = "".join(
            json.dumps({"text": d, "meta": {"redpajama_set_name": DOMAINS[i % len(DOMAINS)]}}) + "\n"
            for i, d in enumerate(docs) if i // per_file == p
        ).encode()
        (directory / name).write_bytes(compress(lines) if compress else lines)


def test_debug_model_trains_on_a_mixture_and_resumes_exactly(tmp_path):
    write_slimpajama_corpus(tmp_path / "corpus")
    with MixteraIndex(tmp_path / "index") as index:
        report = index.register_dataset("shakespeare", tmp_path / "corpus", progress=False)
    assert report.samples_total == 1500
    toml = tmp_path / "mixture.toml"
    toml.write_text(
        (DEBUG_RECIPE / "train.toml").read_text().replace('dataset = "tinyshakespeare"', 'dataset = "mixture"')
        + f'''
[mixture]
index_dir = "{tmp_path / 'index'}"
property = "redpajama_set_name"
chunk_size = 64
seed = 5

[mixture.weights]
RedPajamaC4 = 0.5
RedPajamaGithub = 0.3
RedPajamaWikipedia = 0.2
'''
    )
    env = {"CONFIG_FILE": str(toml)}
    common = ("--training.steps", str(STEPS), "--training.seq_len", "128", "--checkpoint.interval", str(INTERVAL))
    whole = tmp_path / "whole"
    assert_ok(launch(DEBUG_RECIPE, 1, whole, *common, "--checkpoint.no-enable", env=env))
    resumed = tmp_path / "resumed"
    assert_ok(launch(DEBUG_RECIPE, 1, resumed, *common, "--launch.stop_at_step", str(INTERVAL), env=env))
    second = launch(DEBUG_RECIPE, 1, resumed, *common, env=env)
    assert_ok(second)
    assert f"Training starts at step {INTERVAL + 1}" in second.stdout
    assert "Mixture loader resumes at batch" in second.stdout

    want, got = fx.run_losses(whole), fx.run_losses(resumed)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert all(0 < loss < 20 for loss in want.values())
    assert want[STEPS] < want[1]
    assert got == want  # full float precision, every step
