"""Served mode of the mixture engine over real sockets on 127.0.0.1: a RemoteIndex answers like the
embedded SampleIndex (planner chunks, loader batches of 2 ranks sharing one server); a server killed
mid-run gives a clear DataError and the relaunched run resumes with nothing lost or repeated; bad
frames and addresses; the ``titan-recipes mixture`` commands."""

from __future__ import annotations

import functools
import http.server
import json
import re
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zstd
from mixture_corpus import ARXIV, BOOK, C4, GITHUB, TOTALS, WIKI, registered_corpus

from titan_recipes import cli
from titan_recipes.errors import ConfigError, DataError
from titan_recipes.data.mixture.reader import IndexReader
from titan_recipes.data.mixture import (
    ChunkPlanner, MetadataParser, SampleIndex, MixtureServer, Query, RemoteIndex, StaticMixture, open_index,
)
from titan_recipes.data.mixture.loader import MixtureLoader
from titan_recipes.data.mixture.protocol import recv_frame, send_frame
from titan_recipes.data.mixture.resume import merge_rank_states
from titan_recipes.data.mixture.spawn import free_port, spawn_server

REPO_ROOT = Path(__file__).resolve().parents[4]
PROP = "redpajama_set_name"
WEIGHTS = {C4: 0.4, GITHUB: 0.3, WIKI: 0.2, BOOK: 0.1}
SEQ_LEN = 16
B = 4
FAST = {"retries": 1, "retry_backoff": 0.05, "connect_timeout": 2.0, "request_timeout": 30.0}
"""Client settings for tests: give up on a dead server within a fraction of a second."""


