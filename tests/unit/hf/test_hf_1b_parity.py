"""The 1B flavor's shape (Llama-3.2-1B: GQA 32/8 heads, FFN 8192, RoPE scaling 32): a random init exported
and loaded by transformers gives torchtitan's logits. Memory: two fp32 copies of 1.5B parameters (12 GB)."""

from __future__ import annotations

import gc
import json
import time

import pytest
import torch

from titan_recipes.hf.config import flavor_args
from titan_recipes.hf.export import prepare_out_dir, to_hf, write_hf_dir
from titan_recipes.hf.parity import load_hf, logit_diff, weight_complaints


@pytest.mark.slow
def test_1b_shape_export_has_equal_logits(tmp_path):
    from torchtitan.models.llama3 import Transformer

    args = flavor_args("recipes.llama3", "1B")
    torch.manual_seed(0)
    with torch.device("meta"):
        titan = Transformer(args)
    titan.to_empty(device="cpu")
    with torch.no_grad():
        titan.init_weights(buffer_device=torch.device("cpu"))
    titan.eval()

    out = tmp_path / "hf"
    begin = time.monotonic()
    prepare_out_dir(out, overwrite=False)
    hf_state = to_hf(args, titan.state_dict())  # shares storage with the model except the permuted q/k
    write_hf_dir(out, args, hf_state, max_shard_size="5GB")
    seconds = time.monotonic() - begin
    del hf_state
    gc.collect()
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    print(f"\n1B-shape export: {seconds:.1f} s for {size / 1e9:.2f} GB of fp32 safetensors")
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) == 16 * 9 + 3

    hf, info, messages = load_hf(out)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert weight_complaints(messages) == []
    tokens = torch.randint(0, args.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    diff = logit_diff(hf, titan, tokens)
    print(f"1B-shape max |logit diff| = {diff:.3g}")
    assert diff <= 1e-4
