"""``nox -s wheelhouse`` / ``nox -s gpu_check`` (scripts/gpu_check.py): the wheelhouse spec against
env/gpu.lock, its 60 MiB limit and completeness, the GPU command lines (1B at 4 x 4096 with compile,
float8), the verdicts, and the CPU dry run end to end: wheelhouse resolved for cp312 offline, installed
into a fresh --target and imported from there, the debug recipe trained 2 steps from that install and
compared with its CPU fixture, report JSON/PNG written; its run then records a fixture entry and
apply-fixtures merges it.

The wheelhouse is downloaded once into the repository's gitignored ``wheelhouse/`` (33 MiB, ~10 s
where a package index is reachable) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from titan_recipes import fixtures as fx
from titan_recipes import gpu_check_plan as plan
from titan_recipes import gpu_check_steps as steps
from titan_recipes.errors import ConfigError
from titan_recipes.gpu_check_report import apply_fixtures, finish_rows, record_fixture, table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def test_wheelhouse_spec_pins_gpu_lock_versions():
    spec = plan.read_wheelhouse_spec()
    lock = {}
    for line in (REPO / "env" / "gpu.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            lock[plan.normalize(name)] = version.strip()
    names = {p.name for p in spec.pins}
    assert {"torchtitan", "mosaicml-streaming", "torchao", "duckdb", "tyro", "torchdata"} <= names
    differing = {p.name: (p.version, lock.get(p.name)) for p in spec.pins if lock.get(p.name) != p.version}
    # zstd 1.5.7.2 (gpu.lock) has no cp312 wheel; torchao is not in gpu.lock (the float8 step only).
    assert differing == {"zstd": ("1.5.7.3", "1.5.7.2"), "torchao": ("0.17.0", None)}
    assert not names & spec.provided, "a package is both carried and provided by the node"
    assert spec.skipped["mosaicml-streaming"] >= {"boto3", "google-cloud-storage"}


def test_spec_errors_name_the_line(tmp_path):
    bad = tmp_path / "wheelhouse.txt"
    bad.write_text("torchtitan>=0.2\n")
    with pytest.raises(ConfigError, match=r"wheelhouse.txt:1: 'torchtitan>=0.2' is not NAME==VERSION"):
        plan.read_wheelhouse_spec(bad)
    bad.write_text("duckdb==1.5.6\nDuckDB==1.5.5\n")
    with pytest.raises(ConfigError, match=r"pins \['duckdb'\] more than once"):
        plan.read_wheelhouse_spec(bad)


def test_size_limit(tmp_path):
    with open(tmp_path / "big-1.0-py3-none-any.whl", "wb") as f:
        f.truncate(plan.WHEELHOUSE_LIMIT_BYTES - 10)  # sparse: no disk used
    (tmp_path / "small-1.0-py3-none-any.whl").write_bytes(b"x" * 10)
    assert plan.check_size(tmp_path) == plan.WHEELHOUSE_LIMIT_BYTES == 60 * 2**20
    (tmp_path / "one-1.0-py3-none-any.whl").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"60.0 MiB of wheels, over the 60 MiB .*largest: big-1.0-py3-none-any.whl"):
        plan.check_size(tmp_path)


def test_gpu_command_lines(tmp_path):
    mds = tmp_path / "mds"
    bf16, f8 = steps.write_1b_tomls(tmp_path, mds)
    launches = {item.step: item for item in steps.throughput_launches(tmp_path)}
    assert list(launches) == ["1b-random", "1b-mds", "1b-float8"]
    for name, item in launches.items():
        config = tomllib.loads(Path(item.env["CONFIG_FILE"]).read_text())
        assert config["model"]["flavor"] == "1B" and config["compile"]["enable"] is True
        assert (config["training"]["local_batch_size"], config["training"]["seq_len"]) == (4, 4096)
        assert config["training"]["mixed_precision_param"] == "bfloat16"
        assert Path(config["model"]["hf_assets_path"], "tokenizer.json").is_file()
        assert config["mosaic_dataloader"]["dataset"]["local"] == str(mds)
        assert config["model"].get("converters") == (["quantize.linear.float8"] if name == "1b-float8" else None)
        line = item.display(REPO, "python3", tmp_path / "site", 120)
        assert f"PYTHONPATH={REPO / 'src'}:{tmp_path / 'site'} timeout -k 15 120 {REPO}/recipes/llama3_1b/run_train.sh" in line
        assert "--training.steps 30 --metrics.log_freq 1 --checkpoint.no-enable" in line
        assert ("--training.dataset random" in line) == (name != "1b-mds")
    groups = steps.fixture_launches(tmp_path, 2)
    assert [g[0].recipe for g in groups] == list(steps.FIXTURE_RECIPES) and all(len(g) == 2 for g in groups)
    configs = {g[0].recipe: Path(g[0].env["CONFIG_FILE"]) for g in groups}
    assert configs["recipes/llama3_1b"].name == "smoke.toml" and all(c.is_file() for c in configs.values())


def test_1b_toml_edit_fails_loudly(tmp_path):
    recipe = tmp_path / "recipes" / "llama3_1b"
    recipe.mkdir(parents=True)
    (recipe / "train.toml").write_text((REPO / "recipes/llama3_1b/train.toml").read_text().replace("# converters", "#converters"))
    with pytest.raises(ConfigError, match=r'no longer has the line `# converters = \["quantize.linear.float8"\]`'):
        steps.llama_1b_toml(tmp_path / "mds", float8=True, repo=tmp_path)


def test_verdicts_and_ratio():
    rows = finish_rows([
        {"step": "1b-random", "status": "ok", "tokens_per_s": 60_000.0},
        {"step": "1b-mds", "status": "ok", "tokens_per_s": 58_500.0},
        {"step": "1b-float8", "status": "ok", "tokens_per_s": 64_000.0},
        {"step": "fixture debug", "status": "ok", "verdict": "pass"},
    ])
    by = {r["step"]: r for r in rows}
    assert by["1b-mds"]["ratio_to_random"] == 58_500 / 60_000
    assert [by[s]["verdict"] for s in ("1b-random", "1b-mds", "1b-float8", "fixture debug")] == ["pass", "FAIL", "FAIL", "pass"]
    assert re.search(r"1b-float8 +ok +64,000 .*tok/s >= 65,000 +FAIL", table(rows))


@pytest.mark.skipif(sys.version_info[:2] == (3, 12), reason="the refusal is for interpreters other than 3.12")
def test_gpu_mode_refuses_another_python(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"is Python {sys.version_info[0]}.{sys.version_info[1]}, but the wheelhouse holds CPython 3.12 wheels" in proc.stderr
    assert "pass --dry-run" in proc.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``scripts/gpu_check.py --dry-run`` once, for real (downloads the wheelhouse if absent)."""
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout, json.loads((out / "gpu_check.json").read_text())