class QualityParser(MetadataParser):
    """Domains plus a DOUBLE and a BOOLEAN property, to check that non-string domain values round-trip."""

    name = "quality-test"
    properties = {"redpajama_set_name": "VARCHAR", "quality": "DOUBLE", "high": "BOOLEAN"}

    def parse(self, record):
        q = float(record["meta"]["quality"])
        return {"redpajama_set_name": record["meta"]["redpajama_set_name"], "quality": q, "high": q >= 0.5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return registered_corpus(tmp_path_factory, parser=QualityParser())


@pytest.fixture(scope="module")
def server(corpus):
    with MixtureServer(corpus.index_dir, "127.0.0.1", 0) as srv:
        yield srv.start()


def make_loader(index, tokenizer, rank=0, world=1) -> MixtureLoader:
    return MixtureLoader(
        index=index, mixture=StaticMixture(WEIGHTS, PROP), tokenizer=tokenizer, seq_len=SEQ_LEN,
        local_batch_size=B, dp_rank=rank, dp_world_size=world, chunk_size=20, seed=3,
    )


def batches(loader, n):
    it = iter(loader)
    out = []
    for _ in range(n):
        x, y = next(it)
        out.append((x["input"], y, loader.last_domain_ids.clone(), loader.last_sample_ids.copy()))
    return out


def assert_same_batches(got, want):
    assert len(got) == len(want)
    for (x, y, d, ids), (wx, wy, wd, wids) in zip(got, want, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy) and torch.equal(d, wd)
        assert np.array_equal(ids, wids)


# -- served == embedded ------------------------------------------------------------------------------
def test_remote_index_answers_like_the_embedded_index(corpus, server):
    q = Query().where("quality", ">=", 0.5).or_where(PROP, "in", [ARXIV, BOOK])
    with (SampleIndex(corpus.index_dir, read_only=True) as local,
          RemoteIndex("127.0.0.1", server.port, **FAST) as remote):
        assert isinstance(local, IndexReader) and isinstance(remote, IndexReader)  # what the loader types against
        assert remote.path == f"mixture://127.0.0.1:{server.port}{Path(corpus.index_dir).resolve()}"
        assert remote.properties == local.properties == {"high": "BOOLEAN", "quality": "DOUBLE", PROP: "VARCHAR"}
        assert remote.files_fingerprint() == local.files_fingerprint()
        assert remote.num_samples() == remote.num_samples("sp") == local.num_samples() == 300
        assert remote.count(q) == local.count(q)
        assert remote.query(q).dtype == np.int64 and np.array_equal(remote.query(q), local.query(q))
        assert remote.datasets() == local.datasets()
        for prop in (PROP, "quality", "high"):
            got, want = remote.domain_counts(prop, q), local.domain_counts(prop, q)
            assert list(got.items()) == list(want.items())  # same keys, same order
            assert [type(k) for k in got] == [type(k) for k in want]  # str / float / bool, not JSON strings
        assert remote.domain_counts(PROP) == TOTALS
        for prop, values in ((PROP, [WIKI, C4, "NoSuchDomain"]), ("quality", [0.0, 0.5]), ("high", [True, False])):
            got, want = remote.sample_ids_by_value(prop, values, q), local.sample_ids_by_value(prop, values, q)
            assert list(got) == values
            for v in values:
                assert got[v].dtype == np.int64 and np.array_equal(got[v], want[v])
        ids = np.random.default_rng(0).integers(0, 300, 120)
        assert remote.read_texts(ids) == local.read_texts(ids)  # plain, gzip and zstd files, repeats
        assert remote.read_texts([]) == []
        # The index's own errors come back as the same class and message.
        with pytest.raises(ConfigError, match=r"Unknown property 'nope'; the index knows \['high', 'quality'"):
            remote.domain_counts("nope")
        with pytest.raises(DataError, match=r"Sample id\(s\) \[10000\] are not in the index"):
            remote.read_texts([10_000])
        with pytest.raises(ConfigError, match=r"Query \(quality == 'abc'\) failed on the index .*Conversion"):
            remote.count(Query().where("quality", "==", "abc"))


def test_planner_and_two_rank_loaders_over_one_server_equal_embedded_mode(corpus, server, tokenizer):
    mixture = StaticMixture(WEIGHTS, PROP)
    with (SampleIndex(corpus.index_dir, read_only=True) as local,
          RemoteIndex("127.0.0.1", server.port, **FAST) as remote):
        p_local = ChunkPlanner(local, mixture, chunk_size=30, seed=5)
        p_remote = ChunkPlanner(remote, mixture, chunk_size=30, seed=5)
        assert p_remote.fingerprint == p_local.fingerprint
        for _ in range(12):  # past the end of Book (40 samples, 3 per chunk): a domain wraps too
            assert p_remote.next_chunk() == p_local.next_chunk()

        ranks = [RemoteIndex("127.0.0.1", server.port, **FAST) for _ in range(2)]  # two ranks, one server
        try:
            served = [make_loader(ranks[r], tokenizer, r, 2) for r in range(2)]
            embedded = [make_loader(local, tokenizer, r, 2) for r in range(2)]
            for r in range(2):
                assert served[r].data_fingerprint == embedded[r].data_fingerprint  # checkpoints interchangeable
                assert_same_batches(batches(served[r], 10), batches(embedded[r], 10))
            # A checkpoint written in embedded mode resumes in served mode.
            resumed = make_loader(ranks[0], tokenizer, 0, 2)
            resumed.load_state_dict(merge_rank_states([e.state_dict() for e in embedded]))
            assert_same_batches(batches(resumed, 4), batches(embedded[0], 4))
        finally:
            for index in ranks:
                index.close()


# -- a server killed mid-run ---------------------------------------------------------------------------
def test_killed_server_is_a_clear_error_and_the_run_resumes_after_a_restart(corpus, tokenizer, tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    with SampleIndex(corpus.index_dir, read_only=True) as local:
        reference = batches(make_loader(local, tokenizer), 24)  # an uninterrupted embedded run

    proc = spawn_server(corpus.index_dir, port, log=log)
    try:
        remote = RemoteIndex("127.0.0.1", port, index_dir=corpus.index_dir, **FAST)
        loader = make_loader(remote, tokenizer)
        it = iter(loader)
        k = 5
        for _ in range(k):
            next(it)
        state = loader.state_dict()  # the checkpoint after batch k
        proc.kill()  # SIGKILL: no goodbye on the socket
        proc.wait()
        served = re.escape(str(Path(corpus.index_dir).resolve()))
        with pytest.raises(DataError, match=rf"(?s)Mixture server 127\.0\.0\.1:{port} is unreachable: read_texts "
                           rf"failed.*`titan-recipes mixture serve {served} --host 127\.0\.0\.1 --port "
                           rf"{port}`.*resumes from its last checkpoint"):
            for _ in range(len(reference)):  # the next chunk's texts need the server
                next(it)
        remote.close()

        proc = spawn_server(corpus.index_dir, port, log=log)  # the relaunched run, same port
        with RemoteIndex("127.0.0.1", port, **FAST) as remote:
            resumed = make_loader(remote, tokenizer)
            resumed.load_state_dict(state)
            got = batches(resumed, len(reference) - k)
        assert_same_batches(got, reference[k:])  # nothing lost, nothing repeated
        seen = [int(i) for b in reference[:k] + got for i in b[3]]
        assert seen == [int(i) for b in reference for i in b[3]]

        proc.send_signal(signal.SIGTERM)  # graceful stop
        assert proc.wait(timeout=30) == 0
        text = log.read_text()
        assert "SIGTERM received, stopping" in text and "disconnected" in text and "stopped after" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_client_reconnects_to_a_server_restarted_within_its_retries(corpus, tmp_path):
    first = MixtureServer(corpus.index_dir, "127.0.0.1", 0).start()
    port, later = first.port, []
    remote = RemoteIndex("127.0.0.1", port, retries=3, retry_backoff=0.2)
    try:
        want = remote.read_texts([0, 150, 299])
        first.shutdown()  # closes the client's connection too
        timer = threading.Timer(0.3, lambda: later.append(MixtureServer(corpus.index_dir, "127.0.0.1", port).start()))
        timer.start()
        assert remote.read_texts([0, 150, 299]) == want  # the reconnect waited for the new server
        timer.join()
        assert later[0].port == port

        # A server that comes back with other data (here: the same files registered under another name).
        with SampleIndex(tmp_path / "other") as other:
            other.register_dataset("other", corpus.root, progress=False)
        later.pop().shutdown()
        later.append(MixtureServer(tmp_path / "other", "127.0.0.1", port).start())
        other_dir = re.escape(str((tmp_path / "other").resolve()))
        with pytest.raises(DataError, match=rf"came back serving other data \({other_dir}, files fingerprint"):
            remote.read_texts([0])
    finally:
        remote.close()
        for srv in later:
            srv.shutdown()


# -- bad input --------------------------------------------------------------------------------------
def raw_exchange(port: int, data: bytes):
    """Send raw bytes, return the server's reply frame and whether it closed the connection after it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        header, _ = recv_frame(s, max_payload=1 << 20)
        s.settimeout(2)
        try:
            closed = recv_frame(s, max_payload=1 << 20) is None
        except TimeoutError:
            closed = False
        return header, closed


def frame(header: dict) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack(">I", len(blob)) + blob


def test_bad_frames_get_an_error_reply_and_the_server_keeps_serving(corpus, caplog):
    with MixtureServer(corpus.index_dir, "127.0.0.1", 0, max_request_bytes=1024).start() as srv:
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", r"frame header of \d+ bytes is over the limit of 1048576"),
            (struct.pack(">I", 5) + b"{nope", "frame header is not UTF-8 JSON"),
            (frame(["op"]), "frame header must be a JSON object"),
            (frame({"op": "read_texts", "payload": 4096}), "frame payload of 4096 bytes is over the limit of 1024"),
            (frame({"op": "read_texts", "payload": -1}), "'payload' must be a byte count"),
        ]
        for data, message in cases:
            header, closed = raw_exchange(srv.port, data)
            assert header["ok"] is False and header["error"] == "ProtocolError"
            assert re.search(message, header["message"]), header["message"]
            assert closed  # a malformed frame ends that connection

        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:  # well-formed bad requests:
            for request, message in [({"op": "pickle.loads"}, "unknown op 'pickle.loads'; this server"),
                                     ({"op": "count", "args": {"query": "DROP TABLE samples"}}, "must be a list"),
                                     ({"op": "hello", "args": {"protocol": 99}}, "client speaks protocol 99")]:
                send_frame(s, request)
                header, _ = recv_frame(s, max_payload=1 << 20)
                assert header["ok"] is False and message in header["message"]
            send_frame(s, {"op": "num_samples", "args": {}})  # the same connection still answers
            assert recv_frame(s, max_payload=1 << 20)[0] == {"ok": True, "result": 300, "payload": 0}
        with RemoteIndex("127.0.0.1", srv.port, **FAST) as remote:  # and a new good client
            assert remote.domain_counts(PROP) == TOTALS
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("bad frame from 127.0.0.1" in w for w in warnings) == len(cases)
    assert sum("bad request from 127.0.0.1" in w for w in warnings) == 3


def test_bad_server_addresses_and_a_server_down_at_construction(corpus):
    assert isinstance(open_index(str(corpus.index_dir), ""), SampleIndex)
    for bad in ("localhost", "127.0.0.1:", ":7777", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConfigError, match=rf"Mixture server address '{bad}' is not HOST:PORT"):
            open_index(str(corpus.index_dir), bad)
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DataError, match=rf"(?s)Mixture server 127\.0\.0\.1:{port} is unreachable: connect failed "
                       rf"after 2 attempt\(s\).*ConnectionRefusedError.*mixture serve idx --host 127\.0\.0\.1 "
                       rf"--port {port}"):
        open_index("idx", f"127.0.0.1:{port}", **FAST)
    assert time.monotonic() - start < 5


# -- the command line -------------------------------------------------------------------------------
def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["mixture", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def stats_rows(out: str) -> dict[str, int]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].replace(",", "").isdigit():
            rows[cells[0]] = int(cells[1].replace(",", ""))
    return rows


def test_cli_register_and_stats(corpus, tmp_path, capsys):
    index_dir = tmp_path / "idx"
    code, out, _ = run_cli(capsys, "register", str(index_dir), str(corpus.root), "--name", "sp", "--no-progress")
    assert code == 0 and "indexed 3 file(s), skipped 0" in out and "300 sample(s) in all" in out
    code, out, _ = run_cli(capsys, "register", str(index_dir), str(corpus.root), "--name", "sp", "--no-progress")
    assert code == 0 and "indexed 0 file(s), skipped 3" in out and "0 new sample(s)" in out  # resumable, idempotent

    code, out, _ = run_cli(capsys, "stats", str(index_dir))
    with SampleIndex(index_dir, read_only=True) as index:
        assert code == 0 and stats_rows(out) == {**index.domain_counts(PROP), "total": index.num_samples()}
    assert stats_rows(out) == {**TOTALS, "total": 300}
    code, out, _ = run_cli(capsys, "stats", str(index_dir), "--query", json.dumps([[[PROP, "!=", C4]]]))
    assert code == 0 and stats_rows(out) == {**{d: n for d, n in TOTALS.items() if d != C4}, "total": 180}

    code, _, err = run_cli(capsys, "stats", str(index_dir), "--property", "quality")
    assert code == 2 and "error: Unknown property 'quality'" in err
    code, _, err = run_cli(capsys, "stats", str(index_dir), "--query", "[[[oops")
    assert code == 2 and "error: --query '[[[oops' is not JSON" in err
    code, _, err = run_cli(capsys, "register", str(index_dir), str(tmp_path / "none"), "--name", "x", "--no-progress")
    assert code == 2 and "error: No JSONL files" in err


def test_cli_download_slimpajama_from_a_local_mirror_and_offline(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    files = {}
    for i in range(2):
        rel = f"train/chunk2/example_train_{i}.jsonl.zst"
        files[rel] = zstd.compress(json.dumps({"text": f"doc {i}", "meta": {PROP: C4}}).encode() + b"\n")
        (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
        (mirror / rel).write_bytes(files[rel])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(mirror))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out_dir = tmp_path / "sp"
        args = ["download-slimpajama", str(out_dir), "--chunks", "2", "--no-progress", "--base-url"]
        code, out, _ = run_cli(capsys, *args, f"http://127.0.0.1:{httpd.server_address[1]}", "--files", "2")
        assert code == 0 and "chunk(s) [2], 2 file(s) each" in out
        assert {str(p.relative_to(out_dir)): p.read_bytes() for p in out_dir.rglob("*.zst")} == files
        # Offline (nothing listens): files 0 and 1 are there already, file 2 cannot be fetched.
        code, _, err = run_cli(capsys, *args, f"http://127.0.0.1:{free_port()}", "--files", "3")
        assert code == 2 and "example_train_2.jsonl.zst" in err and "needs internet access" in err
        assert not list(out_dir.rglob("*.part"))
    finally:
        httpd.shutdown()
        httpd.server_close()
    code, _, err = run_cli(capsys, "download-slimpajama", str(out_dir), "--chunks", "11")
    assert code == 2 and "chunks 1..10" in err


def test_open_index_picks_embedded_or_served_mode(corpus, server):
    with open_index(str(corpus.index_dir)) as embedded, open_index(str(corpus.index_dir), f"127.0.0.1:{server.port}") as served:
        assert isinstance(embedded, SampleIndex) and isinstance(served, RemoteIndex)
        assert embedded.files_fingerprint() == served.files_fingerprint()
