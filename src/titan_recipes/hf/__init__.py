"""From a run to a HuggingFace model and back (issue 17).

- :mod:`.config`: a llama3 flavor's ``TransformerModelArgs`` <-> a ``LlamaForCausalLM`` ``config.json``.
- :mod:`.export`: :func:`~titan_recipes.hf.export.export_hf` turns a run's DCP checkpoint (full or
  weights-only, any process count) into an HF model directory, on CPU without a process group
  (``titan-recipes export hf RUN_DIR OUT_DIR``).
- :mod:`.load`: the way back, for continued pretraining: torchtitan's own
  ``checkpoint.initial_load_path`` + ``checkpoint.initial_load_in_hf``, and the checks that an HF
  directory fits the recipe's flavor before a launch spends time on it.

The weight renaming and the q/k permutation for HF's rotary layout are torchtitan's
``Llama3StateDictAdapter`` (the same code torchtitan's ``checkpoint.last_save_in_hf`` uses), so an
export and a torchtitan HF save agree by construction.
"""
