"""Does an HF export compute what the torchtitan model computes? Logits and greedy continuations of
both, side by side (the checks issue 17 asks for, usable on any export by hand:
``logit_diff(hf_model, titan_model, tokens)``).

Both models run in fp32 on CPU in eval mode; HF's attention path differs from torchtitan's
(eager/sdpa with a mask vs ``is_causal``), so equal weights agree to float rounding (~1e-6 for
debugmodel), not bitwise. Greedy decoding re-runs the whole prefix each step on the torchtitan side (it
has no KV cache) and uses HF ``generate(do_sample=False)`` with its cache on the other, so an agreement
also covers HF's cached decoding path.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def logit_diff(hf_model: torch.nn.Module, titan_model: torch.nn.Module, tokens: torch.Tensor) -> float:
    """max |HF logits - torchtitan logits| over a (batch, seq) batch of token ids."""
    return (hf_model(tokens).logits.float() - titan_model(tokens).float()).abs().max().item()


@torch.no_grad()
def titan_greedy(titan_model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``prompt`` (1, n) followed by ``new_tokens`` argmax tokens of the torchtitan model."""
    seq = prompt
    for _ in range(new_tokens):
        nxt = titan_model(seq)[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, nxt], dim=1)
    return seq


@torch.no_grad()
def hf_greedy(hf_model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """``prompt`` (1, n) followed by ``new_tokens`` tokens of HF ``generate(do_sample=False)``; the
    model's eos does not stop it, so both sides produce the same number of tokens."""
    return hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                             pad_token_id=0)


def load_hf(out_dir) -> tuple[torch.nn.Module, dict, list[str]]:
    """``AutoModelForCausalLM.from_pretrained(out_dir)`` in eval mode, with its loading info and every
    warning transformers logged or raised meanwhile. transformers 5 logs its load report (MISSING /
    UNEXPECTED weights) on its own ``transformers`` logger, which does not propagate to the root logger,
    so a handler goes on that logger itself."""
    import logging
    import warnings

    from transformers import AutoModelForCausalLM

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    library = logging.getLogger("transformers")
    library.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = AutoModelForCausalLM.from_pretrained(out_dir, output_loading_info=True)
    finally:
        library.removeHandler(handler)
    messages += [str(w.message) for w in caught]
    return model.eval(), info, messages


def weight_complaints(messages: list[str]) -> list[str]:
    """The messages of :func:`load_hf` about missing, unexpected or newly initialized weights."""
    words = ("missing", "unexpected", "newly initialized", "not initialized", "mismatch")
    return [m for m in messages if any(w in m.lower() for w in words)]
