"""records.py: overrides parsed from the command line, container detection, hardware, launch summaries.
(A real launch writing run.json and summary.json: tests/integration/test_new.py.)"""

from __future__ import annotations

import os

import pytest

from titan_recipes import records


def test_overrides_are_the_section_key_pairs_without_the_config_file():
    argv = ["--job.config_file", "r/train.toml", "--job.dump_folder", "runs/x", "--training.steps", "20",
            "--compile.enable", "--lr_scheduler.warmup_steps=5", "--optimizer.lr", "-1e-3", "--checkpoint.no-enable"]
    assert records.parse_overrides(argv) == {
        "job.dump_folder": "runs/x", "training.steps": "20", "compile.enable": True,
        "lr_scheduler.warmup_steps": "5", "optimizer.lr": "-1e-3", "checkpoint.no-enable": True,
    }
    assert records.parse_overrides([]) == {}


def test_container_outside_any_container(tmp_path):
    assert records.container_info(tmp_path, env={}) == {"runtime": None, "image": None, "digest": None, "slurm_job_id": None}


def test_container_docker_with_the_image_variables(tmp_path):
    (tmp_path / ".dockerenv").write_text("")
    env = {records.IMAGE_ENV: "titan-recipes:0.1", records.IMAGE_DIGEST_ENV: "sha256:abc"}
    assert records.container_info(tmp_path, env=env) == {
        "runtime": "docker", "image": "titan-recipes:0.1", "digest": "sha256:abc", "slurm_job_id": None,
    }


def test_container_podman_reads_containerenv(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").write_text('engine="podman-5.0"\nimage="docker.io/x/titan:1"\nimageid="f00d"\n')
    info = records.container_info(tmp_path, env={})
    assert (info["runtime"], info["image"], info["digest"]) == ("podman", "docker.io/x/titan:1", "f00d")


def test_container_enroot_under_slurm(tmp_path):
    info = records.container_info(tmp_path, env={"ENROOT_ROOTFS": "/x", "SLURM_JOB_ID": "42"})
    assert (info["runtime"], info["digest"], info["slurm_job_id"]) == ("enroot", None, "42")


def test_hardware_on_this_machine():
    hw = records.hardware()
    assert hw["cpu_count"] == os.cpu_count()
    assert 0 < hw["cpu_usable"] <= hw["cpu_count"]
    assert hw["memory_gib"] > 0 and isinstance(hw["gpus"], list)


def _rows(n: int, first: int = 1) -> list[dict]:
    return [{"step": s, records.LOSS_KEY: 10.0 / s, records.TPS_KEY: 100.0 * s, records.PEAK_MEMORY_KEY: 1.0 + s % 3}
            for s in range(first, first + n)]


@pytest.mark.parametrize(
    "last_step, stop_at, preempted, error, reason",
    [
        (10, -1, False, None, "completed"),
        (6, 6, False, None, "stop_at_step"),
        (4, 6, True, None, "preempted"),
        (4, -1, False, RuntimeError("boom"), "error"),
        (4, -1, False, None, "stopped"),
    ],
)
def test_summary_exit_reason(last_step, stop_at, preempted, error, reason):
    s = records.summarize(records.LaunchStats.of(_rows(last_step)), last_step=last_step, training_steps=10, stop_at_step=stop_at,
                          preempted=preempted, error=error, wall_time_s=1.5)
    assert s["exit_reason"] == reason
    assert (s["error"] == "RuntimeError: boom") == (error is not None)


def test_summary_skips_warmup_steps_of_the_launch():
    rows = _rows(6, first=5)  # a resumed launch: steps 5..10
    s = records.summarize(records.LaunchStats.of(rows), last_step=10, training_steps=10, stop_at_step=-1, preempted=False, error=None, wall_time_s=2.0)
    steady = [100.0 * step for step in range(5 + records.WARMUP_STEPS, 11)]
    assert s["tokens_per_s_mean"] == pytest.approx(sum(steady) / len(steady))
    assert s["tokens_per_s_steps"] == len(steady)
    assert (s["first_step"], s["final_step"], s["final_loss"]) == (5, 10, 1.0)
    assert s["peak_memory_gib"] == 3.0


def test_summary_of_a_launch_that_logged_nothing():
    s = records.summarize(records.LaunchStats(), last_step=None, training_steps=10, stop_at_step=-1, preempted=False, error=None, wall_time_s=0.1)
    assert s["exit_reason"] == "stopped"
    assert s["final_loss"] is None and s["tokens_per_s_mean"] is None and s["peak_memory_gib"] is None
