"""export_hf on DCP checkpoints written here (full and weights-only), loaded back by transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from titan_recipes.errors import ConfigError, DataError
from titan_recipes.hf.config import flavor_args
from titan_recipes.hf.export import export_hf
from titan_recipes.hf.load import build_titan_model, titan_state_from_hf
from titan_recipes.hf.parity import hf_greedy, load_hf, logit_diff, titan_greedy, weight_complaints

TOKENIZER_DIR = Path(__file__).resolve().parents[3] / "assets" / "tokenizers" / "shakespeare-bpe-2048"


def _random_state(seed: int) -> dict[str, torch.Tensor]:
    from torchtitan.models.llama3 import Transformer

    torch.manual_seed(seed)
    model = Transformer(flavor_args("recipes.llama3", "debugmodel"))
    with torch.no_grad():
        model.init_weights()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as a launch leaves it: run.json (config + git SHA), a full checkpoint at step 2
    (model + optimizer-like + train state entries) and a weights-only one at step 4."""
    run = tmp_path_factory.mktemp("runs") / "debug-20990101-000000"
    config = {"model": {"name": "recipes.llama3", "flavor": "debugmodel", "hf_assets_path": str(TOKENIZER_DIR)},
              "checkpoint": {"folder": "checkpoint"}, "job": {"config_file": "recipes/debug/train.toml"}}
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"config": config, "git": {"sha": "0123abc", "dirty": False},
                                              "versions": {"torchtitan": "0.2.2"}}))
    full = _random_state(1)
    extra = {"optimizer.state.tok_embeddings.weight.exp_avg": torch.randn(2048, 256), "train_state.step": torch.tensor(2)}
    dcp.save({**full, **extra}, checkpoint_id=str(run / "checkpoint" / "step-2"), no_dist=True)
    dcp.save(_random_state(2), checkpoint_id=str(run / "checkpoint" / "step-4"), no_dist=True)
    return run


def _load_hf(out: Path):
    model, info, messages = load_hf(out)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert weight_complaints(messages) == []
    return model


