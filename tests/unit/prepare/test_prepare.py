"""``titan-recipes prepare`` (issue 18): datatrove executors, the same result whatever computed it, reruns
after kill -9, bad records, inputs of every kind (JSONL .gz/.zst, Parquet, S3), and the loaders reading it.

Every preparation runs the real command line in a subprocess (as a user runs it), on real datatrove
executors, with the repository's tokenizer. The proof that the result does not depend on the worker
count is byte equality of every output file plus equal content fingerprints; ``prepare verify``
recomputes the fingerprint from the data with streaming's own reader.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"
WORDS = np.array((REPO / "assets" / "data" / "tinyshakespeare.txt").read_text().split())
DOMAINS = ("RedPajamaC4", "RedPajamaGithub", "RedPajamaWikipedia", "RedPajamaBook")


def write_corpus(directory: Path, files: int = 4, docs: int = 120, seed: int = 0, suffix: str = ".jsonl") -> list[Path]:
    """SlimPajama-shaped JSONL files: ``text`` plus ``meta.redpajama_set_name``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in range(files):
        lines = []
        for _ in range(docs):
            words = WORDS[rng.integers(0, len(WORDS), size=int(rng.integers(5, 300)))]
            lines.append(json.dumps({"text": " ".join(words),
                                     "meta": {"redpajama_set_name": DOMAINS[int(rng.integers(len(DOMAINS)))]}}))
        data = ("\n".join(lines) + "\n").encode()
        path = directory / f"chunk_{f}{suffix}"
        if suffix.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        elif suffix.endswith(".zst"):
            import pyarrow as pa

            data = pa.compress(data, codec="zstd", asbytes=True)
            # pa.compress writes a raw zstd frame, which is what .zst files hold.
        path.write_bytes(data)
        paths.append(path)
    return paths


