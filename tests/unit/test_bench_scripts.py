"""The benchmark scripts (scripts/bench_*.py) at a tiny size: the structure and sanity of their JSON
and PNG output. Speed targets are the benchmarks' business (``nox -s bench``), never asserted here."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_outputs(result: dict, out: Path, stem: str) -> dict:
    assert Path(result["json"]) == out / f"{stem}.json"
    assert Path(result["png"]).read_bytes()[:8] == PNG_MAGIC
    on_disk = json.loads((out / f"{stem}.json").read_text())
    assert on_disk["results"] == json.loads(json.dumps(result["results"]))
    assert on_disk["environment"]["torch"]
    return on_disk


def positive(x: float) -> bool:
    return math.isfinite(x) and x > 0


def test_bench_mds_loader(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = load_script("bench_mds_loader").main([
        "--samples", "48", "--seq-len", "64", "--batch-size", "4", "--batches", "4", "--warmup", "1",
        "--workers", "0", "1", "2", "--data", str(tmp_path / "data"), "--out", str(out), "--no-progress",
    ])
    data = check_outputs(result, out, "mds_loader")
    rows = data["results"]
    for comp in ("none", "zstd"):
        mine = [r for r in rows if r["compression"] == comp]
        assert [r["num_workers"] for r in mine] == [None, 0, 1, 2]  # the numpy baseline first
        for r in mine:
            assert positive(r["tokens_per_s"]) and positive(r["samples_per_s"])
            assert r["tokens_per_s"] == pytest.approx(r["samples_per_s"] * 64)
        for r in mine[1:]:
            assert r["ratio_1b_h100"] == pytest.approx(r["tokens_per_s"] / 57_800)
            assert r["ratio_debugmodel_h100"] == pytest.approx(r["tokens_per_s"] / 690_000)
            assert positive(r["ratio_numpy_baseline"])
            assert (r["pass"] is None) == (r["num_workers"] == 0)
    assert data["settings"]["seq_len"] == 64 and data["demand_tokens_per_s"]["1b_h100"] == 57_800
    assert "MDSLoader" in data["table"] and "numpy baseline" in data["table"]


def test_bench_mds_remote(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("moto.server")
    out = tmp_path / "out"
    result = load_script("bench_mds_remote").main([
        "--samples", "48", "--seq-len", "64", "--batch-size", "4", "--size-limit", "4kb",
        "--cache", str(tmp_path / "cache"), "--out", str(out), "--no-progress",
    ])
    data = check_outputs(result, out, "mds_remote")
    assert data["mode"] == "moto"
    assert [r["data"] for r in data["results"]] == ["none", "zstd"]
    for r in data["results"]:
        assert r["remote"] == f"s3://titan-bench/{r['data']}"
        for phase in ("cold", "warm"):
            m = r[phase]
            assert m["samples"] == 48  # one whole epoch, both passes
            assert positive(m["seconds"]) and positive(m["samples_per_s"])
            assert m["tokens_per_s"] == pytest.approx(m["samples_per_s"] * 64)
        assert r["remote_shard_bytes"] > 0
        assert r["cache_bytes"] >= 48 * 65 * 4  # the cold pass filled the cache with every sample
        assert r["warm_over_cold"] == pytest.approx(r["warm"]["tokens_per_s"] / r["cold"]["tokens_per_s"])


def test_bench_mixture(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = load_script("bench_mixture").main([
        "--docs", "120", "--files", "2", "--seq-len", "64", "--batch-size", "2", "--chunk-size", "16",
        "--tokens", "1024", "--ranks", "1", "--repeats", "2", "--server", "thread", "--data", str(tmp_path / "data"),
        "--out", str(out), "--no-progress",
    ])
    data = check_outputs(result, out, "mixture")
    reg = data["registration"]
    assert reg["rows"] == data["corpus"]["docs"] == 120 and reg["files"] == 2
    assert positive(reg["rows_per_s"]) and reg["rows_per_s"] == pytest.approx(120 / reg["seconds"])
    assert sum(data["corpus"]["domain_docs"].values()) == 120
    assert [(r["mode"], r["ranks"]) for r in data["results"]] == [("embedded", 1), ("served", 1)]
    for r in data["results"]:
        assert len(r["runs"]) == 2 and all(len(ranks) == 1 for ranks in r["runs"])
        tps = [rank["tokens_per_s"] for (rank,) in r["runs"]]
        for (rank,) in r["runs"]:
            assert rank["tokens"] == data["settings"]["timed_batches_per_rank"] * 2 * 64 >= 1024
        assert positive(r["tokens_per_s_per_rank"]) and r["tokens_per_s_per_rank"] == pytest.approx(sum(tps) / 2)
        assert r["min_tokens_per_s"] == min(tps)
        assert r["ratio_1b_h100"] == pytest.approx(r["tokens_per_s_per_rank"] / 57_800)
    assert data["results"][0]["ratio_embedded"] == 1.0
    reads = data["read_capacity"]
    for mode in ("embedded", "served"):
        assert positive(reads[mode]["docs_per_s"]) and reads[mode]["docs_per_s"] == pytest.approx(
            120 / reads[mode]["seconds"])
    assert reads["served_ranks_at_1b_demand"] == pytest.approx(
        reads["served"]["text_mb_per_s"] * 1e6 / (57_800 * reads["bytes_per_token"]))
    assert data["demand_tokens_per_s"]["1b_h100"] == 57_800 and "served" in data["table"]


def test_bench_mixture_register(tmp_path):
    out = tmp_path / "out"
    result = load_script("bench_mixture_register").main([
        "--out", str(out), "--rows", "900", "--files", "3", "--formats", "zst,jsonl,gz", "--repeats", "1",
        "--mean-chars", "100"])
    data = json.loads((out / "mixture_register.json").read_text())
    assert Path(result["json"]) == out / "mixture_register.json" and data["results"] == result["results"]
    assert data["corpus"]["rows"] == 900 and data["corpus"]["formats"] == ["zst", "jsonl", "gz"]
    ref = data["results"]["duckdb_read_json"]["rows_per_s"]
    assert set(data["results"]) == {"duckdb_read_json", "register_dataset", "parse_file", "import_parsed"}
    for r in data["results"].values():
        assert positive(r["rows_per_s"]) and r["rows_per_s"] == pytest.approx(900 / r["seconds"])
        assert r["ratio_to_read_json"] == pytest.approx(r["rows_per_s"] / ref)
    for step in ("help", "register"):
        assert positive(data["startup"][step]["seconds"])
        assert data["startup"][step]["torch_imported"] is False and data["startup"][step]["torchtitan_imported"] is False


def test_bench_blend_index(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("megatron.core.datasets.helpers_cpp")
    out = tmp_path / "out"
    result = load_script("bench_blend_index").main([
        "--settings", "2x300", "12x40", "--doc-len", "5", "60", "--seq-len", "32", "--repeats", "2",
        "--data", str(tmp_path / "data"), "--out", str(out),
    ])
    data = check_outputs(result, out, "blend_index")
    rows = data["results"]
    assert [(r["prefixes"], r["docs_per_prefix"]) for r in rows] == [(2, 300), (12, 40)]
    for r in rows:
        assert len(r["runs"]["ours"]) == len(r["runs"]["megatron"]) == 2
        assert positive(r["ours_s"]) and positive(r["megatron_s"])
        assert r["ratio"] == pytest.approx(r["ours_s"] / r["megatron_s"]) and r["pass"] == (r["ratio"] <= 1)
        # megatron's blend has at least the samples asked for (our epoch), never fewer
        assert r["samples"] > 0 and r["megatron_samples"] >= r["samples"]
    assert data["settings"]["seq_len"] == 32 and "ours / megatron" in data["table"]


def test_bench_prepare(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert load_script("bench_prepare").main([
        "--mb", "0.3", "--files", "2", "--workers", "1,2", "--kinds", "blendcorpus", "--seq-len", "64", "--repeats", "1",
        "--out", str(out),
    ]) == 0
    data = json.loads((out / "prepare.json").read_text())
    assert (out / "prepare.png").stat().st_size > 0
    assert data["same_fingerprint_for_all_worker_counts"] is True
    for k in ("1", "2"):
        base, run = data["baseline"][k], data["prepare"]["blendcorpus"][k]
        assert positive(base["tokens_per_s"]) and positive(run["tokens_per_s"])
        assert run["x_encode_batch"] == pytest.approx(run["tokens_per_s"] / base["tokens_per_s"])
        # the same text: BlendCorpus documents carry EOD but no BOS (the baseline counts both)
        assert run["tokens"] == base["tokens"] - data["corpus"]["documents"]
    p = data["projection"]
    assert 0 < p["parallel_efficiency"] <= 1
    assert p["hours_by_nodes"]["1"] == pytest.approx(627e9 / (p["per_core_tokens_per_s"] * 64 * p["parallel_efficiency"]) / 3600)
    assert p["hours_by_nodes"]["8"] == pytest.approx(p["hours_by_nodes"]["1"] / 8)
