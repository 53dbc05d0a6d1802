"""Remote MDS streams against a real S3-compatible server on 127.0.0.1 (moto's server mode).

convert -> upload (``write_mds(out="s3://...")``) -> stream (index.json, then shards on demand, into a
local cache) -> read, compared exactly with a local conversion of the same JSONL. Errors: unreachable
endpoint, missing bucket, corrupt remote shard, existing remote dataset.
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from batches import write_jsonl
from configs import job_config
from s3_server import moto_s3

from titan_recipes.data.mds.config import MosaicDataloader, MosaicDataset
from titan_recipes.data.registry import build_dataloader
from titan_recipes.errors import ConfigError, DataError
from titan_recipes.data.mds import STREAM_KEYS, MDSLoader, StreamSpec, write_mds


REPO_ROOT = Path(__file__).resolve().parents[4]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"
SIZE_LIMIT = "2kb"
BUCKET = "titan-data"



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory, corpus):
    """A moto S3 server with one bucket holding ``plain`` and ``zstd`` conversions of the corpus."""
    with moto_s3(BUCKET) as server:
        root = tmp_path_factory.mktemp("s3src")
        jsonl = write_jsonl(root / "corpus.jsonl", corpus.docs)
        write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "local", size_limit=SIZE_LIMIT, progress=False)
        for name, compression in (("plain", None), ("zstd", "zstd")):
            write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, f"s3://{BUCKET}/{name}", compression=compression,
                      size_limit=SIZE_LIMIT, progress=False)
        yield SimpleNamespace(client=server.client, endpoint=server.endpoint, local=root / "local", jsonl=jsonl)


def remote_loader(remote: str, cache: Path, **overrides) -> MDSLoader:
    kwargs = dict(
        streams=[StreamSpec("web", str(cache), setting="mosaic_dataloader.dataset.streams.web.local", remote=remote)],
        seq_len=16, local_batch_size=8, dp_rank=0, dp_world_size=1, shuffle=True, shuffle_seed=9176,
    )
    kwargs.update(overrides)
    return MDSLoader(**kwargs)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa["input"], xb["input"]) and torch.equal(ya, yb)


@pytest.mark.parametrize("name", ["plain", "zstd"])
def test_remote_stream_reads_what_a_local_conversion_reads(s3, tmp_path, corpus, name):
    keys = {o["Key"] for o in s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/")["Contents"]}
    assert {f"{name}/index.json", f"{name}/conversion.json"} <= keys
    index = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"{name}/index.json")["Body"].read())
    assert all("xxh64" in s["raw_data"]["hashes"] for s in index["shards"])

    cache = tmp_path / "cache"
    loader = remote_loader(f"s3://{BUCKET}/{name}", cache)
    local = remote_loader(None, s3.local)
    assert loader.streams[0].validate_hash == "xxh64"
    assert not list(cache.glob("shard.*"))  # only index.json (+ conversion.json) up front
    assert (cache / "conversion.json").is_file()
    if name == "plain":
        assert loader.data_fingerprint == local.data_fingerprint
    steps = corpus.num_samples // 8
    assert_same_batches(take(loader, steps), take(local, steps))
    # After a whole epoch every shard is cached (decompressed, zip dropped); nothing half-written is left.
    assert sorted(p.name for p in cache.glob("shard.*")) == [s["raw_data"]["basename"] for s in index["shards"]]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_cached_stream_reads_without_the_server(s3, tmp_path, monkeypatch, corpus):
    cache = tmp_path / "cache"
    first = take(remote_loader(f"s3://{BUCKET}/plain", cache), corpus.num_samples // 8)
    monkeypatch.setenv("S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert_same_batches(take(remote_loader(f"s3://{BUCKET}/plain", cache), corpus.num_samples // 8), first)


def test_two_ranks_share_one_cache(s3, tmp_path, corpus):
    cache = tmp_path / "shared"
    ranks = [remote_loader(f"s3://{BUCKET}/zstd", cache, local_batch_size=4, dp_rank=r, dp_world_size=2) for r in range(2)]
    one = take(remote_loader(None, s3.local), 6)
    two = [take(r, 6) for r in ranks]
    for step in range(6):
        assert torch.equal(torch.cat([two[0][step][0]["input"], two[1][step][0]["input"]]), one[step][0]["input"])


def test_unreachable_endpoint_is_a_data_error_naming_remote_and_endpoint(s3, tmp_path, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("S3_ENDPOINT_URL", endpoint)
    start = time.monotonic()
    with pytest.raises(DataError, match=re.escape(f"streams.web.remote = 's3://{BUCKET}/plain'") + ".*" + re.escape(endpoint)):
        remote_loader(f"s3://{BUCKET}/plain", tmp_path / "cache")
    assert time.monotonic() - start < 30
    assert not (tmp_path / "cache" / "index.json").exists()


def test_missing_bucket_or_prefix_is_a_data_error(s3, tmp_path):
    with pytest.raises(DataError, match=r"s3://no-such-bucket/plain.*S3_ENDPOINT_URL"):
        remote_loader("s3://no-such-bucket/plain", tmp_path / "a")
    with pytest.raises(DataError, match=rf"index.json of .*s3://{BUCKET}/nothing-here"):
        remote_loader(f"s3://{BUCKET}/nothing-here", tmp_path / "b")


def test_corrupt_remote_shard_fails_its_hash_and_is_not_cached(s3, tmp_path, corpus):
    for key in ("index.json", "shard.00000.mds"):
        body = s3.client.get_object(Bucket=BUCKET, Key=f"plain/{key}")["Body"].read()
        if key.startswith("shard"):
            body = body[:-8] + bytes(8)  # same size, other bytes
        s3.client.put_object(Bucket=BUCKET, Key=f"bad/{key}", Body=body)
    loader = remote_loader(f"s3://{BUCKET}/bad", tmp_path / "cache", shuffle=False)
    with pytest.raises(DataError, match=r"fetch shard shard.00000.mds of .*s3://titan-data/bad.*Checksum failure"):
        take(loader, 1)
    assert not (tmp_path / "cache" / "shard.00000.mds").exists()


def test_write_refuses_an_existing_remote_dataset(s3):
    with pytest.raises(FileExistsError, match=rf"s3://{BUCKET}/plain/index.json exists.*--overwrite"):
        write_mds([s3.jsonl], TOKENIZER_DIR, 16, f"s3://{BUCKET}/plain", size_limit=SIZE_LIMIT, progress=False)


def test_remote_stream_from_the_config(s3, tmp_path):
    dataset = MosaicDataset(streams={"web": {"remote": f"s3://{BUCKET}/plain", "local": str(tmp_path / "c")}})
    config = job_config(training={"dataset": "mds", "seq_len": 16, "local_batch_size": 8},
                        model={"hf_assets_path": str(TOKENIZER_DIR)}, mosaic_dataloader=MosaicDataloader(dataset=dataset))
    loader = build_dataloader(1, 0, None, config)
    assert loader.data_fingerprint == remote_loader(None, s3.local).data_fingerprint
    assert_same_batches(take(loader, 3), take(remote_loader(None, s3.local), 3))


def test_a_node_local_cache_path_expands_in_the_training_process(s3, tmp_path, monkeypatch):
    """``local = "${NODE_SCRATCH}/mds"``: each node of a job caches into its own disk, one TOML for all."""
    monkeypatch.setenv("NODE_SCRATCH", str(tmp_path / "node0"))
    monkeypatch.delenv("NOT_ON_THIS_NODE", raising=False)
    def config(local):
        dataset = MosaicDataset(streams={"web": {"remote": f"s3://{BUCKET}/plain", "local": local}})
        return job_config(training={"dataset": "mds", "seq_len": 16, "local_batch_size": 8},
                          model={"hf_assets_path": str(TOKENIZER_DIR)}, mosaic_dataloader=MosaicDataloader(dataset=dataset))
    loader = build_dataloader(1, 0, None, config("${NODE_SCRATCH}/mds/web"))
    assert_same_batches(take(loader, 2), take(remote_loader(None, s3.local), 2))
    assert (tmp_path / "node0" / "mds" / "web" / "index.json").is_file()
    with pytest.raises(ConfigError, match=re.escape("`mosaic_dataloader.dataset.streams.web.local` = "
                                                    "'$NOT_ON_THIS_NODE/mds' names environment variable(s) "
                                                    "['NOT_ON_THIS_NODE'] that are not set")):
        build_dataloader(1, 0, None, config("$NOT_ON_THIS_NODE/mds"))
    assert not Path("$NOT_ON_THIS_NODE").exists()  # nothing written at a half-expanded path


def test_convert_script_writes_to_s3_and_a_collapsed_url_is_refused(s3, tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("mds_convert", REPO_ROOT / "scripts" / "mds_convert.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    rc = convert.main([str(s3.jsonl), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", "16", "--out",
                       f"s3://{BUCKET}/script", "--size-limit", "4kb", "--no-progress"])
    assert rc == 0 and f"wrote s3://{BUCKET}/script:" in capsys.readouterr().out
    loader = remote_loader(f"s3://{BUCKET}/script", tmp_path / "cache")
    assert loader.num_samples == remote_loader(None, s3.local).num_samples
    with pytest.raises(ValueError, match="pass remote directories as str"):
        write_mds([s3.jsonl], TOKENIZER_DIR, 16, Path(f"s3://{BUCKET}/x"), progress=False)


READ_EPOCH = """
import sys, numpy as np
from titan_recipes.data.mds import MDSLoader, StreamSpec
loader = MDSLoader(streams=[StreamSpec("web", sys.argv[2], setting="s.local", remote=sys.argv[1])], seq_len=16,
                   local_batch_size=1, dp_rank=int(sys.argv[3]), dp_world_size=2, shuffle=False)
