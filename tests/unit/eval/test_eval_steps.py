"""``--steps`` selection against the step folders a run's checkpoint directory holds."""

from __future__ import annotations

import json

import pytest

from titan_recipes.errors import ConfigError
from titan_recipes.eval.steps import available_steps, checkpoint_folder, select_steps


def test_select_all_last_and_a_list():
    assert select_steps("all", [20, 10, 30]) == [10, 20, 30]
    assert select_steps("last", [20, 10, 30]) == [30]
    assert select_steps("30, 10,10", [10, 20, 30]) == [10, 30]


@pytest.mark.parametrize("spec, match", [
    ("15", r"no complete checkpoint for step\(s\) \[15\]; it has \[10, 20\]"),
    ("ten", r"give 'all', 'last' or step numbers such as 10,20 \(this run has \[10, 20\]\)"),
    (",", r"names no step"),
])
def test_select_refuses_steps_the_run_does_not_have(spec, match):
    with pytest.raises(ConfigError, match=match):
        select_steps(spec, [10, 20])


def test_select_on_a_run_without_checkpoints_says_how_to_get_one():
    with pytest.raises(ConfigError, match="checkpoint.enable = true"):
        select_steps("all", [], where="runs/x")


def test_available_steps_skip_incomplete_saves_and_follow_the_recorded_folder(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"config": {"checkpoint": {"folder": "ckpt"}}}))
    assert checkpoint_folder(tmp_path) == tmp_path / "ckpt"
    for step in (5, 10):  # weights-only HF saves (checkpoint.last_save_in_hf)
        (tmp_path / "ckpt" / f"step-{step}").mkdir(parents=True)
        (tmp_path / "ckpt" / f"step-{step}" / "model.safetensors.index.json").write_text("{}")
    (tmp_path / "ckpt" / "step-15").mkdir()  # interrupted save: no .metadata, no index
    (tmp_path / "ckpt" / "not-a-step").mkdir()
    assert available_steps(tmp_path) == [5, 10]
    with pytest.raises(ConfigError, match=r"step\(s\) \[15\]"):
        select_steps("15", available_steps(tmp_path))
