"""Training through run_train.sh on MDS data in the layouts llm-foundry writes, written by streaming's own
MDSWriter: text (tokenized on the fly), ``--concat_tokens`` samples of exactly seq_len tokens, int64 ids
as bytes, uint16 documents. The text layout resumes exactly with 0 and 2 loader workers, and from
2 processes into 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import titan_recipes.fixtures as fx
from launching import DEBUG_RECIPE, assert_ok, launch
from titan_recipes.data.mds.compat import import_streaming
from titan_recipes.data.text.loader import read_documents, resolve_text_path
from titan_recipes.records import read_metrics

TOKENIZER = DEBUG_RECIPE.parents[1] / "assets" / "tokenizers" / "shakespeare-bpe-2048"
SEQ_LEN = 256  # the debug recipe's
STEPS, STOP = 8, 4


def write_llm_foundry(out: Path, columns: dict[str, str], samples) -> Path:
    import_streaming()
    from streaming.base.format.mds.writer import MDSWriter

    with MDSWriter(out=str(out), columns=columns, size_limit="256kb") as writer:
        for sample in samples:
            writer.write(sample)
    return out


def mds_toml(tmp_path: Path, local: Path, extra: str = "") -> dict[str, str]:
    toml = tmp_path / f"{local.name}.toml"
    toml.write_text(
        (DEBUG_RECIPE / "train.toml").read_text().replace('dataset = "tinyshakespeare"', 'dataset = "mds"')
        + f'\n[mosaic_dataloader.dataset]\nlocal = "{local}"\n{extra}'
    )
    return {"CONFIG_FILE": str(toml)}


def train_four_packed_steps(tmp_path: Path, local: Path, extra: str) -> None:
    """4 steps of the debug recipe on ``local``: the samples are packed, and the loss falls."""
    run = tmp_path / "run"
    proc = launch(DEBUG_RECIPE, 1, run, "--training.steps", "4", "--checkpoint.no-enable", env=mds_toml(tmp_path, local, extra))
    assert_ok(proc)
    assert "samples packed into windows of 257 tokens" in proc.stdout
    train = [r["loss_metrics/global_avg_loss"] for r in read_metrics(run / "metrics.jsonl") if "loss_metrics/global_avg_loss" in r]
    assert len(train) == 4 and train[-1] < train[0]


@pytest.fixture(scope="module")
def documents() -> list[str]:
    return read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")


@pytest.fixture(scope="module")
def text_env(tmp_path_factory, documents) -> dict[str, str]:
    root = tmp_path_factory.mktemp("llm_foundry_text")
    local = write_llm_foundry(root / "text", {"text": "str"}, ({"text": d} for d in documents))
    return mds_toml(root, local)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, text_env) -> Path:
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    assert_ok(launch(DEBUG_RECIPE, 1, run, "--training.steps", str(STEPS), "--checkpoint.interval", str(STOP),
                     env=text_env))
    return run


def test_text_layout_trains_and_resumes_exactly_with_and_without_workers(uninterrupted, text_env, tmp_path):
    log = (uninterrupted / "train.log").read_text()
    assert "samples packed into windows of 257 tokens" in log
    losses = fx.run_losses(uninterrupted)
    assert sorted(losses) == list(range(1, STEPS + 1)) and losses[STEPS] < losses[1]

    run = tmp_path / "resumed"
    first = launch(DEBUG_RECIPE, 1, run, "--training.steps", str(STEPS), "--checkpoint.interval", str(STOP),
                   "--launch.stop_at_step", str(STOP), "--mosaic_dataloader.num_workers", "2", env=text_env)
    assert_ok(first)
    assert "reading with 2 worker process(es)" in first.stdout
    second = launch(DEBUG_RECIPE, 1, run, "--training.steps", str(STEPS), "--checkpoint.interval", str(STOP), env=text_env)
    assert_ok(second)
    assert f"Training starts at step {STOP + 1}" in second.stdout
    assert f"resumes at global sample {STOP * 8}" in second.stdout
    assert fx.run_losses(run) == losses  # full float precision, every step


def test_text_layout_resumes_from_two_processes_into_one(text_env, tmp_path):
    """A 2-process run's step-4 checkpoint, resumed by 1 process: steps 5-8 read the same global batches
    as the 2-process run's own steps 5-8 (the loader's unit tests compare the batches exactly)."""
    two = tmp_path / "two"
    assert_ok(launch(DEBUG_RECIPE, 2, two, "--training.steps", str(STEPS), "--checkpoint.interval", str(STOP),
                     "--training.local_batch_size", "4", env=text_env))
    one = tmp_path / "one"
    shutil.copytree(two / "checkpoint" / f"step-{STOP}", one / "checkpoint" / f"step-{STOP}")
    second = launch(DEBUG_RECIPE, 1, one, "--training.steps", str(STEPS), "--checkpoint.interval", str(STOP), env=text_env)
    assert_ok(second)
    assert f"Training starts at step {STOP + 1}" in second.stdout
    assert f"resumes at global sample {STOP * 8}" in second.stdout
    got, want = fx.run_losses(one), fx.run_losses(two)
    assert sorted(got) == list(range(STOP + 1, STEPS + 1))
    # Same weights and same batches; 2 processes reduce in another order, so the losses agree to float32
    # rounding, not bitwise (measured: <= 4.8e-7 at steps 5-8), while the losses of consecutive steps,
    # i.e. of other batches, differ by 0.06 to 0.3.
    for step in got:
        assert abs(got[step] - want[step]) < 1e-4, (step, got[step], want[step])


@pytest.mark.parametrize("layout", ["concat_tokens_int32", "bytes_int64", "documents_uint16"])
def test_token_layouts_train(layout, tmp_path, documents):
    from titan_recipes.tokenizer.sentencepiece import build_tokenizer_for_backend

    tokenizer = build_tokenizer_for_backend("hf", TOKENIZER)
    docs = [np.asarray(tokenizer.encode(d, add_bos=True, add_eos=True), np.int64) for d in documents[:3000]]
    if layout == "concat_tokens_int32":  # llm-foundry --concat_tokens 256: samples of exactly seq_len tokens
        stream = np.concatenate(docs)
        samples = ({"tokens": stream[i: i + SEQ_LEN].astype(np.int32)} for i in range(0, len(stream) - SEQ_LEN + 1, SEQ_LEN))
        columns = {"tokens": "ndarray:int32"}
    elif layout == "bytes_int64":  # llm-foundry before ndarray columns: token_encoding_type int64
        samples, columns = ({"tokens": d.tobytes()} for d in docs), {"tokens": "bytes"}
    else:
        samples, columns = ({"tokens": d.astype(np.uint16)} for d in docs), {"tokens": "ndarray:uint16"}
    local = write_llm_foundry(tmp_path / layout, columns, samples)
    extra = 'token_encoding_type = "int64"\n' if layout == "bytes_int64" else ""
    train_four_packed_steps(tmp_path, local, extra)


def test_text_layout_with_a_tokenizer_saved_by_transformers(tmp_path, documents):
    """llm-foundry's pair: text samples and ``tokenizer_name`` + ``tokenizer_kwargs``, here a directory
    written by transformers' ``save_pretrained`` (a hub name resolves to such a directory in the cache)."""
    from transformers import AutoTokenizer

    saved = tmp_path / "saved_tokenizer"
    AutoTokenizer.from_pretrained(str(TOKENIZER)).save_pretrained(str(saved))
    local = write_llm_foundry(tmp_path / "text", {"text": "str"}, ({"text": d} for d in documents[:3000]))
    extra = f'[mosaic_tokenizer]\nname = "{saved}"\nkwargs = {{ model_max_length = 4096, padding_side = "left" }}\n'
    train_four_packed_steps(tmp_path, local, extra)


