"""The steps of ``nox -s gpu_check`` (``scripts/gpu_check.py``): their command lines, targets and budgets.

In order, each under ``timeout`` with its own budget, the whole inside ``--budget-s`` (6 minutes):

(a) ``fixtures``: every recipe's debug-size config (:data:`FIXTURE_RECIPES`, 20 steps, its committed
    TOML unchanged) on one GPU. With an entry for this GPU's key (``h100-torch2.11.0+cu130-1``) the run is
    compared with it; without one, two runs are made and :func:`titan_recipes.gpu_check_report.record_fixture`
    writes the entry (tolerance from their spread) into the results file. The recipes run side by side
    (small models; their two runs one after the other, as both prepare the recipe's data).
(b) ``1b-random`` and ``1b-mds``: the 1B flavor at 4 x 4096, bf16 + compile, :data:`THROUGHPUT_STEPS`
    steps, on uniform random token ids and on MDS shards of random ids written there (no download):
    tok/s, MFU, peak memory, and the ratio MDS / random (the loader's cost; target >= 0.98).
(c) ``1b-float8``: the same on random tokens with ``model.converters = ["quantize.linear.float8"]``,
    when torchao imports.

The 1B runs read a TOML derived from ``recipes/llama3_1b/train.toml`` (:func:`llama_1b_toml`) that
changes only the tokenizer (the committed shakespeare-bpe-2048: the 1B flavor's vocabulary is fixed at
128,256 by the flavor, so the tokenizer only bounds the ids, and a node needs no Llama-3 download), the
MDS directory and, for (c), the converter line the recipe keeps commented out.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
FIXTURE_RECIPES = {
    "recipes/debug": "train.toml",
    "recipes/debug_mds": "train.toml",
    "recipes/blendcorpus": "train.toml",
    "recipes/mixtera_slimpajama": "train.toml",
    "recipes/llama3_1b": "smoke.toml",
}
"""recipe -> its debug-size config (llama3_1b's run_train.sh picks train.toml when a GPU is visible, so
smoke.toml is named explicitly). Their CPU fixture entries were recorded from these files."""
THROUGHPUT_STEPS = 30
THROUGHPUT_WARMUP = 10
"""Logged steps left out of the 1B medians: compilation and autotuning land in the first ones."""
BATCH, SEQ_LEN = 4, 4096
MDS_SAMPLES = 256
"""Samples of the synthetic MDS set: more than the 30 x 4 a run reads (4.2 MB of int32 ids)."""
MDS_VOCAB = 2048
"""Ids below the tokenizer's size, as the random loader draws them: the two runs differ only in the loader."""
TOKENIZER = "assets/tokenizers/shakespeare-bpe-2048"
FLOAT8 = "quantize.linear.float8"

TARGETS = {
    "1b-random": ("tok/s >= 57,800", lambda r: r.get("tokens_per_s"), 57_800.0),
    "1b-mds": ("MDS / random >= 0.98", lambda r: r.get("ratio_to_random"), 0.98),
    "1b-float8": ("tok/s >= 65,000", lambda r: r.get("tokens_per_s"), 65_000.0),
}
"""step -> (target text, the value it judges, minimum). The tok/s floors are one H100's (FACTS: vanilla
torchtitan 0.2.2, 1B random tokens, bf16 + compile, 57.8k tok/s; float8 aim 65k); an H200 must reach
them too (same bf16 peak, faster memory)."""

BUDGETS_S = {"install": 60, "fixtures": 110, "1b-random": 120, "1b-mds": 90, "1b-float8": 110}
"""Seconds each step may take (its ``timeout``); the sum exceeds the 360 s total on purpose: a step
gets min(its budget, what is left), so a slow compile eats the last step's time, not the total."""


