"""The debug model trains on MDS shards (written by our converter) with MDS validation, for real."""

from __future__ import annotations

import json

from launching import DEBUG_RECIPE, assert_ok, launch
from titan_recipes.data.mds import write_mds
from titan_recipes.data.text import read_documents, resolve_text_path
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
