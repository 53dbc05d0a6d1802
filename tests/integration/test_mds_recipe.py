"""The debug model trains on MDS shards (written by our converter) with MDS validation, for real."""

from __future__ import annotations

import json

import pytest

from launching import DEBUG_RECIPE, assert_ok, launch
from titan_recipes.data.mds import write_mds
from titan_recipes.data.text.loader import read_documents, resolve_text_path
from titan_recipes.records import read_metrics

TOKENIZER = DEBUG_RECIPE.parents[1] / "assets" / "tokenizers" / "shakespeare-bpe-2048"


def test_debug_model_on_mds_with_validation(tmp_path):
    docs = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")
    train_jsonl, val_jsonl = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    cut = len(docs) - 200
    train_jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:cut]))
    val_jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[cut:]))
    write_mds([train_jsonl], TOKENIZER, 256, tmp_path / "mds_train", compression="zstd", progress=False)
    write_mds([val_jsonl], TOKENIZER, 256, tmp_path / "mds_val", progress=False)

    toml = tmp_path / "mds.toml"
    toml.write_text(
        (DEBUG_RECIPE / "train.toml").read_text().replace('dataset = "tinyshakespeare"', 'dataset = "mds"')
        + f'''
[mosaic_dataloader.dataset]
local = "{tmp_path / 'mds_train'}"

[mosaic_dataloader.validation_streams.heldout]
local = "{tmp_path / 'mds_val'}"

[validation]
enable = true
dataset = "mds"
freq = 4
steps = 2
local_batch_size = 4
seq_len = 256
'''
    )
    run = tmp_path / "run"
    proc = launch(DEBUG_RECIPE, 1, run, "--training.steps", "4", "--checkpoint.no-enable", env={"CONFIG_FILE": str(toml)})
    assert_ok(proc)
    rows = read_metrics(run / "metrics.jsonl")
    train = [r for r in rows if "loss_metrics/global_avg_loss" in r]
    val = [r for r in rows if "validation_metrics/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert train[-1]["loss_metrics/global_avg_loss"] < train[0]["loss_metrics/global_avg_loss"]
    # torchtitan validates at step 1 and every validation.freq steps; the same held-out batches each time
    assert [r["step"] for r in val] == [1, 4]
    assert val[1]["validation_metrics/loss"] < val[0]["validation_metrics/loss"] < 20


def test_debug_model_trains_from_an_s3_stream(tmp_path):
    """convert -> upload (to a real S3 server on 127.0.0.1: moto's server mode) -> stream -> train.
    The loader downloads index.json at start and shards on first use into the `local` cache, with
    two worker processes; the losses equal a run on the same data converted locally."""
    import socket

    import boto3
    from moto import server as moto_server

    docs = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")[:1500]
    jsonl = tmp_path / "part.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3_env = {"S3_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
              "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in s3_env.items():
                mp.setenv(key, value)
            boto3.client("s3", endpoint_url=s3_env["S3_ENDPOINT_URL"]).create_bucket(Bucket="corpus")
            write_mds([jsonl], TOKENIZER, 256, "s3://corpus/shakespeare", compression="zstd", size_limit="256kb",
                      progress=False)
        write_mds([jsonl], TOKENIZER, 256, tmp_path / "local_copy", compression="zstd", size_limit="256kb", progress=False)

        base = (DEBUG_RECIPE / "train.toml").read_text().replace('dataset = "tinyshakespeare"', 'dataset = "mds"')
        remote_toml, local_toml = tmp_path / "remote.toml", tmp_path / "local.toml"
        remote_toml.write_text(base + f'''
[mosaic_dataloader]
num_workers = 2
[mosaic_dataloader.dataset]
predownload = 16
[mosaic_dataloader.dataset.streams.shakespeare]
remote = "s3://corpus/shakespeare"
local = "{tmp_path / 'cache'}"
''')
        local_toml.write_text(base + f'''
[mosaic_dataloader.dataset]
local = "{tmp_path / 'local_copy'}"
''')
        common = ("--training.steps", "3", "--checkpoint.no-enable")
        remote = launch(DEBUG_RECIPE, 1, tmp_path / "run_remote", *common, env={"CONFIG_FILE": str(remote_toml), **s3_env})
        assert_ok(remote)
    finally:
        server.stop()
    assert "downloaded s3://corpus/shakespeare/index.json" in remote.stdout
    assert list((tmp_path / "cache").glob("shard.*.mds"))
    assert_ok(launch(DEBUG_RECIPE, 1, tmp_path / "run_local", *common, env={"CONFIG_FILE": str(local_toml)}))
    losses = [{r["step"]: r["loss_metrics/global_avg_loss"] for r in read_metrics(d / "metrics.jsonl")
               if "loss_metrics/global_avg_loss" in r} for d in (tmp_path / "run_remote", tmp_path / "run_local")]
    assert losses[0] == losses[1] and sorted(losses[0]) == [1, 2, 3]


@pytest.mark.slow
def test_another_torchtitan_model_trains_on_mds_by_config_alone(tmp_path):
    """model.name = "recipes.qwen3": torchtitan's Qwen3 TrainSpec with our MDS loader, no code."""
    docs = read_documents(resolve_text_path("tinyshakespeare", None), "\n\n")[:800]
    jsonl = tmp_path / "part.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    write_mds([jsonl], TOKENIZER, 256, tmp_path / "mds", progress=False)
    toml = tmp_path / "qwen3.toml"
    toml.write_text(
        (DEBUG_RECIPE / "train.toml").read_text().replace('dataset = "tinyshakespeare"', 'dataset = "mds"')
        .replace('name = "recipes.llama3"', 'name = "recipes.qwen3"')
        + f'\n[mosaic_dataloader.dataset]\nlocal = "{tmp_path / "mds"}"\n'
    )
    proc = launch(DEBUG_RECIPE, 1, tmp_path / "run", "--training.steps", "2", "--checkpoint.no-enable",
                  env={"CONFIG_FILE": str(toml)})
    assert_ok(proc)
    assert "Building recipes.qwen3 debugmodel" in proc.stdout
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss_metrics/global_avg_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