@dataclass
class Launch:
    """One ``run_train.sh`` launch: what to run, in which environment, writing where."""

    step: str
    recipe: str
    run_dir: Path
    overrides: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def command(self, repo: Path, timeout_s: float) -> list[str]:
        """Under ``timeout`` (TERM, then KILL 15 s later): torchrun forwards TERM to its workers."""
        return ["timeout", "-k", "15", f"{max(1, int(timeout_s))}", str(repo / self.recipe / "run_train.sh"),
                *self.overrides]

    def environment(self, python: str, site: Path | None) -> dict[str, str]:
        env = {"NGPU": "1", "RUN_DIR": str(self.run_dir), "PYTHON": python, "LOG_RANK": "0",
               "TITAN_RECIPES_NO_FIXTURE_CHECK": "1", **self.env}
        if site is not None:
            env["PYTHONPATH"] = search_path(site)
        return env

    def display(self, repo: Path, python: str, site: Path | None, timeout_s: float) -> str:
        env = self.environment(python, site)
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(self.command(repo, timeout_s))


def search_path(site: Path, repo: Path = REPO) -> str:
    """``PYTHONPATH`` of every step: titan-recipes from the checkout (it finds the recipes' assets beside
    its own files), then the installed wheelhouse; the node's own packages come after both."""
    return f"{repo / 'src'}:{site}"


def fixture_launches(out: Path, repeats: int, recipes: dict[str, str] = FIXTURE_RECIPES,
                     overrides: list[str] | None = None) -> list[list[Launch]]:
    """Per recipe, its ``repeats`` launches (run one after the other); the recipes run side by side."""
    groups = []
    for recipe, config in recipes.items():
        name = Path(recipe).name
        groups.append([
            Launch("fixtures", recipe, out / "runs" / f"{name}-r{i}", list(overrides or []),
                   {"CONFIG_FILE": str(REPO / recipe / config)})
            for i in range(repeats)
        ])
    return groups


def llama_1b_toml(mds_dir: Path, float8: bool, repo: Path = REPO) -> str:
    """recipes/llama3_1b/train.toml with the tokenizer, the MDS directory and (``float8``) the float8
    converter changed; a ConfigError if the recipe no longer has the lines this edits."""
    source = repo / "recipes" / "llama3_1b" / "train.toml"
    text = source.read_text()
    edits = [
        ('hf_assets_path = "assets/hf/Llama-3.2-1B"', f'hf_assets_path = "{repo / TOKENIZER}"'),
        ('local = "data/llama3_1b/train"', f'local = "{mds_dir}"'),
    ]
    if float8:
        edits.append((f'# converters = ["{FLOAT8}"]', f'converters = ["{FLOAT8}"]'))
    for old, new in edits:
        if text.count(old) != 1:
            raise ConfigError(f"{source} no longer has the line `{old}` exactly once, which the GPU check edits; "
                              "update titan_recipes.gpu_check_steps.llama_1b_toml to the recipe's new form.")
        text = text.replace(old, new)
    header = f"# Written by scripts/gpu_check.py from {source.relative_to(repo)}: tokenizer, MDS directory{', float8' if float8 else ''}.\n"
    return header + text


def throughput_overrides(steps: int = THROUGHPUT_STEPS, dataset: str | None = None) -> list[str]:
    """Every step logged, no checkpoint, a short warm-up so the learning rate moves in 30 steps."""
    extra = ["--training.dataset", dataset] if dataset else []
    return ["--training.steps", str(steps), "--metrics.log_freq", "1", "--checkpoint.no-enable",
            "--lr_scheduler.warmup_steps", "5", "--training.local_batch_size", str(BATCH),
            "--training.seq_len", str(SEQ_LEN), *extra]


def throughput_launches(out: Path, steps: int = THROUGHPUT_STEPS, float8: bool = True) -> list[Launch]:
    """(b) random and MDS, (c) float8 on random tokens; their TOMLs are ``out/llama3_1b_*.toml``."""
    launches = [
        Launch("1b-random", "recipes/llama3_1b", out / "runs" / "1b-random", throughput_overrides(steps, "random"),
               {"CONFIG_FILE": str(out / "llama3_1b_bf16.toml")}),
        Launch("1b-mds", "recipes/llama3_1b", out / "runs" / "1b-mds", throughput_overrides(steps),
               {"CONFIG_FILE": str(out / "llama3_1b_bf16.toml")}),
    ]
    if float8:
        launches.append(Launch("1b-float8", "recipes/llama3_1b", out / "runs" / "1b-float8",
                               throughput_overrides(steps, "random"), {"CONFIG_FILE": str(out / "llama3_1b_float8.toml")}))
    return launches


