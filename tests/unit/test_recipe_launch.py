"""scripts/recipe_launch.sh's console filter (recipe_quiet_config_error) on canned torchrun output: it
drops torchrun's failure report only after a shown rank printed the configuration-error line, and
passes everything else unchanged (tests/integration/test_launch_errors.py runs it for real)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from titan_recipes.train import CONFIG_ERROR_LINE

REPO_ROOT = Path(__file__).resolve().parents[2]

REPORT = [
    "E1130 13:29:23.335000 5836 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2) "
    "local_rank: 0 (pid: 5842) of binary: python",
    "Traceback (most recent call last):",
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
    "  exitcode  : 2 (pid: 5842) ",
]


def quiet(lines: list[str]) -> tuple[int, list[str]]:
    script = (
        'REPO="$1" RECIPE=debug NGPU=1 PYTHON=python3; source "$1/scripts/recipe_launch.sh"; '
        "recipe_quiet_config_error"
    )
    proc = subprocess.run(["bash", "-c", script, "bash", str(REPO_ROOT)], input="".join(f"{line}\n" for line in lines),
                          capture_output=True, text=True, timeout=30)
    return proc.returncode, proc.stdout.splitlines()


def test_the_launcher_prints_the_trainers_line():
    assert f'RECIPE_CONFIG_ERROR_LINE="{CONFIG_ERROR_LINE.split(";")[0]}"' in (
        REPO_ROOT / "scripts" / "recipe_launch.sh").read_text()


def test_report_after_a_shown_config_error_is_dropped():
    worker = ["[rank0]:ConfigError: Config key `training.steps` ...", f"[rank0]:{CONFIG_ERROR_LINE}"]
    stop = "W1130 api.py:1028] Sending process 15270 closing signal SIGTERM"  # torchrun stops rank 1
    code, out = quiet(["W1130 OMP_NUM_THREADS set", *worker, stop, *REPORT, "[rank1]:late line"])
    assert code == 2
    assert out == ["W1130 OMP_NUM_THREADS set", *worker, "[rank1]:late line"]
    # torchrun may log the failure before its tail thread relays the worker's last lines
    code, out = quiet(["[rank0]:ConfigError: ...", REPORT[0], f"[rank0]:{CONFIG_ERROR_LINE}", *REPORT[1:]])
    assert (code, out) == (2, ["[rank0]:ConfigError: ...", f"[rank0]:{CONFIG_ERROR_LINE}"])


def test_report_is_kept_when_no_shown_rank_printed_the_line():
    """Exit 2 from something else (or from a rank LOG_RANK hides): torchrun's report is all there is."""
    lines = ["[rank0]:usage: other.py", *REPORT]
    assert quiet(lines) == (0, lines)
    lines = [f"not a worker line {CONFIG_ERROR_LINE}", *REPORT]
    assert quiet(lines) == (0, lines)


def test_other_failures_and_normal_output_pass_unchanged():
    lines = [f"[rank0]:{CONFIG_ERROR_LINE}", REPORT[0].replace("exitcode: 2", "exitcode: 1"), *REPORT[1:]]
    assert quiet(lines) == (0, lines)
    lines = ["[rank0]:step:  1  loss:  7.9", "[rank0]:step:  2  loss:  7.5", "titan-recipes: done"]
    assert quiet(lines) == (0, lines)
