"""The llama3_1b recipe's model at full size on CPU (issue 19): one forward and backward pass.

The full-size build on the meta device (1,498,482,688 parameters, the Llama-3.2-1B shape) is checked in
tests/unit/test_specs.py. A training step does not fit a 24 GB machine: AdamW in fp32 holds parameters,
gradients and two moments, 4 x 1.5e9 x 4 bytes = 24 GB before any activation. A forward and backward
pass (no optimizer) needs parameters and gradients, ~12 GB, so this test materialises the real model
(torchtitan's Transformer with the ``1B`` flavor of ``recipes.llama3``, torchtitan's own weight init),
runs batch 1 x 64 tokens through it, backpropagates the cross-entropy loss, and checks that every
parameter received a finite gradient.

Opt-in (``TITAN_FULL_1B=1 pytest tests/unit/test_llama3_1b_full.py``): it allocates ~12 GB and takes
longer than CI's default run allows. It runs in a child process, so the memory is returned at once and
the peak RSS measured is the pass's own.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time

import pytest

FULL_1B = os.environ.get("TITAN_FULL_1B") == "1"

PEAK_RSS_LIMIT_GIB = 14.0
"""The issue's ceiling for this check on a 24 GB machine; measured peak 11.87 GiB (test docstring)."""

CHILD = r"""
import json, math, resource, time
import torch
import titan_recipes  # noqa: F401  (triton stand-in before torchtitan)
from titan_recipes.specs import register_recipe_spec
from torchtitan.protocols.train_spec import get_train_spec

torch.manual_seed(0)
spec = get_train_spec(register_recipe_spec("recipes.llama3"))
args = spec.model_args["1B"]
args.max_seq_len = 64  # what the Trainer sets from training.seq_len (update_from_config)
t0 = time.monotonic()
with torch.device("meta"):
    model = spec.model_cls(args)
model.to_empty(device="cpu")
with torch.no_grad():
    model.init_weights(buffer_device=torch.device("cpu"))
t_init = time.monotonic() - t0
n_params = sum(p.numel() for p in model.parameters())
tokens = torch.randint(0, args.vocab_size, (1, 65))
t1 = time.monotonic()
logits = model(tokens[:, :-1])
loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
loss.backward()
t_pass = time.monotonic() - t1
peak_after_backward = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux -> GiB
grads = [p.grad for p in model.parameters()]
norms = [float(torch.linalg.vector_norm(g)) for g in grads if g is not None]  # no copy of a 1 GB gradient
print(json.dumps({
    "n_params": n_params,
    "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
    "loss": loss.item(),
    "missing_grads": sum(g is None for g in grads),
    "finite_grads": all(math.isfinite(n) for n in norms),  # a NaN or inf anywhere makes its norm non-finite
    "grad_norm": math.sqrt(sum(n * n for n in norms)),
    "peak_rss_after_backward_gib": round(peak_after_backward, 2),
    "init_s": round(t_init, 1),
    "forward_backward_s": round(t_pass, 1),
}))
"""


@pytest.mark.skipif(not FULL_1B, reason="opt-in (~12 GB of memory): TITAN_FULL_1B=1")
def test_full_size_1b_forward_backward_on_cpu():
    """Measured (``-s`` prints it; 2-core x86 CPU shared with three other jobs, torch 2.13.0, so the times
    are inflated): peak RSS 11.87 GiB (5.58 GiB of parameters, as much of gradients, activations and
    the rest); materialising and initialising the weights 74-121 s, forward and backward 51-63 s, the
    child process 195-270 s in all; loss 12.097 (ln 128256 = 11.762), gradient norm 13.57. A first
    version that summed squared gradients in float64 copied the 1 GB embedding gradient and peaked at
    15.8 GiB."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    result.update(peak_rss_gib=round(peak_gib, 2), wall_s=round(time.monotonic() - start, 1))
    print(json.dumps(result))

    assert result["n_params"] == 1_498_482_688 and result["dtypes"] == ["torch.float32"]
    assert math.isfinite(result["loss"])
    # at torchtitan's init the logits are small: the loss is near that of a uniform guess over the vocabulary
    # (measured 12.097 against ln(128256) = 11.762)
    assert abs(result["loss"] - math.log(128256)) < 1.0, result
    assert result["missing_grads"] == 0 and result["finite_grads"] and result["grad_norm"] > 0
    assert peak_gib < PEAK_RSS_LIMIT_GIB, result