def test_text_layout_preempted_with_loader_workers_resumes_exactly(uninterrupted, text_env, tmp_path):
    """SIGTERM to every process of the job, as Slurm sends it, while 2 loader workers tokenize: the
    trainer saves at a step boundary (the workers ignore the signal), and the relaunch with 0 workers
    continues bitwise."""
    import os
    import re
    import signal

    from launching import process_descendants, process_parents, start_recipe
    from test_preemption_matrix import _logged, _torchrun, _wait  # the matrix's own launch helpers

    args = ["--training.steps", str(STEPS), "--checkpoint.interval", str(STOP)]
    run = tmp_path / "run"
    proc, out = start_recipe(run, *args, "--mosaic_dataloader.num_workers", "2", env=text_env)
    torchrun = _torchrun(proc, 1, out)
    _wait(proc, out, lambda: _logged(run, 2), "step 2")
    for pid in [torchrun, *process_descendants(torchrun, process_parents())]:
        os.kill(pid, signal.SIGTERM)
    proc.wait(timeout=600)
    text = out.read_text()
    saved = re.search(r"preempted: saved checkpoint at step (\d+), exiting with code 143", text)
    assert saved and "reading with 2 worker process(es)" in text, text[-4000:]
    second = launch(DEBUG_RECIPE, 1, run, *args, env=text_env)
    assert_ok(second)
    assert f"Training starts at step {int(saved.group(1)) + 1}" in second.stdout
    assert fx.run_losses(run) == fx.run_losses(uninterrupted)  # every step, full precision
