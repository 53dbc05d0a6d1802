"""From a debug-recipe run to a HuggingFace model and back (issue 17), with real training launches.

- ``titan-recipes export hf`` on the run's final weights-only save and on a full interval checkpoint (and,
  slow, on a 2-process FSDP run's checkpoints): transformers loads the directory with no complaint about
  weights, its logits equal torchtitan's on the same weights (max |diff| <= 1e-4, fp32) and greedy
  decoding agrees for 16 tokens.
- Continued pretraining: a small Llama saved by transformers starts a debug-recipe run through torchtitan's
  ``checkpoint.initial_load_path`` + ``initial_load_in_hf``; its step-1 loss is the HF model's loss on the
  run's first batch, and a stop/resume of that run repeats the uninterrupted losses bitwise.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launching import DEBUG_RECIPE, REPO, SHORT, assert_ok, assert_same_checkpoint, launch
from titan_recipes import fixtures as fx
from titan_recipes.checkpoint_steps import checkpoint_kind
from titan_recipes.hf.config import flavor_args
from titan_recipes.hf.export import export_hf, load_dcp_model, load_hf_safetensors
from titan_recipes.hf.load import build_titan_model, titan_state_from_hf
from titan_recipes.hf.parity import hf_greedy, load_hf, logit_diff, titan_greedy, weight_complaints

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def args():
    return flavor_args("recipes.llama3", "debugmodel")


@pytest.fixture(scope="module")
def trained(short_debug_run) -> Path:
    """4 steps of the debug recipe: a full checkpoint at step 2, the weights-only final save at step 4."""
    return short_debug_run


def assert_export_matches(out: Path, step_dir: Path, args) -> float:
    """transformers loads ``out`` cleanly and computes what torchtitan computes with ``step_dir``'s
    weights; returns the max |logit diff|."""
    hf, info, messages = load_hf(out)
    assert (info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"]) == (set(), set(), set())
    assert weight_complaints(messages) == [], messages
    titan = build_titan_model(args, load_dcp_model(step_dir, args))
    tokens = torch.randint(0, args.vocab_size, (4, 96), generator=torch.Generator().manual_seed(0))
    diff = logit_diff(hf, titan, tokens)
    print(f"\n{step_dir.parent.parent.name}/{step_dir.name}: max |logit diff| = {diff:.3g}")
    assert diff <= TOLERANCE

    from transformers import AutoTokenizer

    prompt = torch.tensor([AutoTokenizer.from_pretrained(out)("ROMEO:\nWhat light")["input_ids"]])
    assert prompt.shape[1] >= 3
    assert torch.equal(hf_greedy(hf, prompt, 16), titan_greedy(titan, prompt, 16))
    return diff


def test_export_of_the_final_weights_only_save(trained, tmp_path, args):
    """The user's path: the CLI in a subprocess, newest checkpoint."""
    final = trained / "checkpoint" / "step-4"
    assert checkpoint_kind(str(final)) == "model"
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "titan_recipes.cli", "export", "hf", str(trained), str(out)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    readme = (out / "README.md").read_text()
    assert "debug-short, step 4" in readme and "git SHA" in readme
    assert_export_matches(out, final, args)


def test_export_of_a_full_interval_checkpoint(trained, tmp_path, args):
    full = trained / "checkpoint" / "step-2"
    assert checkpoint_kind(str(full)) == "full"
    out = export_hf(trained, tmp_path / "hf", step=2)
    assert_export_matches(out, full, args)
    # the exported weights are the checkpoint's, not the final ones
    final = load_dcp_model(trained / "checkpoint" / "step-4", args)
    assert not torch.equal(titan_state_from_hf(out, args)["output.weight"], final["output.weight"])