rows = [loader.sample(int(i)) for i in loader.epoch_order(0)]
np.save(sys.argv[4], np.stack(rows))
"""


def test_two_processes_download_into_one_cache_together(s3, tmp_path):
    """Two ranks (processes) on one node fetch the same zstd stream into one local dir at once."""
    import subprocess
    import sys

    import numpy as np

    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", READ_EPOCH, f"s3://{BUCKET}/zstd", str(cache), str(r), str(tmp_path / f"{r}.npy")])
        for r in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    local = remote_loader(None, s3.local, shuffle=False)
    expected = np.stack([local.sample(int(i)) for i in local.epoch_order(0)])
    for r in range(2):
        assert np.array_equal(np.load(tmp_path / f"{r}.npy"), expected)
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".tmp") or ".zstd" in p.name]


def test_keep_zip_and_an_explicit_hash_are_honoured(s3, tmp_path, corpus):
    from titan_recipes.data.mds.streams import parse_stream

    spec = parse_stream("web", {"local": str(tmp_path / "cache"), "remote": f"s3://{BUCKET}/zstd", "keep_zip": True,
                                "validate_hash": "xxh64", "download_retry": 1},
                        "mosaic_dataloader.dataset.streams.web", STREAM_KEYS)
    loader = MDSLoader(streams=[spec], seq_len=16, local_batch_size=8, dp_rank=0, dp_world_size=1)
    assert loader.streams[0].validate_hash == "xxh64"
    take(loader, corpus.num_samples // 8)
    zipped = sorted(p.name for p in (tmp_path / "cache").glob("shard.*.zstd"))
    assert zipped and len(zipped) == len(loader.shards)  # kept beside the decompressed shards


def test_workers_and_predownload_fill_one_cache_without_tearing(s3, tmp_path, corpus):
    """Two worker processes and the predownload thread fetch from the server into one cache at once;
    the batches are the local conversion's and every shard lands whole, once."""
    from titan_recipes.data.workers import Workers

    cache = tmp_path / "cache"
    loader = remote_loader(f"s3://{BUCKET}/zstd", cache, workers=Workers(num_workers=2), predownload=64)
    steps = corpus.num_samples // 8
    assert_same_batches(take(loader, steps), take(remote_loader(None, s3.local), steps))
    assert len(list(cache.glob("shard.*.mds"))) == len(loader.shards)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