def test_newest_weights_only_checkpoint_exports_with_equal_logits(run_dir, tmp_path):
    out = export_hf(run_dir, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    readme = (out / "README.md").read_text()
    assert "debug-20990101-000000" in readme and "step 4" in readme and "0123abc" in readme
    assert json.loads((out / "generation_config.json").read_text()) == {"bos_token_id": 0, "eos_token_id": 1}
    hf = _load_hf(out)
    args = flavor_args("recipes.llama3", "debugmodel")
    titan = build_titan_model(args, _random_state(2))
    tokens = torch.randint(0, 2048, (3, 64), generator=torch.Generator().manual_seed(0))
    assert logit_diff(hf, titan, tokens) <= 1e-4
    prompt = tokens[:1, :8]
    assert torch.equal(hf_greedy(hf, prompt, 16), titan_greedy(titan, prompt, 16))
    # and back: the HF directory gives torchtitan exactly the weights it came from
    back = titan_state_from_hf(out, args)
    assert all(torch.equal(back[k], v) for k, v in _random_state(2).items())


def test_full_checkpoint_exports_its_model_part(run_dir, tmp_path):
    out = export_hf(run_dir, tmp_path / "hf", step=2, max_shard_size="4MB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # sharded above max_shard_size
    assert "lm_head.weight" in index["weight_map"] and not any("optimizer" in k for k in index["weight_map"])
    back = titan_state_from_hf(out, flavor_args("recipes.llama3", "debugmodel"))
    assert all(torch.equal(back[k], v) for k, v in _random_state(1).items())


def test_bfloat16_export(run_dir, tmp_path):
    from safetensors.torch import load_file

    out = export_hf(run_dir, tmp_path / "hf", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(str(out / "model.safetensors")).values()} == {torch.bfloat16}


def test_errors_name_the_file_and_the_fix(run_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"--step 3: .*step-3 is not a complete checkpoint.*\[2, 4\]"):
        export_hf(run_dir, tmp_path / "a", step=3)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    with pytest.raises(ConfigError, match="is not empty; .*--overwrite"):
        export_hf(run_dir, tmp_path / "b")
    export_hf(run_dir, tmp_path / "b", overwrite=True)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="neither run.json nor config.json"):
        export_hf(empty, tmp_path / "c")
    (empty / "config.json").write_text(json.dumps({"model": {"name": "recipes.llama3", "flavor": "debugmodel"}}))
    with pytest.raises(DataError, match=r"no checkpoint in .*checkpoint.enable = true"):
        export_hf(empty, tmp_path / "c")
    (empty / "config.json").write_text(json.dumps({"model": {"name": "recipes.llama3", "flavor": "tiny"}}))
    with pytest.raises(ConfigError, match="model.flavor = 'tiny' is not a flavor"):
        export_hf(empty, tmp_path / "c")


def test_a_checkpoint_of_another_flavor_is_refused(run_dir, tmp_path):
    other = tmp_path / "run"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model": {"name": "recipes.llama3", "flavor": "8B"}}))
    (other / "checkpoint").symlink_to(run_dir / "checkpoint")
    with pytest.raises(DataError, match="written for another model or flavor"):
        export_hf(other, tmp_path / "hf")


def test_cli(run_dir, tmp_path, capsys):
    from titan_recipes.cli import main

    assert main(["export", "hf", str(run_dir), str(tmp_path / "hf"), "--step", "2", "--dtype", "bfloat16"]) == 0
    assert "exported" in capsys.readouterr().out
    assert main(["export", "hf", str(run_dir), str(tmp_path / "hf")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_a_broken_export_is_caught_by_the_load_check(run_dir, tmp_path):
    """The no-warnings check can fail: a missing and an unexpected weight show in load_hf's messages."""
    from safetensors.torch import load_file, save_file

    out = export_hf(run_dir, tmp_path / "hf")
    weights = load_file(str(out / "model.safetensors"))
    weights["extra.weight"] = weights.pop("model.norm.weight")
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    _, info, messages = load_hf(out)
    assert info["missing_keys"] == {"model.norm.weight"} and info["unexpected_keys"] == {"extra.weight"}
    assert weight_complaints(messages)


# -- HF -> torchtitan: what checkpoint.initial_load_in_hf reads ---------------------------------------------


def _tied_bf16_llama(directory: Path):
    """A debugmodel-shaped Llama saved as Llama-3.2-1B ships: bf16, tied embeddings (no lm_head.weight)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from titan_recipes.hf.config import hf_config

    fields = {k: v for k, v in hf_config(flavor_args("recipes.llama3", "debugmodel")).items()
              if k not in ("architectures", "model_type", "torch_dtype")}
    torch.manual_seed(3)
    model = LlamaForCausalLM(LlamaConfig(**{**fields, "tie_word_embeddings": True})).to(torch.bfloat16)
    model.save_pretrained(directory)
    return model


def test_a_tied_model_needs_hf_init_then_loads_by_torchtitans_path(tmp_path):
    from safetensors import safe_open

    from titan_recipes.cli import main

    args = flavor_args("recipes.llama3", "debugmodel")
    from transformers import AutoModelForCausalLM

    _tied_bf16_llama(tmp_path / "tied")
    # fp32 from the saved bf16 weights, RoPE buffers computed in fp32 (a .float() of the bf16 model would
    # keep bf16-rounded inv_freq, a 1e-4 difference of its own)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "tied", dtype=torch.float32).eval()
    with safe_open(str(tmp_path / "tied" / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    with pytest.raises(ConfigError, match=r"no lm_head.weight.*titan-recipes export hf-init"):
        titan_state_from_hf(tmp_path / "tied", args)
    assert main(["export", "hf-init", str(tmp_path / "tied"), str(tmp_path / "init"), "--flavor", "debugmodel"]) == 0
    state = titan_state_from_hf(tmp_path / "init", args)
    assert state["output.weight"].dtype == torch.float32  # read into the fp32 model, as a run does
    assert torch.equal(state["output.weight"], state["tok_embeddings.weight"])
    titan = build_titan_model(args, state)
    tokens = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    assert logit_diff(hf, titan, tokens) <= 1e-4


def test_hf_init_refuses_another_flavor(tmp_path, capsys):
    from titan_recipes.cli import main

    _tied_bf16_llama(tmp_path / "tied")
    assert main(["export", "hf-init", str(tmp_path / "tied"), str(tmp_path / "init"), "--flavor", "1B"]) == 2
    err = capsys.readouterr().err
    assert "does not describe model.flavor = '1B'" in err and "hidden_size: hf 256, flavor 2048" in err


def test_the_trainer_refuses_an_hf_initial_load_of_another_model(tmp_path):
    """checkpoint.initial_load_in_hf: torchtitan loads by name, so the trainer checks the directory first
    (titan_recipes.hf.load.check_initial_load, called before torchtitan's Trainer is built)."""
    from types import SimpleNamespace

    from titan_recipes.hf.load import check_initial_load

    _tied_bf16_llama(tmp_path / "tied")
    assert main_ok(["export", "hf-init", str(tmp_path / "tied"), str(tmp_path / "init"), "--flavor", "debugmodel"])
    config = json.loads((tmp_path / "init" / "config.json").read_text())

    def job(path, flavor="debugmodel", in_hf=True):
        return SimpleNamespace(model=SimpleNamespace(name="recipes.llama3", flavor=flavor), checkpoint=SimpleNamespace(
            enable=True, initial_load_in_hf=in_hf, initial_load_path=str(path)))

    check_initial_load(job(tmp_path / "init"))  # the same model: passes
    check_initial_load(job(tmp_path / "nowhere", in_hf=False))  # not an HF load: not checked
    config["rope_theta"] = 10000.0
    (tmp_path / "init" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"does not describe model.flavor = 'debugmodel'.*rope_theta"):
        check_initial_load(job(tmp_path / "init"))


def main_ok(argv) -> bool:
    from titan_recipes.cli import main

    return main(argv) == 0
