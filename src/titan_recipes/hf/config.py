"""A llama3 flavor as a HuggingFace ``LlamaForCausalLM`` ``config.json``, and the way back.

Every number comes from the flavor's ``TransformerModelArgs``, never from a table of known models, so a
flavor added to :data:`titan_recipes.specs.EXTRA_FLAVORS` exports without changes here. Two rules of
torchtitan's model that HF's config spells differently:

- the FFN width is not stored: torchtitan's ``FeedForward`` derives it from ``dim`` (2/3 of 4 * dim,
  times ``ffn_dim_multiplier``, rounded up to ``multiple_of``); HF stores it as ``intermediate_size``;
- torchtitan's llama3 ``precompute_freqs_cis`` *always* applies the Llama 3 RoPE frequency scaling (its
  ``RoPEScalingArgs`` default is factor 8), so every flavor, debugmodel included, exports
  ``rope_scaling = {"rope_type": "llama3", ...}``; without it HF would rotate with other frequencies
  and the logits would differ.

``rope_theta`` and ``rope_scaling`` are written in the classic form (as meta-llama's own config.json
has them), which transformers 4 and 5 and vLLM all read.
"""

import dataclasses
import math
from typing import Any

from ..errors import ConfigError

DTYPES = ("float32", "bfloat16")
"""Weight dtypes an export writes (``--dtype``); training checkpoints here are fp32."""


def intermediate_size(args: Any) -> int:
    """torchtitan ``FeedForward``'s hidden width for ``args`` (llama3 ``TransformerModelArgs``)."""
    hidden = int(2 * (4 * args.dim) / 3)
    if args.ffn_dim_multiplier is not None:
        hidden = int(args.ffn_dim_multiplier * hidden)
    return args.multiple_of * ((hidden + args.multiple_of - 1) // args.multiple_of)


def hf_config(args: Any, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
              dtype: str = "float32") -> dict[str, Any]:
    """The ``config.json`` dict of a ``LlamaForCausalLM`` with the same weights and the same forward
    pass as torchtitan's llama3 ``Transformer(args)``."""
    if dtype not in DTYPES:
        raise ConfigError(f"export dtype '{dtype}' is not supported; use one of {list(DTYPES)} (--dtype).")
    if getattr(args, "attn_type", "sdpa") != "sdpa" or getattr(args, "attn_mask_type", "causal") != "causal":
        raise ConfigError(
            f"flavor with attn_type='{args.attn_type}', attn_mask_type='{args.attn_mask_type}': a plain "
            f"LlamaForCausalLM attends causally over the whole sequence, so only sdpa/causal flavors export "
            f"with equal logits. Export a run of the sdpa flavor of the same shape."
        )
    if args.dim % args.n_heads:
        raise ConfigError(f"flavor dim {args.dim} is not a multiple of n_heads {args.n_heads}.")
    rope = args.rope_scaling_args
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": intermediate_size(args),
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads or args.n_heads,
        "head_dim": args.dim // args.n_heads,
        "hidden_act": "silu",
        "vocab_size": args.vocab_size,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": float(args.rope_theta),
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": float(rope.scaling_factor),
            "low_freq_factor": float(rope.low_freq_factor),
            "high_freq_factor": float(rope.high_freq_factor),
            "original_max_position_embeddings": int(rope.original_max_position_embeddings),
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,  # torchtitan's llama3 has its own output layer
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def _rope_fields(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, llama3 scaling dict or None) from a classic (``rope_theta`` + ``rope_scaling``) or a
    transformers-5 (``rope_parameters``) config.json."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling") or (params if params.get("rope_type") not in (None, "default") else None)
    return float(theta), scaling


def flavor_mismatches(args: Any, config: dict[str, Any]) -> list[str]:
    """The fields where HF ``config`` (a parsed config.json) and flavor ``args`` describe different
    models, as ``"name: hf X, flavor Y"`` lines; empty when torchtitan can load the weights and compute
    the same function. Tied input/output embeddings (Llama-3.2-1B) are not a mismatch: torchtitan's
    untied output layer starts as a copy of the embedding (:func:`titan_recipes.hf.load.prepare_hf_init`)."""
    if config.get("model_type") != "llama":
        return [f"model_type: hf {config.get('model_type')!r}, flavor 'llama'"]
    ours = hf_config(args)
    out = []
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if config.get(key) != ours[key]:
            out.append(f"{key}: hf {config.get(key)}, flavor {ours[key]}")
    kv = config.get("num_key_value_heads") or config.get("num_attention_heads")
    if kv != ours["num_key_value_heads"]:
        out.append(f"num_key_value_heads: hf {kv}, flavor {ours['num_key_value_heads']}")
    head_dim = config.get("head_dim") or ours["head_dim"]
    if head_dim != ours["head_dim"]:
        out.append(f"head_dim: hf {head_dim}, flavor {ours['head_dim']}")
    if not math.isclose(config.get("rms_norm_eps", 1e-6), ours["rms_norm_eps"]):
        out.append(f"rms_norm_eps: hf {config.get('rms_norm_eps')}, flavor {ours['rms_norm_eps']}")
    theta, scaling = _rope_fields(config)
    if not math.isclose(theta, ours["rope_theta"]):
        out.append(f"rope_theta: hf {theta}, flavor {ours['rope_theta']}")
    want = ours["rope_scaling"]
    if not scaling or scaling.get("rope_type", scaling.get("type")) != "llama3":
        out.append(f"rope_scaling: hf {scaling}, flavor {want} (torchtitan's llama3 always scales RoPE)")
    else:
        for key in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
            if not math.isclose(float(scaling.get(key, math.nan)), float(want[key])):
                out.append(f"rope_scaling.{key}: hf {scaling.get(key)}, flavor {want[key]}")
    return out  # tied embeddings are no mismatch: the output layer starts as a copy (load.prepare_hf_init)


def flavor_args(model_name: str, flavor: str) -> Any:
    """A copy of the ``TransformerModelArgs`` of ``model.flavor`` in TrainSpec ``model.name`` (our
    ``recipes.<base>`` specs included); ConfigError naming the choices when it does not exist."""
    from torchtitan.protocols.train_spec import get_train_spec

    from ..specs import register_recipe_spec

    try:
        spec = get_train_spec(register_recipe_spec(model_name))
    except (ValueError, ModuleNotFoundError) as e:
        raise ConfigError(f"model.name = '{model_name}' is not a TrainSpec torchtitan knows ({e}).") from None
    if flavor not in spec.model_args:
        raise ConfigError(
            f"model.flavor = '{flavor}' is not a flavor of model.name = '{model_name}'. "
            f"Available flavors: {sorted(spec.model_args)}."
        )
    args = spec.model_args[flavor]
    if spec.state_dict_adapter is None or not hasattr(args, "rope_scaling_args"):
        raise ConfigError(
            f"model.name = '{model_name}' (flavor {flavor}) is not a llama3 model; the HF export knows "
            f"llama3 flavors only (recipes.llama3)."
        )
    return dataclasses.replace(args)
