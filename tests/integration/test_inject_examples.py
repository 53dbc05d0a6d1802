"""The two examples of titan_recipes.inject train for real on CPU, and a run stopped at a checkpoint
and resumed equals the uninterrupted run: every loss at full float precision, the learning rate at
each step, and the final checkpoint (model, optimizer, LR scheduler, data loader, step) bitwise.

One Python process (``DRIVER``) runs every launch of both examples through their ``main(argv)``, as
a notebook would call ``inject.train`` repeatedly, each launch with its own Trainer. Launches per
example: uninterrupted (4 steps, checkpoints at 2 and 4), ``launch.stop_at_step = 2``, resume to 4.
The custom-optimizer launches create and destroy their own process group; the plain-DataLoader
launches run inside one the driver initialised itself, which inject.train must use and leave open.
A fourth custom-optimizer launch resumes from a copy of the step-2 checkpoint with
``checkpoint.exclude_from_loading = ["optimizer", "lr_scheduler"]`` and must differ, which shows that
the equality depends on the injected optimizer's and scheduler's restored state.

The last test (slow) runs a model class torchtitan does not know under torchrun with 2 FSDP processes.
"""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest

from launching import REPO, assert_same_checkpoint
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics

STEPS, STOP = 4, 2
COMMON = ["--training.steps", str(STEPS), "--training.seq_len", "128", "--training.local_batch_size", "4",
          "--checkpoint.interval", str(STOP), "--checkpoint.no-last-save-model-only", "--metrics.log_freq", "1"]
