"""config.json derivation from our llama3 flavors: the numbers HF needs to compute torchtitan's forward."""

from __future__ import annotations

import pytest

from titan_recipes.errors import ConfigError
from titan_recipes.hf.config import flavor_args, flavor_mismatches, hf_config, intermediate_size


def test_debugmodel_config():
    config = hf_config(flavor_args("recipes.llama3", "debugmodel"), bos_token_id=0, eos_token_id=1)
    assert config["hidden_size"] == 256 and config["num_hidden_layers"] == 6
    assert config["num_attention_heads"] == 16 and config["num_key_value_heads"] == 16
    assert config["intermediate_size"] == 768  # int(2 * 1024 / 3) = 682, rounded up to a multiple of 256
    assert config["vocab_size"] == 2048 and config["rope_theta"] == 500000.0
    # torchtitan scales RoPE for every flavor (RoPEScalingArgs defaults: factor 8)
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert config["tie_word_embeddings"] is False
    assert (config["bos_token_id"], config["eos_token_id"], config["torch_dtype"]) == (0, 1, "float32")


def test_1b_config_is_llama_3_2_1b():
    """The numbers of meta-llama/Llama-3.2-1B's config.json (apart from its tied embeddings)."""
    config = hf_config(flavor_args("recipes.llama3", "1B"), dtype="bfloat16")
    assert config["intermediate_size"] == 8192
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["num_key_value_heads"], config["head_dim"]) == (2048, 16, 32, 8, 64)
    assert config["vocab_size"] == 128256 and config["rms_norm_eps"] == 1e-5
    assert config["rope_theta"] == 500000.0 and config["max_position_embeddings"] == 131072
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert config["torch_dtype"] == "bfloat16"


def test_8b_intermediate_size():
    args = flavor_args("recipes.llama3", "8B")
    assert intermediate_size(args) == 14336
    assert hf_config(args)["num_key_value_heads"] == 8


def test_transformers_reads_the_config_as_written():
    from transformers import LlamaConfig

    ours = hf_config(flavor_args("recipes.llama3", "1B"))
    config = LlamaConfig(**{k: v for k, v in ours.items() if k not in ("architectures", "model_type", "torch_dtype")})
    assert config.intermediate_size == 8192 and config.head_dim == 64
    assert config.rope_parameters["rope_type"] == "llama3" and config.rope_parameters["factor"] == 32.0
    assert config.rope_parameters["rope_theta"] == 500000.0


def test_mismatches_name_the_fields():
    args = flavor_args("recipes.llama3", "1B")
    assert flavor_mismatches(args, hf_config(args)) == []
    other = hf_config(flavor_args("recipes.llama3", "debugmodel"))
    lines = flavor_mismatches(args, other)
    assert "hidden_size: hf 256, flavor 2048" in lines
    assert "rope_scaling.factor: hf 8.0, flavor 32.0" in lines
    tied = {**hf_config(args), "tie_word_embeddings": True}  # Llama-3.2-1B: loadable, output = embedding
    assert flavor_mismatches(args, tied) == []
    v5 = {k: v for k, v in hf_config(args).items() if k not in ("rope_theta", "rope_scaling")}
    v5["rope_parameters"] = {**hf_config(args)["rope_scaling"], "rope_theta": 500000.0}  # transformers 5 form
    assert flavor_mismatches(args, v5) == []
    assert flavor_mismatches(args, {**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}})


def test_unknown_flavor_and_unsupported_attention():
    with pytest.raises(ConfigError, match=r"model.flavor = '3B' is not a flavor of model.name = 'recipes.llama3'.*debugmodel"):
        flavor_args("recipes.llama3", "3B")
    with pytest.raises(ConfigError, match="only sdpa/causal flavors export"):
        hf_config(flavor_args("recipes.llama3", "debugmodel_flex_attn"))
    with pytest.raises(ConfigError, match=r"dtype 'float16' is not supported.*--dtype"):
        hf_config(flavor_args("recipes.llama3", "debugmodel"), dtype="float16")