def write_1b_tomls(out: Path, mds_dir: Path) -> list[Path]:
    paths = []
    for name, float8 in (("llama3_1b_bf16.toml", False), ("llama3_1b_float8.toml", True)):
        path = Path(out) / name
        path.write_text(llama_1b_toml(mds_dir, float8))
        paths.append(path)
    return paths


def mds_command(python: str, mds_dir: Path) -> list[str]:
    """Write the synthetic MDS set with streaming's MDSWriter (titan_recipes.bench.write_synthetic_mds)."""
    code = ("from titan_recipes.bench import write_synthetic_mds as w; "
            f"print(w({str(mds_dir)!r}, samples={MDS_SAMPLES}, seq_len={SEQ_LEN}, vocab_size={MDS_VOCAB}))")
    return [python, "-c", code]


def import_check_command(python: str, modules: list[str]) -> list[str]:
    """Import ``modules`` and print where each came from (``name=path`` per line), then one ``PROBE {json}``
    line: CUDA visible, the device as run.json names it, torch's version, whether torchao imports (the
    float8 step). ``streaming`` goes through titan_recipes' own import
    (:func:`titan_recipes.data.mds.compat.import_streaming`: its package ``__init__`` imports torchvision,
    which MDS never needs). One interpreter for all: each start imports torch."""
    code = ("import importlib, json, sys, torch\nfrom titan_recipes.data.mds.compat import import_streaming\n"
            "from titan_recipes.records import device_description\n"
            f"for m in {modules!r}:\n"
            "    if m == 'streaming':\n"
            "        import_streaming()\n"
            "        print(m + '=' + list(sys.modules[m].__path__)[0])\n"
            "    else:\n"
            "        print(m + '=' + importlib.import_module(m).__file__)\n"
            "try:\n    import torchao\n    f8 = True\nexcept Exception:\n    f8 = False\n"
            "print('PROBE ' + json.dumps({'cuda': torch.cuda.is_available(), 'device': device_description(), "
            "'torch': torch.__version__, 'torchao': f8}))")
    return [python, "-c", code]


def config_check_command(python: str, launches: list[Launch]) -> list[str]:
    """Parse each launch's TOML and overrides the way ``titan_recipes.train`` does (our checks, then
    torchtitan's ConfigManager) without training, printing ``CONFIG {json}`` per launch: the CPU dry run
    proves the 1B command lines are valid before a GPU node spends time on them."""
    items = [(item.step, ["--job.config_file", item.env["CONFIG_FILE"], *item.overrides]) for item in launches]
    code = ("import json\nfrom titan_recipes.config import check_config_file\n"
            "from titan_recipes.config.flags import register_toml_only_flags, with_config_module\n"
            "import titan_recipes.trainer\nfrom torchtitan.config import ConfigManager\n"
            "register_toml_only_flags()\n"
            f"for step, args in {items!r}:\n"
            "    check_config_file(args)\n"
            "    c = ConfigManager().parse_args(with_config_module(args))\n"
            "    print('CONFIG ' + json.dumps({'step': step, 'flavor': c.model.flavor, 'dataset': c.training.dataset, "
            "'converters': list(c.model.converters), 'compile': c.compile.enable, 'batch': c.training.local_batch_size, "
            "'seq_len': c.training.seq_len, 'steps': c.training.steps, 'checkpoint': c.checkpoint.enable, "
            "'mds': c.mosaic_dataloader.dataset.local}))")
    return [python, "-c", code]


def verdict(step: str, result: dict) -> tuple[str, str]:
    """(target text, verdict) for a throughput step's result: pass, FAIL, or '-' without a target."""
    if step not in TARGETS:
        return "-", "-"
    text, value_of, minimum = TARGETS[step]
    value = value_of(result)
    if result.get("status") != "ok" or value is None:
        return text, "n/a"
    return text, "pass" if value >= minimum else "FAIL"
