"""Downstream evaluation of a run's checkpoints with lm-evaluation-harness (``titan-recipes eval``).

- :mod:`.tasks`: the task shipped with the repository (``assets/eval/tasks``) and lm-eval's TaskManager
  that finds it beside lm-eval's own tasks (hellaswag, arc_easy, ...);
- :mod:`.steps`: which checkpoint steps of a run to evaluate (``--steps all|N,M``);
- :mod:`.results`: the scores as rows of ``RUN_DIR/eval.jsonl``;
- :mod:`.plot`: ``RUN_DIR/eval.png``, loss beside each score against step;
- :mod:`.runner`: export each step to a HuggingFace directory and run lm-eval's HF backend on it.

Only :mod:`.runner` imports lm-eval, torch and transformers; the others need the standard library
(and matplotlib to plot), so the CLI parser and the unit tests of the small parts stay fast.
"""
