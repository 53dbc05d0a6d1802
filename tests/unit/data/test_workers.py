"""Loader worker processes: the same batches, the same checkpoints, exact resume, with 0 or 2 workers.

Every loader reads micro-batches of one global order (data/global_order.py). With ``num_workers > 0`` a
torch DataLoader's worker processes read them; these tests compare, batch for batch with
``torch.equal``, against the in-process reader, for DP 1 and 2, across an epoch boundary, and across
a checkpoint written by one worker setting and loaded by another (or by another DP degree).
"""

from __future__ import annotations

import logging
import shutil
import time

import pytest
import torch
from batches import assert_batches_equal, concat_ranks, take, take_ranks, write_jsonl
from configs import job_config
from conftest import TOKENIZER_DIR

from titan_recipes.errors import ConfigError
from titan_recipes.data.mds.config import MosaicDataloader, MosaicDataset
from titan_recipes.data.registry import build_dataloader
from titan_recipes.data.workers import Workers
from titan_recipes.data.mds import MDSLoader, StreamSpec, write_mds
from titan_recipes.data.text.loader import PackedTextLoader

B = 4
TWO = Workers(num_workers=2)


@pytest.fixture(scope="module")
def mds_dir(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("mds_workers")
    jsonl = write_jsonl(root / "corpus.jsonl", corpus.docs)
    write_mds([jsonl], TOKENIZER_DIR, corpus.seq_len, root / "zstd", compression="zstd", size_limit="2kb", progress=False)
    return root / "zstd"


def compressed_copy(mds_dir, dst):
    """index.json and the .zstd shards only: no shard decompressed yet (other tests read mds_dir)."""
    dst.mkdir()
    for f in mds_dir.iterdir():
        if f.name == "index.json" or f.suffix == ".zstd":
            shutil.copy(f, dst / f.name)
    return dst


def text_loader(corpus, tokenizer, rank=0, world=1, bs=B, workers=None):
    return PackedTextLoader(path=corpus.path, tokenizer=tokenizer, seq_len=corpus.seq_len, local_batch_size=bs,
                            dp_rank=rank, dp_world_size=world, workers=workers)


def mds_loader(directory, rank=0, world=1, bs=B, workers=None, **kw):
    return MDSLoader(streams=[StreamSpec("web", str(directory), setting="mosaic_dataloader.dataset.local")],
                     seq_len=16, local_batch_size=bs, dp_rank=rank, dp_world_size=world, workers=workers, **kw)


@pytest.fixture(params=["text", "mds"])
def make(request, corpus, tokenizer, mds_dir):
    if request.param == "text":
        return lambda **kw: text_loader(corpus, tokenizer, **kw)
    return lambda **kw: mds_loader(mds_dir, **kw)


def steps_past_one_epoch(loader) -> int:
    return loader.num_samples // (loader.local_batch_size * loader.dp_world_size) + 3


def test_two_workers_give_the_in_process_batches_across_an_epoch(make):
    n = steps_past_one_epoch(make())
    assert_batches_equal(take(make(workers=TWO), n), take(make(), n))


def test_two_workers_on_two_ranks_give_the_one_rank_order(make):
    n = 6
    ranks = take_ranks([make(rank=r, world=2, workers=TWO) for r in range(2)], n)
    single = take(make(bs=2 * B), n)
    assert_batches_equal([concat_ranks(step) for step in ranks], single)


@pytest.mark.parametrize("before, after", [(0, 2), (2, 0), (2, 2)])
def test_resume_is_exact_whatever_the_workers(make, before, after):
    expected = take(make(), 9)
    first = make(workers=Workers(num_workers=before) if before else None)
    it = iter(first)
    for _ in range(4):  # workers have read ahead (prefetch); the state counts only what was handed out
        next(it)
    state = first.state_dict()
    del it
    resumed = make(workers=Workers(num_workers=after) if after else None)
    resumed.load_state_dict(state)
    got = take(resumed, 5)
    assert_batches_equal(got, expected[4:])


def test_resume_from_two_ranks_with_workers_into_one_rank(make):
    world2 = [make(rank=r, world=2, workers=TWO) for r in range(2)]
    its = [iter(loader) for loader in world2]
    for _ in range(3):
        for it in its:
            next(it)
    states = [loader.state_dict() for loader in world2]
    assert states[0] == states[1]  # global state: identical on every rank
    one = make(bs=2 * B, workers=TWO)
    one.load_state_dict(states[0])
    assert_batches_equal(take(one, 4), take(make(bs=2 * B), 7)[3:])


def test_a_data_error_in_a_worker_reaches_the_trainer(tmp_path, mds_dir):
    broken = compressed_copy(mds_dir, tmp_path / "broken")
    loader = mds_loader(broken, workers=TWO, shuffle=False)
    (broken / "shard.00001.mds.zstd").write_bytes(b"not zstd")
    it = iter(loader)
    with pytest.raises(Exception, match="shard.00001.mds"):
        for _ in range(loader.num_samples // B):
            next(it)


def test_epoch_wrap_is_logged_once_by_the_training_process(make, caplog):
    loader = make(workers=TWO)
    with caplog.at_level(logging.WARNING, logger="titan_recipes.data.global_order"):
        take(loader, steps_past_one_epoch(loader))
    assert [r.getMessage().split(":")[1].strip()[:16] for r in caplog.records if "entering epoch" in r.getMessage()] == [
        "entering epoch 1"
    ]


def test_worker_settings_are_checked():
    with pytest.raises(ConfigError, match=r"mosaic_dataloader.prefetch_factor / persistent_workers need num_workers > 0"):
        Workers(num_workers=0, prefetch_factor=4, setting="mosaic_dataloader")
    with pytest.raises(ConfigError, match=r"training.dataloader.prefetch_factor must be >= 1"):
        Workers(num_workers=2, prefetch_factor=0)


def job(mds_dir, dataloader=None, **mosaic):
    return job_config(training={"dataset": "mds", "seq_len": 16, "local_batch_size": B, "dataloader": dataloader or {}},
                      model={"hf_assets_path": str(TOKENIZER_DIR)},
                      mosaic_dataloader=MosaicDataloader(dataset=MosaicDataset(local=str(mds_dir)), **mosaic))


def test_mosaic_dataloader_keys_configure_the_workers(mds_dir):
    loader = build_dataloader(1, 0, None, job(mds_dir, num_workers=2, prefetch_factor=3, pin_memory=True))
    assert loader.workers == Workers(num_workers=2, prefetch_factor=3, pin_memory=True)
    assert_batches_equal(take(loader, 3), take(mds_loader(mds_dir), 3))


def test_training_dataloader_keys_are_refused_for_mds(mds_dir):
    with pytest.raises(ConfigError, match=r"takes its worker settings from \[mosaic_dataloader\]"):
        build_dataloader(1, 0, None, job(mds_dir, dataloader={"num_workers": 4}))


def test_text_loader_follows_training_dataloader(corpus, tokenizer):
    workers = {"num_workers": 2, "prefetch_factor": 4, "persistent_workers": True}
    config = job_config(training={"dataset": "text", "dataset_path": str(corpus.path), "seq_len": corpus.seq_len,
                                  "local_batch_size": B, "dataloader": workers})
    loader = build_dataloader(1, 0, tokenizer, config)
    assert loader.workers == Workers(num_workers=2, prefetch_factor=4, persistent_workers=True)
    assert_batches_equal(take(loader, 3), take(text_loader(corpus, tokenizer), 3))


def test_predownload_prepares_upcoming_shards_in_the_background(tmp_path, mds_dir):
    # A compressed local stream: "preparing" a shard means decompressing it next to the .zstd file.
    data = compressed_copy(mds_dir, tmp_path / "data")
    loader = mds_loader(data, shuffle=False, predownload=6 * B)
    it = iter(loader)
    next(it)  # reads shard 0 and queues the shards of the next 6 batches
    deadline = time.monotonic() + 30
    while loader._predownload.pending and time.monotonic() < deadline:
        loader.before_batch(loader.consumed_samples)  # collects finished futures
        time.sleep(0.05)
    upcoming = {loader.spanner[int(i)][0] for i in range(B, 7 * B)}
    assert len(upcoming) > 1
    for shard_id in upcoming:
        assert (data / loader.shards[shard_id].raw_data.basename).is_file(), f"shard {shard_id} not prepared ahead"
    far = loader.spanner[loader.num_samples - 1][0]
    assert far not in upcoming and not (data / loader.shards[far].raw_data.basename).exists()
    # And the order is the in-process one.
    rest = [next(it) for _ in range(6)]
    expected = take(mds_loader(mds_dir, shuffle=False), 7)[1:]
    assert all(torch.equal(x["input"], xe) and torch.equal(y, ye) for (x, y), (xe, ye) in zip(rest, expected))
    assert loader.data_fingerprint == mds_loader(mds_dir, shuffle=False).data_fingerprint


SOCKET_PROBE = """
import sys
from titan_recipes.data.mds import MDSLoader, StreamSpec
from titan_recipes.data.workers import Workers
from titan_recipes.errors import ConfigError
try:
    workers = Workers(num_workers=2, setting="mosaic_dataloader")
except ConfigError as e:
    print(e)
    sys.exit(3)
loader = MDSLoader(streams=[StreamSpec("web", sys.argv[1], setting="mosaic_dataloader.dataset.local")], seq_len=16,
                   local_batch_size=4, dp_rank=0, dp_world_size=1, workers=workers)
it = iter(loader)
print(f"read {len([next(it) for _ in range(3)])} batches")
"""


@pytest.mark.parametrize("length", [107, 108])
def test_a_temporary_directory_too_long_for_the_workers_socket_is_refused(mds_dir, length):
    """Reader workers hand batches over through a Unix socket at TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX
    (32 bytes more than TMPDIR). At 107 bytes they work; at 108 the worker's queue thread drops each batch
    with "AF_UNIX path too long" and the trainer waits forever (the timeout here), unless refused first."""
    import os
    import subprocess
    import sys
    import tempfile

    base = tempfile.mkdtemp(prefix="sock")
    try:
        tmpdir = os.path.join(base, "d" * (length - 32 - len(base) - 1))
        os.makedirs(tmpdir)
        proc = subprocess.run([sys.executable, "-c", SOCKET_PROBE, str(mds_dir)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "TMPDIR": tmpdir})
    finally:
        shutil.rmtree(base)
    if length == 107:
        assert proc.returncode == 0 and "read 3 batches" in proc.stdout, proc.stderr[-3000:]
    else:
        assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
        assert proc.stdout.startswith("mosaic_dataloader.num_workers = 2: reader workers pass batches through a Unix "
                                      f"socket under the temporary directory '{tmpdir}' (TMPDIR), and its path would "
                                      "be 108 bytes, more than Linux allows (107)"), proc.stdout
