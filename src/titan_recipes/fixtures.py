"""Expected-loss fixtures: ``recipes/<name>/expected_loss.json``.

One entry per key ``<device>-torch<version>-<nproc>`` (``cpu-torch2.13.0-1``,
``h100-torch2.11.0+cu130-8``)::

    {
      "recipe": "debug",
      "entries": {
        "cpu-torch2.13.0-1": {
          "nproc": 1,
          "overrides": ["--training.steps", "20"],
          "losses": {"1": 8.138691902160645, ...},   # as logged, full precision
          "atol": 0.0, "rtol": 1.2e-06,                # |actual - expected| <= atol + rtol * |expected|
          "tolerance": {"source": "cpu-kernel-variants", "multiple": 4.0, "rtol_floor": ..., ...},
          "spread": {"native": {...}, "variants": {"aten-avx2": {"env": {...}, "max_abs_diff": ...}}},
          "provenance": {"command": "...", "config_file": "recipes/debug/train.toml", "date": "...",
                         "git": {...}, "versions": {...}, "device": "...", "machine": {...}}
        }
      }
    }

**One rule for every key**: per step, ``|actual - expected| <= atol + rtol * |expected|``; a missing or
extra step is a mismatch. The tolerance is measured, never guessed:

- CPU entries: :func:`cpu_variants` lists the kernel variants one machine can reach (ATen's dispatch
  level through ``ATEN_CPU_CAPABILITY``, MKL's and oneDNN's ISA limits, the thread count). ``fixtures
  regen`` trains the recipe once per variant beside the native runs, and :func:`tolerance_from_spread`
  sets ``rtol = max(TOLERANCE_MULTIPLE x the largest relative spread seen, RTOL_FLOOR)``. Different
  CPUs differ from each other in the same way (which kernels they dispatch to, how reductions are
  split), so the spread one machine can reach is the measured stand-in for another machine.
- GPU entries: the spread across ``--repeats`` runs, with the same multiple and floor.

Determinism on one machine is a separate, exact check: ``regen`` refuses to record unless its native
repeats are bitwise identical (and tests/integration/test_fixture_rule.py asserts it).

A fixture is only ever written from real runs of the recipe (:func:`record_entry` reads their
``metrics.jsonl`` and ``run.json``); a tolerance is never widened to make a run pass.

``provenance.config_file`` is the TOML the recorded run read (from its ``run.json``), relative to the
repository. A recipe whose ``run_train.sh`` picks its config by device (``llama3_1b``: ``smoke.toml``
without a GPU) reproduces it from the entry's command alone; :func:`check_run` refuses a run whose
config file has another name (``train.toml`` against a ``smoke.toml`` entry; a copy of the recorded
file elsewhere, as the integration tests make, is accepted and compared by its losses).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .run_files import LOSS_KEY, METRICS_FILE, RUN_FILE, parse_overrides, read_metrics

FIXTURE_FILE = "expected_loss.json"
REPO_ROOT = Path(__file__).resolve().parents[2]

TOLERANCE_MULTIPLE = 4.0
"""rtol = this x the largest relative spread measured (kernel variants on CPU, repeats on GPU). The
spread one machine reaches is a sample of what other machines do, not a bound: the margin covers a
machine whose kernels differ from all of ours by a little more than ours differ from each other."""
RTOL_FLOOR = 4 * 2.0**-23
"""The smallest rtol: 4 float32 ulps relative (4.8e-7). A recipe whose variants all agree bitwise still
meets machines whose reductions round differently in the last bit."""
NO_LAUNCH_CHECK_ENV = "TITAN_RECIPES_NO_FIXTURE_CHECK"
"""Set (to anything) to skip the fixture comparison at the end of ``run_train.sh``; ``fixtures
regen/verify`` set it for the launches they compare themselves."""
ATOL = 0.0
"""Losses are O(1)-O(10), never near zero, so the rule is relative; the key is kept so that every
entry states the whole rule."""


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


# -- the rule ---------------------------------------------------------------------------------------


def tolerance_of(entry: dict[str, Any], key: str) -> tuple[float, float]:
    """(atol, rtol) of an entry; an entry without them (the rounded format before measured
    tolerances) cannot be compared and must be re-recorded."""
    if entry.get("rtol") is None or "atol" not in entry:
        raise FixtureError(
            f"fixture entry {key} has no measured tolerance (atol/rtol): it was recorded in the old format "
            f"(losses rounded to 5 decimals). Re-record it from real runs: titan-recipes fixtures regen "
            f"RECIPE --nproc {entry.get('nproc', 1)}"
        )
    return float(entry["atol"]), float(entry["rtol"])


def within(actual: float, expected: float, atol: float, rtol: float) -> bool:
    """The fixture rule for one step: ``|actual - expected| <= atol + rtol * |expected|`` (NaN fails)."""
    return abs(actual - expected) <= atol + rtol * abs(expected)


@dataclass
class Row:
    step: int
    expected: float | None
    actual: float | None
    bound: float | None
    """``atol + rtol * |expected|`` for this step."""
    ok: bool

    @property
    def diff(self) -> float | None:
        return None if None in (self.expected, self.actual) else abs(self.actual - self.expected)


@dataclass
class Comparison:
    key: str
    rows: list[Row]
    rule: str

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    @property
    def worst(self) -> float:
        """The largest |diff| / bound over the compared steps (1.0 is the edge of the tolerance)."""
        ratios = [r.diff / r.bound if r.bound else math.inf for r in self.rows if r.diff is not None and r.diff > 0]
        return max(ratios, default=0.0)

    def table(self) -> str:
        lines = [
            f"fixture {self.key}: {self.rule}",
            f"{'step':>5}  {'expected':>12}  {'actual':>12}  {'|diff|':>9}  {'tolerance':>9}  ok",
        ]
        for r in self.rows:
            exp = f"{r.expected:.7f}" if r.expected is not None else "missing"
            act = f"{r.actual:.7f}" if r.actual is not None else "missing"
            diff = f"{r.diff:.2e}" if r.diff is not None else ""
            bound = f"{r.bound:.2e}" if r.bound is not None else ""
            lines.append(f"{r.step:>5}  {exp:>12}  {act:>12}  {diff:>9}  {bound:>9}  {'yes' if r.ok else 'NO'}")
        bad = sum(not r.ok for r in self.rows)
        if self.ok:
            lines.append(f"MATCH: {len(self.rows)} steps within tolerance (largest |diff| = {self.worst:.2f} x tolerance)")
        else:
            lines.append(f"MISMATCH: {bad} of {len(self.rows)} steps differ")
        return "\n".join(lines)


def describe_rule(entry: dict[str, Any], key: str) -> str:
    atol, rtol = tolerance_of(entry, key)
    tol = entry.get("tolerance") or {}
    source = {
        "cpu-kernel-variants": f"{tol.get('multiple', '?')} x the spread over {len(tol.get('variants') or [])} CPU kernel variants",
        "repeats": f"{tol.get('multiple', '?')} x the spread over {tol.get('repeats', '?')} repeated runs",
    }.get(tol.get("source"), "recorded")
    if tol.get("floor_applied"):
        source += f", floored at {RTOL_FLOOR:.2g}"
    return f"|actual - expected| <= {atol:g} + {rtol:.3g} * |expected| ({source})"


def compare(entry: dict[str, Any], actual: dict[int, float], key: str, steps: list[int] | None = None) -> Comparison:
    """Each step of the entry (or only ``steps``) against ``actual``; a step on one side only fails."""
    atol, rtol = tolerance_of(entry, key)
    expected = {int(s): float(v) for s, v in entry["losses"].items()}
    wanted = sorted(set(expected) | set(actual)) if steps is None else sorted(steps)
    rows = []
    for step in wanted:
        exp, act = expected.get(step), actual.get(step)
        bound = None if exp is None else atol + rtol * abs(exp)
        ok = exp is not None and act is not None and within(act, exp, atol, rtol)
        rows.append(Row(step, exp, act, bound, ok))
    return Comparison(key, rows, describe_rule(entry, key))


def _repo_relative(path: str | None) -> str | None:
    return None if path is None else os.path.relpath(Path(path).resolve(), REPO_ROOT)


def _check_config_file(entry: dict[str, Any], key: str, run_dir: Path) -> None:
    recorded = (entry.get("provenance") or {}).get("config_file")
    used = _repo_relative(run_info(run_dir).get("config_file"))
    # File names, not paths: tests and users run edited copies of a recipe's TOML from elsewhere.
    if recorded is not None and used is not None and Path(used).name != Path(recorded).name:
        raise FixtureError(
            f"{run_dir} read config {used}, but fixture entry {key} was recorded from {recorded}: the "
            f"losses are not comparable. Launch with CONFIG_FILE={recorded}."
        )


def check_run(recipe_dir: Path, run_dir: Path, key: str | None = None, steps: list[int] | None = None) -> Comparison:
    key = key or run_key(run_dir)
    entry = get_entry(recipe_dir, key)
    _check_config_file(entry, key, run_dir)
    return compare(entry, run_losses(run_dir), key, steps=steps)


def _launch_overrides(info: dict[str, Any]) -> dict[str, Any]:
    """The ``--section.key value`` overrides a launch was given, without the run directory."""
    return {k: v for k, v in (info.get("overrides") or {}).items() if k != "job.dump_folder"}


def applicable_entry(recipe_dir: Path, run_dir: Path) -> tuple[str | None, str]:
    """(key, "") when the recipe's fixture can judge ``run_dir``: an entry for this device, torch and
    process count, recorded with the same overrides and config file name; (None, reason) otherwise.
    Whether the run completed is the caller's to know (the trainer asks at the end of training)."""
    path = Path(recipe_dir) / FIXTURE_FILE
    if not path.is_file():
        return None, f"{path} does not exist"
    info = run_info(run_dir)
    key = run_key(run_dir)
    entry = load_fixture(recipe_dir)["entries"].get(key)
    if entry is None:
        return None, f"{path} has no entry for this machine's key {key}"
    wanted = parse_overrides(list(entry.get("overrides") or []))
    if _launch_overrides(info) != wanted:
        return None, f"the run's overrides {_launch_overrides(info)} are not the entry's {wanted}"
    recorded = (entry.get("provenance") or {}).get("config_file")
    if recorded and Path(info.get("config_file") or "").name != Path(recorded).name:
        return None, f"the run read {info.get('config_file')}, the entry was recorded from {recorded}"
    return key, ""


