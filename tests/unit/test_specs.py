"""specs.py: the ``recipes.<base>`` TrainSpecs and the flavors they add (Llama-3.2-1B)."""

from __future__ import annotations

import pytest
import torch

import titan_recipes  # noqa: F401  (registers the triton stand-in before torchtitan is imported)
from titan_recipes.errors import ConfigError
from titan_recipes.specs import EXTRA_FLAVORS, register_recipe_spec
from torchtitan.models.llama3 import llama3_args
from torchtitan.protocols.train_spec import get_train_spec


def llama_param_count(dim, n_layers, n_heads, n_kv_heads, vocab, ffn_dim_multiplier, multiple_of) -> int:
    """Parameters of torchtitan's llama3 Transformer, from its shape: untied embedding and output,
    bias-free linears, RMSNorm weights (two per block and a final one), SwiGLU hidden size rounded up
    to ``multiple_of``."""
    head_dim = dim // n_heads
    hidden = int(ffn_dim_multiplier * int(2 * 4 * dim / 3))
    hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
    attention = dim * dim * 2 + dim * n_kv_heads * head_dim * 2  # wq, wo + wk, wv
    feed_forward = 3 * dim * hidden  # w1, w2, w3
    block = attention + feed_forward + 2 * dim
    return vocab * dim * 2 + n_layers * block + dim


def test_llama3_1b_flavor_has_the_llama_3_2_1b_shape():
    spec = get_train_spec(register_recipe_spec("recipes.llama3"))
    args = spec.model_args["1B"]
    with torch.device("meta"):
        model = spec.model_cls(args)
    n = sum(p.numel() for p in model.parameters())
    expected = llama_param_count(2048, 16, 32, 8, 128256, 1.5, 256)
    assert n == expected
    assert round(n / 1e9, 2) == 1.50  # the published "1.5B untied" figure
    assert model.layers["0"].feed_forward.w1.out_features == 8192
    assert args.rope_scaling_args.scaling_factor == 32.0 and args.rope_theta == 500000
    # torchtitan's own flavors are there too, and its dict is untouched
    assert set(llama3_args) < set(spec.model_args) and "1B" not in llama3_args
    assert set(EXTRA_FLAVORS["llama3"]) == set(spec.model_args) - set(llama3_args)


def test_unknown_flavor_lists_the_available_ones():
    spec = get_train_spec(register_recipe_spec("recipes.llama3"))
    with pytest.raises(ConfigError, match=r"model.flavor = '3B' is not a flavor of model.name = 'recipes.llama3'.*'1B'.*'debugmodel'"):
        spec.model_args["3B"]
