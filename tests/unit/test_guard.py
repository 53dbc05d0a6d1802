"""titan_recipes.guard on a real module with real gradients, one process (the all-reduce is skipped without
a process group); tests/integration/test_run_safety.py trains a diverging recipe end to end."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from titan_recipes.errors import ConfigError
from titan_recipes.config import Launch, validate_launch
from titan_recipes.guard import DivergenceError, DivergenceGuard, assert_finite_weights


def _trainer(mode: str = "stop", tmp_path=None) -> SimpleNamespace:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    cfg = SimpleNamespace(
        launch=Launch(on_nonfinite=mode), optimizer=SimpleNamespace(lr=1e-3),
        lr_scheduler=SimpleNamespace(warmup_steps=2), training=SimpleNamespace(max_norm=1.0),
    )
    ckpt = SimpleNamespace(enable=tmp_path is not None, folder=str(tmp_path) if tmp_path else "")
    return SimpleNamespace(job_config=cfg, model_parts=[model], device=torch.device("cpu"),
                           gradient_accumulation_steps=2, checkpointer=ckpt)


def _step(trainer, guard, scale: float = 1.0) -> None:
    """Two micro-batches: forward, backward, hand each loss to the guard (as forward_backward_step does)."""
    model = trainer.model_parts[0]
    model.zero_grad()
    for _ in range(2):
        loss = model(torch.ones(2, 4)).sum() * scale
        loss.backward()
        guard.add_loss(loss)


def test_finite_step_passes():
    trainer = _trainer()
    guard = DivergenceGuard(trainer)
    _step(trainer, guard)
    guard.check(1)


def test_nonfinite_loss_stops_with_step_value_and_fix(tmp_path):
    (tmp_path / "step-4").mkdir()
    trainer = _trainer(tmp_path=tmp_path)
    guard = DivergenceGuard(trainer)
    _step(trainer, guard, scale=float("nan"))
    with pytest.raises(DivergenceError) as err:
        guard.check(7)
    msg = str(err.value)
    assert msg.startswith("Training diverged at step 7: the loss is NaN and the gradient norm is NaN (non-finite).")
    assert "Stopped before saving step 7" in msg and "lower optimizer.lr (now 0.001)" in msg
    assert "launch.on_nonfinite = \"warn\"" in msg
    assert err.value.exit_reason == "diverged"


def test_nonfinite_gradient_with_finite_loss_stops():
    trainer = _trainer()
    guard = DivergenceGuard(trainer)
    _step(trainer, guard)
    trainer.model_parts[0].weight.grad[0, 0] = float("inf")  # e.g. an overflow in one backward kernel
    guard._grad_sq = None
    guard.add_grads()
    with pytest.raises(DivergenceError, match=r"at step 3: the gradient norm is \+inf"):
        guard.check(3)


def test_warn_mode_trains_on(caplog):
    trainer = _trainer("warn")
    guard = DivergenceGuard(trainer)
    _step(trainer, guard, scale=float("inf"))
    with caplog.at_level("WARNING", logger="titan_recipes.guard"):
        guard.check(5)
    assert "Step 5: the loss is -inf and the gradient norm is +inf; training on" in caplog.text
    _step(trainer, guard)  # the next step starts from a clean slate
    guard.check(6)


def test_nonfinite_weights_are_never_saved(caplog):
    for mode in ("stop", "warn"):
        trainer = _trainer(mode)
        assert assert_finite_weights(trainer, 2)
        with torch.no_grad():
            trainer.model_parts[0].bias[1] = float("nan")
        if mode == "stop":
            with pytest.raises(DivergenceError, match="the weights are NaN after the optimizer update"):
                assert_finite_weights(trainer, 4)
        else:
            with caplog.at_level("WARNING", logger="titan_recipes.guard"):
                assert not assert_finite_weights(trainer, 4)
            assert "not saving checkpoint step 4" in caplog.text


def test_on_nonfinite_is_validated():
    cfg = SimpleNamespace(launch=Launch(on_nonfinite="ignore"), checkpoint=SimpleNamespace(enable=True, interval=10))
    with pytest.raises(ConfigError, match=r'launch.on_nonfinite must be "stop" or "warn", got \'ignore\''):
        validate_launch(cfg)
    validate_launch(SimpleNamespace(launch=Launch(), checkpoint=cfg.checkpoint))