def prepare(*args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    quiet = [] if args[0] == "verify" else ["--no-progress"]
    proc = subprocess.run([sys.executable, "-m", "titan_recipes.cli", "prepare", *map(str, args), *quiet],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **env}, cwd=REPO)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def outputs(directory: Path) -> dict[str, bytes]:
    """Every file a loader or user reads (datatrove's logs and the task reports under .prepare/ left out)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and ".prepare" not in p.parts}


def manifest(directory: Path) -> dict:
    return json.loads((directory / "prepare.json").read_text())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    write_corpus(d, files=5)
    return d


@pytest.fixture(scope="module")
def mds_by_workers(corpus, tmp_path_factory) -> dict[int, Path]:
    out = {}
    for workers in (1, 2, 4):
        d = tmp_path_factory.mktemp(f"mds_w{workers}") / "out"
        prepare("mds", corpus, "--out", d, "--tokenizer", TOKENIZER, "--seq-len", 64, "--workers", workers,
                "--size-limit", 20000)
        out[workers] = d
    return out


def test_mds_output_is_identical_for_1_2_and_4_workers(mds_by_workers):
    ref = outputs(mds_by_workers[1])
    assert "index.json" in ref and any(k.startswith("parts/task-00004/shard.") for k in ref)
    for workers in (2, 4):
        assert outputs(mds_by_workers[workers]) == ref, f"{workers} workers wrote other bytes"
    fps = {manifest(d)["content_fingerprint"] for d in mds_by_workers.values()}
    assert len(fps) == 1
    proc = prepare("verify", mds_by_workers[4])
    assert "matches" in proc.stdout, proc.stdout


def test_prepared_mds_equals_the_converter_per_file_and_reads_in_both_loaders(mds_by_workers, corpus, tmp_path):
    from titan_recipes.data.mds import MDSLoader, StreamSpec, write_mds
    from titan_recipes.data.mds.compat import import_streaming

    d = mds_by_workers[2]
    # Task i packs file i exactly as scripts/mds_convert.py packs that file alone.
    single = write_mds([corpus / "chunk_3.jsonl"], TOKENIZER, 64, tmp_path / "conv", progress=False)
    st = import_streaming()
    from streaming.base.dataset import StreamingDataset

    part = StreamingDataset(local=str(d / "parts" / "task-00003"), shuffle=False, batch_size=1)
    conv = StreamingDataset(local=str(tmp_path / "conv"), shuffle=False, batch_size=1)
    assert part.num_samples == conv.num_samples == single.samples
    assert all(np.array_equal(part[i]["tokens"], conv[i]["tokens"]) for i in range(0, part.num_samples, 7))
    whole = StreamingDataset(local=str(d), shuffle=False, batch_size=1)  # streaming reads the merged index
    assert whole.num_samples == manifest(d)["totals"]["samples"]
    loader = MDSLoader(streams=[StreamSpec("data", str(d), setting="mosaic_dataloader.dataset.local")], seq_len=64,
                       local_batch_size=4, dp_rank=0, dp_world_size=1, progress=False, shuffle=False)
    batch, labels = next(iter(loader))
    assert np.array_equal(batch["input"][0].numpy(), np.asarray(whole[0]["tokens"][:-1], np.int64))
    assert np.array_equal(labels[0].numpy(), np.asarray(whole[0]["tokens"][1:], np.int64))
    del st


def test_mds_loader_refuses_an_index_changed_after_preparation(mds_by_workers, tmp_path):
    import shutil

    from titan_recipes.data.mds import MDSLoader, StreamSpec
    from titan_recipes.errors import DataError

    d = tmp_path / "copy"
    shutil.copytree(mds_by_workers[1], d)
    index = json.loads((d / "index.json").read_text())
    index["shards"] = index["shards"][:-1]  # e.g. a task's part dropped by hand
    (d / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"index.json .*not the index that `titan-recipes prepare` wrote"):
        MDSLoader(streams=[StreamSpec("data", str(d), setting="mosaic_dataloader.dataset.local")], seq_len=64,
                  local_batch_size=4, dp_rank=0, dp_world_size=1, progress=False)


def test_kill_minus_9_of_a_worker_then_rerun_does_only_the_missing_tasks(tmp_path):
    import psutil

    corpus = tmp_path / "corpus"
    write_corpus(corpus, files=8, docs=400, seed=3)
    ref = tmp_path / "ref"
    prepare("mds", corpus, "--out", ref, "--tokenizer", TOKENIZER, "--seq-len", 64, "--workers", 1)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "titan_recipes.cli", "prepare", "mds", str(corpus), "--out", str(out), "--tokenizer",
           str(TOKENIZER), "--seq-len", "64", "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    reports = out / ".prepare" / "tasks"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(reports.glob("task-*.json"))) < 2:
        time.sleep(0.05)
    done_before = sorted(p.name for p in reports.glob("task-*.json"))
    assert 2 <= len(done_before) < 8, done_before
    # The pool's workers are forked from the command: same command line (unlike multiprocessing's
    # resource tracker).
    main = psutil.Process(proc.pid)
    workers = [c for c in main.children() if c.cmdline() == main.cmdline()]
    assert workers, "no worker process found"
    os.kill(workers[-1].pid, signal.SIGKILL)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, log
    assert "worker died" in log and "Rerun the same command" in log, log[-2000:]
    assert not (out / "index.json").exists() and not (out / "prepare.json").exists()  # nothing a loader reads
    completed = sorted(p.name for p in (out / ".prepare" / "logs" / "tasks" / "completions").iterdir())
    assert 0 < len(completed) < 8
    mtimes = {n: (out / ".prepare" / "logs" / "tasks" / "completions" / n).stat().st_mtime_ns for n in completed}
    rerun = prepare("mds", corpus, "--out", out, "--tokenizer", TOKENIZER, "--seq-len", 64, "--workers", 2)
    for n in completed:  # finished tasks were not run again
        assert (out / ".prepare" / "logs" / "tasks" / "completions" / n).stat().st_mtime_ns == mtimes[n]
    assert len(list((out / ".prepare" / "logs" / "tasks" / "completions").iterdir())) == 8
    assert outputs(out) == outputs(ref), rerun.stdout
    assert manifest(out)["content_fingerprint"] == manifest(ref)["content_fingerprint"]


def test_a_rerun_with_other_settings_is_refused(mds_by_workers, corpus):
    proc = prepare("mds", corpus, "--out", mds_by_workers[1], "--tokenizer", TOKENIZER, "--seq-len", 32, check=False)
    assert proc.returncode == 2 and "holds a preparation with other seq_len" in proc.stderr, proc.stderr


def _bad_corpus(d: Path) -> None:
    write_corpus(d, files=2, docs=30)
    lines = (d / "chunk_1.jsonl").read_text().splitlines()
    lines[4] = '{"text": "unterminated'
    lines[9] = json.dumps({"content": "no text field"})
    (d / "chunk_1.jsonl").write_text("\n".join(lines) + "\n")
    good = gzip.compress((d / "chunk_0.jsonl").read_bytes(), mtime=0)
    (d / "chunk_2.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated download


@pytest.mark.parametrize("kind", ["mds", "blendcorpus"])
def test_bad_records_fail_by_default_naming_file_and_line(tmp_path, kind):
    _bad_corpus(tmp_path / "in")
    extra = ["--seq-len", "64"] if kind == "mds" else []
    proc = prepare(kind, tmp_path / "in", "--out", tmp_path / "out", "--tokenizer", TOKENIZER, *extra, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "chunk_1.jsonl:5: not a JSON line" in proc.stderr and "--on-bad-record skip" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "prepare.json").exists()
    # Nothing a loader reads: no index / file list, and no output of the failed task (other tasks' finished
    # outputs stay, for the rerun to keep).
    assert not (tmp_path / "out" / "index.json").exists() and not (tmp_path / "out" / "blend.txt").exists()
    assert not [p for p in (tmp_path / "out").rglob("chunk_1_*") if ".prepare" not in p.parts] and not (tmp_path / "out" / "parts" / "task-00001").exists()


def test_bad_records_skipped_are_counted_per_task_with_file_and_line(tmp_path):
    _bad_corpus(tmp_path / "in")
    proc = prepare("mds", tmp_path / "in", "--out", tmp_path / "out", "--tokenizer", TOKENIZER, "--seq-len", 64,
                   "--on-bad-record", "skip")
    m = manifest(tmp_path / "out")
    assert m["totals"]["bad_records"] == 3, m["bad_records"]
    listed = "\n".join(m["bad_records"])
    assert "chunk_1.jsonl:5: not a JSON line" in listed
    assert "chunk_1.jsonl:10: no 'text' field" in listed
    assert "chunk_2.jsonl.gz:" in listed and "unreadable" in listed
    per_task = [t["bad_records"] for t in m["tasks"]]
    assert per_task == [0, 2, 1]
    assert m["tasks"][1]["documents"] == 28 and m["tasks"][2]["documents"] > 0  # the good lines are kept
    assert "3 bad record(s) skipped" in proc.stderr


def test_inputs_gz_zst_parquet_and_s3_give_the_same_samples(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from s3_server import moto_s3

    plain = write_corpus(tmp_path / "plain", files=2, docs=40, seed=5)
    write_corpus(tmp_path / "gz", files=2, docs=40, seed=5, suffix=".jsonl.gz")
    write_corpus(tmp_path / "zst", files=2, docs=40, seed=5, suffix=".jsonl.zst")
    (tmp_path / "pq").mkdir()
    for p in plain:
        texts = [json.loads(line)["text"] for line in p.read_text().splitlines()]
        pq.write_table(pa.table({"content": texts}), tmp_path / "pq" / p.name.replace(".jsonl", ".parquet"),
                       row_group_size=7)
    fps = {}
    for name, extra in (("plain", []), ("gz", []), ("zst", []), ("pq", ["--text-field", "content"])):
        prepare("mds", tmp_path / name, "--out", tmp_path / f"out_{name}", "--tokenizer", TOKENIZER, "--seq-len", 64, *extra)
        fps[name] = manifest(tmp_path / f"out_{name}")["content_fingerprint"]
    with moto_s3("corpus") as s3:
        for p in (tmp_path / "zst").iterdir():
            s3.client.upload_file(str(p), "corpus", f"slimpajama/train/{p.name}")
        env = {k: os.environ[k] for k in ("S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        prepare("mds", "s3://corpus/slimpajama/train/", "--out", tmp_path / "out_s3", "--tokenizer", TOKENIZER,
                "--seq-len", 64, "--workers", 2, **env)
        fps["s3"] = manifest(tmp_path / "out_s3")["content_fingerprint"]
        down = prepare("mds", "s3://corpus/nothing-here/", "--out", tmp_path / "out_none", "--tokenizer", TOKENIZER,
                       "--seq-len", 64, check=False, **env)
        assert down.returncode == 2 and "s3://corpus/nothing-here/ holds no" in down.stderr, down.stderr
    assert len(set(fps.values())) == 1, fps
    assert outputs(tmp_path / "out_plain")["index.json"] == outputs(tmp_path / "out_s3")["index.json"]


def test_blendcorpus_equals_the_old_script_and_the_loader_reads_the_file_list(corpus, tmp_path):
    fps = []
    for workers in (1, 2):
        prepare("blendcorpus", corpus, "--out", tmp_path / f"w{workers}", "--tokenizer", TOKENIZER, "--corpus", "web",
                "--workers", workers)
        fps.append(manifest(tmp_path / f"w{workers}")["content_fingerprint"])
    assert fps[0] == fps[1] and outputs(tmp_path / "w1") == outputs(tmp_path / "w2")
    old = subprocess.run([sys.executable, str(REPO / "scripts" / "blendcorpus.py"), "--quiet", "tokenize",
                          *map(str, sorted(corpus.glob("*.jsonl"))), "--output-dir", str(tmp_path / "old"),
                          "--tokenizer", str(TOKENIZER), "--tokenizer-backend", "hf"], capture_output=True, text=True)
    assert old.returncode == 0, old.stderr
    assert len(list((tmp_path / "old").glob("*_text_document.*"))) == 10
    for p in (tmp_path / "old").glob("*_text_document.*"):  # the wrapper writes prepare's prefixes
        assert p.read_bytes() == (tmp_path / "w1" / p.name).read_bytes(), p.name
    rows = (tmp_path / "w1" / "blend.txt").read_text().split("\n")
    assert rows[0].split() == [str(manifest(tmp_path / "w1")["tasks"][0]["tokens"]), "chunk_0_text_document", "web"]
    assert "matches" in prepare("verify", tmp_path / "w2").stdout

    from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader

    loader = BlendCorpusLoader(file_list=str(tmp_path / "w1" / "blend.txt"), seq_len=64, local_batch_size=2, dp_rank=0,
                               dp_world_size=1, eod_token_id=1)
    batch, labels = next(iter(loader))
    assert tuple(batch["input"].shape) == (2, 64) and tuple(labels.shape) == (2, 64)


def test_sentencepiece_tokenizer_gives_the_ids_of_our_sentencepiece_adapter(tmp_path):
    import sentencepiece

    from titan_recipes.tokenizer.sentencepiece import SentencePieceTokenizer

    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(WORDS[i : i + 12]) for i in range(0, 6000, 12)))
    sentencepiece.SentencePieceTrainer.Train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=300,
                                             model_type="bpe", minloglevel=2)
    write_corpus(tmp_path / "in", files=2, docs=20)
    prepare("blendcorpus", tmp_path / "in", "--out", tmp_path / "out", "--tokenizer", tmp_path / "sp.model")
    from titan_recipes.data.blendcorpus.megatron_format import MegatronShard

    sp = SentencePieceTokenizer(tmp_path / "sp.model")
    first = json.loads((tmp_path / "in" / "chunk_0.jsonl").read_text().splitlines()[0])["text"]
    shard = MegatronShard(str(tmp_path / "out" / "chunk_0_text_document"))
    assert shard[0].tolist() == sp.encode(first, bos=False, eos=True)
    assert manifest(tmp_path / "out")["tokenizer"]["backend"] == "sp"


def test_prepare_commands_do_not_import_torch(tmp_path):
    write_corpus(tmp_path / "in", files=1, docs=5)
    code = ("import sys\nfrom titan_recipes.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    for args in (["prepare", "--help"], ["prepare", "blendcorpus", str(tmp_path / "in"), "--out", str(tmp_path / "o"),
                                          "--tokenizer", str(TOKENIZER), "--no-progress"]):
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
        assert proc.stdout.strip().endswith("NO-TORCH"), proc.stdout + proc.stderr
    assert (tmp_path / "o" / "blend.txt").is_file()


def test_mixture_index_is_the_same_for_1_and_2_workers_and_equals_mixture_register(corpus, tmp_path):
    from titan_recipes.data.mixture.index import SampleIndex
    from titan_recipes.prepare.mixture_fingerprint import index_fingerprint

    for workers in (1, 2):
        prepare("mixture", corpus, "--out", tmp_path / f"w{workers}", "--name", "slimpajama", "--workers", workers)
    fp = manifest(tmp_path / "w1")["content_fingerprint"]
    assert fp == manifest(tmp_path / "w2")["content_fingerprint"] and fp.endswith("-600")
    index = SampleIndex(tmp_path / "reg")
    index.register_dataset("slimpajama", str(corpus), "slimpajama")
    index.close()
    assert index_fingerprint(tmp_path / "reg", "slimpajama") == fp  # one process, the old way: the same rows
    prepared = SampleIndex(tmp_path / "w2" / "mixture_index", read_only=True)
    domains = dict(prepared.con.execute(
        'SELECT redpajama_set_name, count(*) FROM samples GROUP BY 1').fetchall())
    prepared.close()
    assert set(domains) <= set(DOMAINS) and sum(domains.values()) == 600
    assert "matches" in prepare("verify", tmp_path / "w2").stdout


def test_blendcorpus_loader_refuses_a_prefix_changed_after_preparation(corpus, tmp_path):
    from titan_recipes.data.blendcorpus.loader import BlendCorpusLoader
    from titan_recipes.data.blendcorpus.megatron_format import MegatronWriter
    from titan_recipes.errors import DataError

    prepare("blendcorpus", corpus, "--out", tmp_path / "out", "--tokenizer", TOKENIZER, "--corpus", "web")
    with MegatronWriter(str(tmp_path / "out" / "chunk_2_text_document"), np.uint16) as w:  # rewritten by hand
        w.add_document(np.arange(50, dtype=np.uint16))
    with pytest.raises(DataError, match=r"chunk_2_text_document.idx does not match .*prepare.json"):
        BlendCorpusLoader(file_list=str(tmp_path / "out" / "blend.txt"), seq_len=16, local_batch_size=2, dp_rank=0,
                          dp_world_size=1, eod_token_id=1)


def test_a_full_disk_and_a_server_that_is_down_are_clear_errors(tmp_path):
    """A real 256 KiB tmpfs (the output needs ~700 KB; skipped without mount rights), and an S3 endpoint nobody listens on."""
    write_corpus(tmp_path / "in", files=2, docs=300)
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    try:
        if mounted.returncode == 0:
            proc = prepare("mds", tmp_path / "in", "--out", mnt / "out", "--tokenizer", TOKENIZER, "--seq-len", 64,
                           check=False)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert "No space left on device" in proc.stderr and "Free space" in proc.stderr, proc.stderr[-2000:]
            assert not (mnt / "out" / "index.json").exists() and not (mnt / "out" / "prepare.json").exists()
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
    down = prepare("mds", "s3://bucket/train/", "--out", tmp_path / "o", "--tokenizer", TOKENIZER, "--seq-len", 64,
                   check=False, S3_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="y",
                   AWS_DEFAULT_REGION="us-east-1")
    assert down.returncode == 2 and "Cannot list s3://bucket/train/" in down.stderr and "S3_ENDPOINT_URL" in down.stderr
    if mounted.returncode != 0:
        pytest.skip(f"the S3 part passed; no tmpfs for the full-disk part (needs root): {mounted.stderr.strip()}")