DRIVER = """
import runpy, shutil, socket, sys
from pathlib import Path

root, common, stop = Path(sys.argv[1]), sys.argv[3:], sys.argv[2]
examples = {"optimizer": "examples/inject_custom_optimizer.py", "plain": "examples/inject_plain_dataloader.py"}
for tag, path in examples.items():
    main = runpy.run_path(path)["main"]  # imports titan_recipes.inject first
    if tag == "plain":  # a process group the user initialised: inject.train uses it and leaves it open
        import torch.distributed as dist
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    run = lambda name, *extra: main(["--job.dump_folder", str(root / tag / name), *common, *extra])
    run("uninterrupted")
    run("resumed", "--launch.stop_at_step", stop)
    if tag == "optimizer":
        shutil.copytree(root / tag / "resumed" / "checkpoint", root / tag / "no_optimizer_state" / "checkpoint")
    run("resumed")
    if tag == "optimizer":
        run("no_optimizer_state", "--checkpoint.exclude_from_loading", "optimizer,lr_scheduler")
    if tag == "plain":
        print("USER GROUP KEPT", dist.is_initialized(), flush=True)
        dist.destroy_process_group()
    print("DRIVER DONE", tag, flush=True)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inject")
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root), str(STOP), *COMMON], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"examples failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    return root, proc.stdout


def _lrs(run_dir) -> dict[int, float]:
    return {int(row["step"]): row["lr"] for row in read_metrics(run_dir / "metrics.jsonl") if "lr" in row}


def _sections(step_dir) -> set[str]:
    meta = pickle.loads((step_dir / ".metadata").read_bytes())
    return set(meta.state_dict_metadata)


@pytest.mark.parametrize("tag", ["optimizer", "plain"])
def test_stop_and_resume_equals_uninterrupted(runs, tag):
    root, out = runs
    full, resumed = root / tag / "uninterrupted", root / tag / "resumed"
    assert f"DRIVER DONE {tag}" in out
    assert f"Training starts at step {STOP + 1}" in out
    want, got = fx.run_losses(full), fx.run_losses(resumed)
    assert sorted(want) == list(range(1, STEPS + 1))
    assert got == want  # full float precision; steps 1-3 from the first launch, 4-6 after the resume
    assert _lrs(resumed) == _lrs(full) and len(_lrs(full)) == STEPS
    assert_same_checkpoint(full / "checkpoint" / f"step-{STEPS}", resumed / "checkpoint" / f"step-{STEPS}")


def test_custom_optimizer_and_scheduler_state_is_checkpointed_and_needed(runs):
    root, out = runs
    full, bare = root / "optimizer" / "uninterrupted", root / "optimizer" / "no_optimizer_state"
    assert "inject: optimizers ['Lion']" in out and "inject: LR schedulers ['OneCycleLR']" in out
    keys = _sections(full / "checkpoint" / f"step-{STOP}")
    assert "lr_scheduler.scheduler_0" in keys
    assert any(k.startswith("optimizer.state.") and k.endswith(".exp_avg") for k in keys)  # Lion's momentum
    lrs = _lrs(full)
    assert len(set(lrs.values())) == STEPS  # OneCycleLR: a different rate every step
    # Without the optimizer and scheduler state the resumed run restarts OneCycleLR and Lion's momentum.
    assert _lrs(bare)[STOP + 1] != lrs[STOP + 1]
    bare_losses, want = fx.run_losses(bare), fx.run_losses(full)
    assert sorted(bare_losses) == list(range(STOP + 1, STEPS + 1))  # it resumed at the same checkpoint
    assert bare_losses[STEPS] != want[STEPS]


def test_plain_loader_position_is_checkpointed_under_a_user_process_group(runs):
    root, out = runs
    assert "torch.distributed is already initialized. Skipping init_distributed" in out  # torchtitan 0.2.2
    assert "USER GROUP KEPT True" in out
    assert "'dataloader', 'loss_fn'] injected" in out
    assert f"ResumableLoader: resuming epoch 0 after batch {STOP}" in out
    keys = _sections(root / "plain" / "uninterrupted" / "checkpoint" / f"step-{STOP}")
    assert {"dataloader.dp_rank_0", "dataloader.world_size"} <= keys


CUSTOM_MODEL = '''
import sys
from titan_recipes import inject
import torch
from torch import nn


class TinyLM(nn.Module):
    """Not a torchtitan model: inject falls back to FSDP on the whole model and 6 x params FLOPs."""

    def __init__(self, vocab: int = 2048, dim: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out = nn.Linear(dim, vocab)

    def init_weights(self, buffer_device=None):
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, tokens):
        h = self.emb(tokens)
        return self.out(h + self.mlp(h))


inject.train("recipes/debug/train.toml", sys.argv[1:], model=TinyLM,
             optimizer=lambda named: torch.optim.NAdam([p for _, p in named], lr=1e-3))
'''


@pytest.mark.slow
def test_a_custom_model_trains_with_fsdp_over_two_processes(tmp_path):
    """torchrun, 2 processes: a model class torchtitan does not know, with no parallelize function and
    no model args, gets FSDP on the whole model (gloo, SUM reduction); both ranks agree on every loss
    and each saves its shard of the model and of NAdam's state."""
    script, run_dir = tmp_path / "custom_model.py", tmp_path / "run"
    script.write_text(CUSTOM_MODEL)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv_backend", "c10d",
         "--rdzv_endpoint", "localhost:0", str(script), "--job.dump_folder", str(run_dir),
         "--training.steps", "3", "--training.seq_len", "128",
         "--training.local_batch_size", "4", "--checkpoint.interval", "3", "--checkpoint.no-last-save-model-only"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert out.count("inject: FSDP on the whole TinyLM (mesh ('fsdp',))") == 2
    for step in (1, 2, 3):
        lines = re.findall(rf"step:\s+{step}\s+loss:\s+(\S+)", out)
        assert len(lines) == 2 and lines[0] == lines[1], lines
    step_dir = run_dir / "checkpoint" / "step-3"
    assert sorted(p.name for p in step_dir.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert {"optimizer.state.mlp.0.weight.exp_avg", "mlp.0.weight"} <= _sections(step_dir)
    assert sorted(fx.run_losses(run_dir)) == [1, 2, 3]
