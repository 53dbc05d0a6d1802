"""titan-recipes: reproducible LLM-pretraining recipes on torchtitan 0.2.2."""

from . import cpu as _cpu

# Importing any torchtitan module imports triton via torchtitan.models.moe.kernels; register the
# stand-in when triton is absent (a no-op with triton). See titan_recipes.cpu, pitfall 1.
_cpu.prepare_torchtitan_import()

__version__ = "0.1.0"
