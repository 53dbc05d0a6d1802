"""The files of a run directory and the metric keys read back from them, without importing torch.

:mod:`titan_recipes.records` writes these files during a launch; :mod:`titan_recipes.fixtures`, the
``runs`` commands and the check at the end of every ``run_train.sh`` read them. Reading needs only the
standard library, so a command that only reads a run starts in a fraction of a second.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
SUMMARY_FILE = "summary.json"

# Metric keys of a metrics.jsonl row: the one place their names are spelled (torchtitan's logger names the
# first five; titan_recipes.domain_loss writes the per-domain prefixes, ``<prefix><domain>``).
LOSS_KEY = "loss_metrics/global_avg_loss"
TPS_KEY = "throughput(tps)"
"""Tokens per second per device."""
MFU_KEY = "mfu(%)"
"""Model FLOPs utilisation against the device's peak bf16 FLOPS, in percent."""
TFLOPS_KEY = "tflops"
"""Achieved TFLOPS per device."""
PEAK_MEMORY_KEY = "memory/max_reserved(GiB)"
LOSS_DOMAIN_PREFIX = "loss_domain/"
"""Mean loss per token of one domain of a mixture, on logged steps."""
TOKENS_DOMAIN_PREFIX = "tokens_domain/"
"""Tokens of one domain that went into its ``loss_domain/`` mean on a logged step."""
MIXTURE_WEIGHT_PREFIX = "mixture_weight/"
"""Weight of one domain in the chunk being read."""


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """One merged row per step of a ``metrics.jsonl``. Training and validation log separate rows for
    the same step, so rows are merged; a resumed run re-logs steps, so later values win."""
    by_step: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                by_step.setdefault(int(row["step"]), {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def parse_overrides(argv: list[str]) -> dict[str, Any]:
    """The ``--section.key value`` overrides in a training command line, in order: ``{"training.steps":
    "20", "compile.enable": True}`` (a flag with no value is ``True``). ``--job.config_file`` is the
    config itself, not an override, and is left out; ``--job.dump_folder`` (run_train.sh's RUN_DIR) stays."""
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "." in arg:
            key, eq, value = arg[2:].partition("=")
            if not eq:
                takes_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
                value = argv[i + 1] if takes_value else True
                i += takes_value
            if key != "job.config_file":
                overrides[key] = value
        i += 1
    return overrides