def test_dry_run_end_to_end(dry_run):
    out, stdout, report = dry_run
    spec = plan.read_wheelhouse_spec()
    wh = report["wheelhouse"]
    assert report["mode"] == "cpu dry run" and wh["bytes"] <= wh["limit_bytes"] == plan.WHEELHOUSE_LIMIT_BYTES
    # pip resolved every cp312 pin from the wheelhouse alone, e.g. duckdb's cp312 manylinux wheel.
    assert sorted(plan.wheel_pin(Path(w)).name for w in wh["resolved_cp312"]) == sorted(p.name for p in spec.pins)
    assert any(re.fullmatch(r"duckdb-1\.5\.6-cp312-cp312-manylinux.*\.whl", w) for w in wh["resolved_cp312"])
    assert "torchtitan-0.2.2-py3-none-any.whl" in wh["installed"]
    assert (out / "site" / "torchtitan" / "__init__.py").is_file() and (out / "site" / "streaming").is_dir()
    assert wh["imported_from_site"] == sorted(["torchtitan", "torchdata", "tyro", "datasets", "streaming"])
    # Step (a) for real on the CPU: 2 steps of the debug recipe from that install, compared with its fixture.
    rows = {r["step"]: r for r in report["rows"]}
    debug = rows["fixture debug"]
    assert (debug["status"], debug["verdict"], report["key"]) == ("ok", "pass", fx.current_key(1))
    assert debug["tokens_per_s"] > 0 and debug["detail"].startswith(f"2 steps vs {report['key']}: match")
    assert [rows[s]["status"] for s in ("1b-random", "1b-mds", "1b-float8")] == ["planned"] * 3
    # The 1B steps' inputs, made for real: their configs parse as the trainer parses them, the MDS set exists.
    configs = {c["step"]: c for c in report["planned_1b"]["configs"]}
    for name, c in configs.items():
        assert (c["flavor"], c["batch"], c["seq_len"], c["compile"], c["steps"], c["checkpoint"]) == ("1B", 4, 4096, True, 30, False)
        assert c["mds"] == report["planned_1b"]["mds_dir"]
    assert [configs[s]["dataset"] for s in ("1b-random", "1b-mds", "1b-float8")] == ["random", "mds", "random"]
    assert [configs[s]["converters"] for s in ("1b-random", "1b-float8")] == [[], [steps.FLOAT8]]
    index = json.loads((Path(report["planned_1b"]["mds_dir"]) / "index.json").read_text())
    assert sum(shard["samples"] for shard in index["shards"]) == steps.MDS_SAMPLES
    assert (out / "gpu_check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every GPU command line is printed: 5 recipes x 2 runs, the MDS writer, the three 1B runs.
    would = [line for line in stdout.splitlines() if line.startswith("  would run: ")]
    assert len(would) == 10 + 1 + 3
    assert sum("CONFIG_FILE=" + str(out / "gpu-plan" / "llama3_1b_float8.toml") in line for line in would) == 1
    assert tomllib.loads((out / "gpu-plan" / "llama3_1b_float8.toml").read_text())["model"]["converters"] == [steps.FLOAT8]
    assert "fixture debug" in stdout and "tok/s >= 57,800" in stdout


def test_record_and_apply_fixture(dry_run, tmp_path):
    """The dry run's real run, recorded as a 2-run entry (identical runs: the tolerance is the floor), then
    merged into a copy of the recipe's expected_loss.json beside its existing entries."""
    out, _, report = dry_run
    run = out / "runs" / "debug-r0"
    key, entry = record_fixture(REPO / "recipes" / "debug", [run, run])
    assert key == report["key"] and entry["losses"] == {str(s): v for s, v in sorted(fx.run_losses(run).items())}
    assert len(entry["losses"]) == 2 and entry["rtol"] == fx.RTOL_FLOOR and entry["overrides"] == []
    assert entry["provenance"]["command"].endswith("NGPU=1 " + str(REPO / "recipes" / "debug") + "/run_train.sh")
    copy = tmp_path / "recipes" / "debug"
    copy.mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "debug" / fx.FIXTURE_FILE, copy)
    before = json.loads((copy / fx.FIXTURE_FILE).read_text())["entries"]
    results = tmp_path / "fixtures.json"
    results.write_text(json.dumps({"recipes/debug": {"h200-torch2.11.0+cu130-1": entry}}))
    assert apply_fixtures(results, tmp_path) == ["recipes/debug: h200-torch2.11.0+cu130-1"]
    after = json.loads((copy / fx.FIXTURE_FILE).read_text())["entries"]
    assert after == {**before, "h200-torch2.11.0+cu130-1": entry} and list(after) == sorted(after)
    with pytest.raises(fx.FixtureError, match="needs >= 2 runs"):
        record_fixture(REPO / "recipes" / "debug", [run])


def test_closure_names_what_the_node_lacks(dry_run, tmp_path):
    spec_text = plan.SPEC_FILE.read_text()
    assert plan.check_closure(plan.WHEELHOUSE, plan.read_wheelhouse_spec())["torchtitan"]  # complete as committed
    without = tmp_path / "wheelhouse.txt"
    without.write_text("\n".join(line for line in spec_text.splitlines() if not line.startswith("#provided:")))
    with pytest.raises(ConfigError, match=r"incomplete for the GPU node: .*datasets needs pyarrow.*#provided:"):
        plan.check_closure(plan.WHEELHOUSE, plan.read_wheelhouse_spec(without))