def test_a_run_saved_with_last_save_in_hf_exports_the_same_model(trained, tmp_path):
    """checkpoint.last_save_in_hf makes torchtitan write the final step as HF safetensors; the export
    completes that into the same directory the DCP path gives (the debug recipe is deterministic, so both
    runs end with bitwise equal weights)."""
    run_dir = tmp_path / "hf-save"
    assert_ok(launch(DEBUG_RECIPE, 1, run_dir, *SHORT, "--checkpoint.last_save_in_hf"))
    assert (run_dir / "checkpoint" / "step-4" / "model.safetensors.index.json").is_file()
    out = export_hf(run_dir, tmp_path / "hf")
    ref = export_hf(trained, tmp_path / "ref")
    assert (out / "config.json").read_text() == (ref / "config.json").read_text()
    a, b = load_hf_safetensors(out), load_hf_safetensors(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, info, messages = load_hf(out)
    assert info["missing_keys"] == set() and weight_complaints(messages) == []


@pytest.mark.slow
def test_export_of_a_two_process_checkpoint(tmp_path, args):
    """FSDP over 2 processes writes each tensor as 2 shards; the export reassembles them with no process group."""
    run_dir = tmp_path / "fsdp2"
    assert_ok(launch(DEBUG_RECIPE, 2, run_dir, *SHORT))
    for step in (2, 4):
        step_dir = run_dir / "checkpoint" / f"step-{step}"
        assert len(list(step_dir.glob("*.distcp"))) == 2
        assert_export_matches(export_hf(run_dir, tmp_path / f"hf{step}", step=step), step_dir, args)


# -- HF -> torchtitan --------------------------------------------------------------------------------------


def _save_small_llama(directory: Path) -> torch.nn.Module:
    """A Llama with the debugmodel's shape, written by transformers itself (random weights, fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=16,
        num_key_value_heads=16, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=0, eos_token_id=1,
    )
    torch.manual_seed(7)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(directory)
    return model


def _first_batch(*overrides: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The debug recipe's first micro-batch, built the way its trainer builds it."""
    from torchtitan.config import ConfigManager

    from titan_recipes.data.registry import build_dataloader
    from titan_recipes.tokenizer import build_tokenizer

    config = ConfigManager().parse_args(["--job.config_file", str(DEBUG_RECIPE / "train.toml"), *overrides])
    inputs, labels = next(iter(build_dataloader(1, 0, build_tokenizer(config), config)))
    return inputs["input"], labels


def test_continued_pretraining_from_hf_weights(tmp_path, args, monkeypatch, trained):
    monkeypatch.chdir(REPO)  # the recipe's relative tokenizer path, as run_train.sh sees it
    hf_dir = tmp_path / "small-llama"
    hf = _save_small_llama(hf_dir)
    assert sorted(p.name for p in hf_dir.glob("*.safetensors")) == ["model.safetensors"]

    # torchtitan's model with the HF directory's weights (torchtitan's adapter) computes HF's function
    titan = build_titan_model(args, titan_state_from_hf(hf_dir, args))
    tokens = torch.randint(0, 2048, (2, 64), generator=torch.Generator().manual_seed(1))
    assert logit_diff(hf, titan, tokens) <= TOLERANCE

    init = ("--checkpoint.initial_load_path", str(hf_dir), "--checkpoint.initial_load_in_hf")
    straight = tmp_path / "from-hf"
    proc = launch(DEBUG_RECIPE, 1, straight, *SHORT, *init)
    assert_ok(proc)
    assert "loading from HF safetensors" in proc.stdout + proc.stderr
    losses = fx.run_losses(straight)
    assert sorted(losses) == [1, 2, 3, 4]

    # step 1's loss is computed before the first update: the HF model's loss on the same batch
    inputs, labels = _first_batch(*SHORT)
    with torch.no_grad():
        logits = hf(inputs).logits
    hf_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1)).item()
    print(f"\nstep-1 loss from HF weights: trainer {losses[1]:.6f}, transformers {hf_loss:.6f}")
    assert abs(losses[1] - hf_loss) <= TOLERANCE
    # a run from torchtitan's own init starts elsewhere: the HF weights were really loaded
    assert abs(losses[1] - fx.run_losses(trained)[1]) > 0.01

    # stop after the step-2 checkpoint and relaunch: the run resumes from its own DCP checkpoint
    resumed = tmp_path / "from-hf-resumed"
    assert_ok(launch(DEBUG_RECIPE, 1, resumed, *SHORT, *init, "--launch.stop_at_step", "2"))
    second = launch(DEBUG_RECIPE, 1, resumed, *SHORT, *init)
    assert_ok(second)
    assert "Training starts at step 3" in second.stdout
    assert fx.run_losses(resumed) == losses  # bitwise, every step
    assert_same_checkpoint(straight / "checkpoint" / "step-4", resumed / "checkpoint" / "step-4")