def report_launch(config_file: str | None, run_dir: Path) -> tuple[bool | None, str]:
    """The comparison every completed launch ends with (rank 0, in the trainer: no extra start-up).
    The recipe is the directory of the launch's config file. Returns (None, why not) when the fixture
    cannot judge this run, else (matched, table)."""
    if os.environ.get(NO_LAUNCH_CHECK_ENV):
        return None, f"{NO_LAUNCH_CHECK_ENV} is set"
    if not config_file:
        return None, "no config file"
    recipe_dir = Path(config_file).resolve().parent
    try:
        key, why = applicable_entry(recipe_dir, run_dir)
        if key is None:
            return None, why
        result = check_run(recipe_dir, run_dir, key=key)
    except FixtureError as e:
        return None, str(e)
    return result.ok, result.table()


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


# -- recording: kernel variants, spread, tolerance -------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way to run the same recipe on this machine with other CPU kernels."""

    name: str
    env: dict[str, str]
    what: str


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_machine() -> dict[str, Any]:
    """What decides this machine's CPU arithmetic when nothing is limited: model, ATen's kernel level,
    torch's thread count, MKL and oneDNN versions."""
    import torch

    from .records import hardware

    hw = hardware()
    config = torch.__config__.show()
    mkl = re.search(r"Intel\(R\) (?:oneAPI )?Math Kernel Library Version ([^\n]+)", config)
    dnnl = re.search(r"oneDNN v([^\s(]+)", config) or re.search(r"MKL-DNN v([^\s(]+)", config)
    return {
        "cpu_model": hw.get("cpu_model"),
        "cpu_count": hw.get("cpu_count"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "avx512": "avx512f" in cpu_flags(),
        "mkl": mkl.group(1).strip() if mkl else None,
        "onednn": dnnl.group(1) if dnnl else None,
    }


def cpu_variants(native_capability: str, has_avx512: bool, native_threads: int) -> list[Variant]:
    """The kernel variants one machine can reach, beside its native run (``fixtures regen``).

    - ATen's dispatch level (``ATEN_CPU_CAPABILITY``): ``default`` (no vector ISA), ``avx2``, and
      ``avx512`` where the CPU has it; the level the machine picks by itself is the native run.
    - MKL's and oneDNN's ISA limits together (``MKL_ENABLE_INSTRUCTIONS=AVX2``,
      ``DNNL_MAX_CPU_ISA=AVX2``): the BLAS and oneDNN code paths an AVX2-only machine takes.
    - The thread count per process: 1 where the native run uses more, else 2. Threads split
      reductions (matmul, sums) differently, as machines with other core counts do.
    """
    out = []
    for level in ("default", "avx2", "avx512"):
        if level.upper() == native_capability.upper() or (level == "avx512" and not has_avx512):
            continue
        out.append(Variant(f"aten-{level}", {"ATEN_CPU_CAPABILITY": level}, f"ATen kernels at level {level}"))
    out.append(Variant("mkl-onednn-avx2", {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"},
                       "MKL and oneDNN limited to AVX2"))
    threads = 1 if native_threads > 1 else 2
    out.append(Variant(f"threads-{threads}", {"OMP_NUM_THREADS": str(threads)}, f"{threads} thread(s) per process"))
    return out


def spread(base: dict[int, float], other: dict[int, float]) -> dict[str, Any]:
    """How far ``other`` lies from ``base``, per step and at most (absolute and relative)."""
    if sorted(base) != sorted(other):
        raise FixtureError(f"runs logged different steps: {sorted(base)} vs {sorted(other)}")
    diffs = {s: abs(other[s] - base[s]) for s in sorted(base)}
    if not all(math.isfinite(d) for d in diffs.values()):
        raise FixtureError("a run logged a non-finite loss: nothing to record")
    return {
        "max_abs_diff": max(diffs.values()),
        "max_rel_diff": max(d / abs(base[s]) for s, d in diffs.items()),
        "steps_differing": sum(d > 0 for d in diffs.values()),
        "abs_diff": {str(s): d for s, d in diffs.items()},
    }


def tolerance_from_spread(spreads: dict[str, dict[str, Any]], source: str, **extra: Any) -> dict[str, Any]:
    """``{"atol", "rtol", "tolerance"}`` for an entry: rtol = max(TOLERANCE_MULTIPLE x the largest
    relative spread, RTOL_FLOOR)."""
    largest = max((s["max_rel_diff"] for s in spreads.values()), default=0.0)
    measured = TOLERANCE_MULTIPLE * largest
    return {
        "atol": ATOL,
        "rtol": max(measured, RTOL_FLOOR),
        "tolerance": {
            "source": source,
            "rule": "|actual - expected| <= atol + rtol * |expected| at every step",
            "multiple": TOLERANCE_MULTIPLE,
            "rtol_floor": RTOL_FLOOR,
            "max_rel_spread": largest,
            "max_abs_spread": max((s["max_abs_diff"] for s in spreads.values()), default=0.0),
            "floor_applied": measured < RTOL_FLOOR,
            "variants": sorted(spreads),
            **extra,
        },
    }


def spread_table(spreads: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'variant':<18} {'max |diff|':>10} {'max rel':>9} {'steps differing':>16}  env"]
    for name, s in spreads.items():
        env = " ".join(f"{k}={v}" for k, v in (s.get("env") or {}).items()) or "-"
        lines.append(f"{name:<18} {s['max_abs_diff']:>10.3g} {s['max_rel_diff']:>9.3g} {s['steps_differing']:>8} of {len(s['abs_diff']):<5}  {env}")
    return "\n".join(lines)


def record_entry(
    recipe_dir: Path,
    run_dir: Path,
    nproc: int,
    overrides: list[str],
    tolerance: dict[str, Any],
    spreads: dict[str, dict[str, Any]],
    machine: dict[str, Any] | None = None,
) -> str:
    """Write the entry for ``run_dir``'s key into the recipe's fixture: the losses of that real run at
    full precision, with the tolerance and the spread table it was measured from."""
    info = run_info(run_dir)
    key = run_key(run_dir)
    losses = run_losses(run_dir)
    if not losses:
        raise FixtureError(f"{run_dir} logged no losses; nothing to record.")
    hw = info.get("hardware") or {}
    entry = {
        "nproc": nproc,
        "overrides": overrides,
        "losses": {str(s): v for s, v in sorted(losses.items())},
        "atol": tolerance["atol"],
        "rtol": tolerance["rtol"],
        "tolerance": tolerance["tolerance"],
        "spread": spreads,
        "provenance": {
            "command": _display_command(recipe_dir, nproc, overrides),
            "config_file": _repo_relative(info.get("config_file")),
            "date": time.strftime("%Y-%m-%d"),
            "git": info.get("git"),
            "versions": info.get("versions"),
            "device": info.get("device"),
            "machine": {**(machine or {}), "torch_threads": hw.get("torch_threads"),
                        "cpu_capability": hw.get("cpu_capability", (machine or {}).get("cpu_capability"))},
        },
    }
    path = Path(recipe_dir) / FIXTURE_FILE
    data = json.loads(path.read_text()) if path.is_file() else {"recipe": Path(recipe_dir).name, "entries": {}}
    data["entries"][key] = entry
    data["entries"] = dict(sorted(data["entries"].items()))
    path.write_text(json.dumps(data, indent=2) + "\n")
    return key
