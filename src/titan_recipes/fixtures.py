"""Expected-loss fixtures: ``recipes/<name>/expected_loss.json``.

One entry per key ``<device>-torch<version>-<nproc>`` (``cpu-torch2.13.0-1``,
``h100-torch2.11.0+cu130-8``)::

    {
      "recipe": "debug",
      "entries": {
        "cpu-torch2.13.0-1": {
          "nproc": 1,
          "overrides": ["--training.steps", "20"],
          "decimals": 5,            # CPU: equal after rounding to the printed precision
          "rtol": null,             # GPU: relative tolerance derived from repeated runs
          "losses": {"1": 8.13869, "2": 8.08467, ...},
          "provenance": {"command": "...", "config_file": "recipes/debug/train.toml", "date": "...",
                         "git": {...}, "versions": {...}, "device": "..."}
        }
      }
    }

A fixture is only ever written from a real run of the recipe (:func:`record_entry` reads that run's
``metrics.jsonl`` and ``run.json``). Comparison never widens a tolerance: CPU keys compare the losses
rounded to ``decimals`` (torchtitan prints ``loss: {:8.5f}``), GPU keys use the stored ``rtol``.

``provenance.config_file`` is the TOML the recorded run read (from its ``run.json``), relative to the
repository. A recipe whose ``run_train.sh`` picks its config by device (``llama3_1b``: ``smoke.toml``
without a GPU) reproduces it from the entry's command alone; :func:`check_run` refuses a run whose
config file has another name (``train.toml`` against a ``smoke.toml`` entry; a copy of the recorded
file elsewhere, as the integration tests make, is accepted and compared by its losses).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import LOSS_KEY, METRICS_FILE, RUN_FILE, read_metrics

FIXTURE_FILE = "expected_loss.json"
CPU_DECIMALS = 5
REPO_ROOT = Path(__file__).resolve().parents[2]


class FixtureError(RuntimeError):
    """A fixture is missing, malformed, or a run cannot be compared with it."""


def device_tag(device: str) -> str:
    """``cpu`` for CPUs; the GPU model in lower case (``h100``, ``h200``, ``a100``) otherwise."""
    if device.lower().startswith("cpu"):
        return "cpu"
    match = re.search(r"\b([A-Z]+\d+[A-Z]*)\b", device.replace("NVIDIA", ""))
    return (match.group(1) if match else device.split()[0]).lower()


def fixture_key(device: str, torch_version: str, nproc: int) -> str:
    """``cpu-torch2.13.0-1``: CPU keys drop the ``+cpu`` local version, GPU keys keep ``+cu130``."""
    tag = device_tag(device)
    if tag == "cpu":
        torch_version = torch_version.split("+")[0]
    return f"{tag}-torch{torch_version}-{nproc}"


def current_key(nproc: int) -> str:
    import torch

    from .records import device_description

    return fixture_key(device_description(), torch.__version__, nproc)


def load_fixture(recipe_dir: Path) -> dict[str, Any]:
    path = Path(recipe_dir) / FIXTURE_FILE
    if not path.is_file():
        raise FixtureError(f"No fixture at {path}. Record one from a real run: titan-recipes fixtures regen {recipe_dir}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FixtureError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data.get("entries"), dict):
        raise FixtureError(f"{path} has no 'entries' object.")
    return data


def get_entry(recipe_dir: Path, key: str) -> dict[str, Any]:
    data = load_fixture(recipe_dir)
    if key not in data["entries"]:
        raise FixtureError(
            f"{Path(recipe_dir) / FIXTURE_FILE} has no entry '{key}' (has: {sorted(data['entries'])}). "
            f"Record one from a real run on this machine: titan-recipes fixtures regen {recipe_dir} "
            f"--nproc {key.rsplit('-', 1)[-1]}"
        )
    return data["entries"][key]


def run_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from a run directory's ``metrics.jsonl`` (full precision)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FixtureError(f"{path} not found: is {run_dir} a titan-recipes run directory that logged steps?")
    return {int(row["step"]): float(row[LOSS_KEY]) for row in read_metrics(path) if LOSS_KEY in row}


def run_info(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FixtureError(f"{path} not found: is {run_dir} a titan-recipes run directory?")
    return json.loads(path.read_text())


def run_key(run_dir: Path) -> str:
    info = run_info(run_dir)
    return fixture_key(info["device"], info["versions"]["torch"], int(info["world_size"]))


@dataclass
class Row:
    step: int
    expected: float | None
    actual: float | None
    ok: bool


@dataclass
class Comparison:
    key: str
    rows: list[Row]
    rule: str

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [f"fixture {self.key} ({self.rule})", f"{'step':>5}  {'expected':>10}  {'actual':>10}  {'diff':>10}  ok"]
        for r in self.rows:
            exp = f"{r.expected:.5f}" if r.expected is not None else "missing"
            act = f"{r.actual:.5f}" if r.actual is not None else "missing"
            diff = f"{r.actual - r.expected:+.5f}" if None not in (r.expected, r.actual) else ""
            lines.append(f"{r.step:>5}  {exp:>10}  {act:>10}  {diff:>10}  {'yes' if r.ok else 'NO'}")
        bad = sum(not r.ok for r in self.rows)
        lines.append("MATCH" if self.ok else f"MISMATCH: {bad} of {len(self.rows)} steps differ")
        return "\n".join(lines)


def compare(entry: dict[str, Any], actual: dict[int, float], key: str) -> Comparison:
    expected = {int(s): float(v) for s, v in entry["losses"].items()}
    rtol = entry.get("rtol")
    decimals = entry.get("decimals")
    if rtol is None and decimals is None:
        raise FixtureError(f"fixture entry {key} has neither 'decimals' nor 'rtol'.")
    rows = []
    for step in sorted(set(expected) | set(actual)):
        exp, act = expected.get(step), actual.get(step)
        if exp is None or act is None:
            ok = False
        elif rtol is not None:
            ok = abs(act - exp) <= rtol * abs(exp)
        else:
            ok = round(act, decimals) == round(exp, decimals)
        rows.append(Row(step, exp, act, ok))
    rule = f"relative tolerance {rtol}" if rtol is not None else f"exact to {decimals} decimals"
    return Comparison(key, rows, rule)


def _repo_relative(path: str | None) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), REPO_ROOT)


def check_run(recipe_dir: Path, run_dir: Path, key: str | None = None) -> Comparison:
    key = key or run_key(run_dir)
    entry = get_entry(recipe_dir, key)
    recorded = (entry.get("provenance") or {}).get("config_file")
    used = _repo_relative(run_info(run_dir).get("config_file"))
    # File names, not paths: tests and users run edited copies of a recipe's TOML from elsewhere.
    if recorded is not None and used is not None and Path(used).name != Path(recorded).name:
        raise FixtureError(
            f"{run_dir} read config {used}, but fixture entry {key} was recorded from {recorded}: the "
            f"losses are not comparable. Launch with CONFIG_FILE={recorded}."
        )
    return compare(entry, run_losses(run_dir), key)


def launch_recipe(
    recipe_dir: Path, nproc: int, overrides: list[str], run_dir: Path, env: dict[str, str] | None = None
) -> tuple[list[str], subprocess.CompletedProcess]:
    """Run ``recipe_dir/run_train.sh`` for real; returns (command, completed process)."""
    script = Path(recipe_dir).resolve() / "run_train.sh"
    command = [str(script), *overrides]
    full_env = {**os.environ, "NGPU": str(nproc), "RUN_DIR": str(run_dir), **(env or {})}
    full_env.setdefault("PYTHON", sys.executable)
    proc = subprocess.run(command, env=full_env, capture_output=True, text=True)
    return command, proc


def _display_command(recipe_dir: Path, nproc: int, overrides: list[str]) -> str:
    rel = os.path.relpath(Path(recipe_dir).resolve() / "run_train.sh", REPO_ROOT)
    return f"NGPU={nproc} {rel} {shlex.join(overrides)}".strip()


def record_entry(
    recipe_dir: Path, run_dir: Path, nproc: int, overrides: list[str], rtol: float | None = None
) -> str:
    """Write the entry for ``run_dir``'s key into the recipe's fixture, from that real run."""
    info = run_info(run_dir)
    key = run_key(run_dir)
    losses = run_losses(run_dir)
    if not losses:
        raise FixtureError(f"{run_dir} logged no losses; nothing to record.")
    cpu = key.startswith("cpu-")
    entry = {
        "nproc": nproc,
        "overrides": overrides,
        "decimals": CPU_DECIMALS if cpu else None,
        "rtol": None if cpu else rtol,
        "losses": {str(s): round(v, CPU_DECIMALS) if cpu else v for s, v in sorted(losses.items())},
        "provenance": {
            "command": _display_command(recipe_dir, nproc, overrides),
            "config_file": _repo_relative(info.get("config_file")),
            "date": time.strftime("%Y-%m-%d"),
            "git": info.get("git"),
            "versions": info.get("versions"),
            "device": info.get("device"),
        },
    }
    if not cpu and rtol is None:
        raise FixtureError(f"{key}: GPU entries need --rtol, derived from repeated runs (see fixtures README).")
    path = Path(recipe_dir) / FIXTURE_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"recipe": Path(recipe_dir).name, "entries": {}}
    data["entries"][key] = entry
    data["entries"] = dict(sorted(data["entries"].items()))
    path.write_text(json.dumps(data, indent=2) + "\n")
    return key
