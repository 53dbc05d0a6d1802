"""Imported first by :mod:`titan_recipes.inject`: the CPU fixes of :mod:`titan_recipes.cpu`, which must
precede every torchtitan import, or the reason they can no longer apply."""

import sys

from .. import cpu

COPIES_DEVICE = ("torchtitan.train", "torchtitan.components.metrics", "torchtitan.distributed.utils")
"""torchtitan modules that copy the device type on import (titan_recipes.cpu, pitfall 2)."""

EARLY = [name for name in COPIES_DEVICE if name in sys.modules]

if cpu.cuda_available() or not EARLY:
    cpu.prepare_device()
    NOT_READY = ""
else:  # the components still work; training would run with device "cuda" and fail, so it is refused
    NOT_READY = (
        f"titan_recipes.inject was imported after {EARLY} on a machine without a GPU: they copied torchtitan's "
        f"device type before the CPU fixes of titan_recipes.cpu could apply. Import titan_recipes.inject "
        f"before anything from torchtitan (the first import of the script)."
    )
