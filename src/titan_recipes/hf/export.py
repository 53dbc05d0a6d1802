"""``export_hf``: a run's checkpoint as a HuggingFace ``LlamaForCausalLM`` directory.

What a run directory gives it: the job config (``run.json``'s ``config``, else the saved
``config.json``), which names the TrainSpec, flavor, tokenizer and checkpoint folder, the git SHA
(``run.json``), and ``<checkpoint.folder>/step-N``. A step folder is one of

- a full DCP checkpoint (model + optimizer + lr scheduler + dataloader + train state): the model entries
  are the flat FQNs torchtitan's ``ModelWrapper`` writes (``tok_embeddings.weight``, ``layers.0....``),
  and only those are read;
- a weights-only DCP save (``checkpoint.last_save_model_only``): the same keys, nothing else;
- torchtitan's own HF save (``checkpoint.last_save_in_hf``): safetensors that already carry HF names.

DCP stores every tensor as the chunks the saving ranks held; ``dcp.load(..., no_dist=True)`` into
full-size CPU tensors reassembles them, so a checkpoint of any process count exports on a login node
with no GPU and no process group. Memory: one fp32 copy of the weights (plus the q/k projections twice
while they are permuted), e.g. 6 GB for the 1B flavor.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .config import flavor_args, hf_config

logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
SAVED_CONFIG = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "vocab.txt")
"""Tokenizer files copied from the run's ``model.hf_assets_path`` (whichever exist)."""
_STEP = re.compile(r"^step-(\d+)$")


# -- what the run directory says -----------------------------------------------------------------------


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(job config dict, run record dict or {}) of ``run_dir``."""
    record_path, config_path = run_dir / RUN_RECORD, run_dir / SAVED_CONFIG
    record: dict[str, Any] = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{record_path} is not valid JSON ({e}); restore it or delete it to use {config_path}.") from None
    if isinstance(record.get("config"), dict):
        return record["config"], record
    if config_path.is_file():
        return json.loads(config_path.read_text()), record
    raise ConfigError(
        f"{run_dir} is not a run directory: it has neither {RUN_RECORD} nor {SAVED_CONFIG}. Pass the "
        f"directory a recipe launch wrote (runs/<recipe>-<timestamp>, or RUN_DIR of run_train.sh)."
    )


def find_step(run_dir: Path, config: dict[str, Any], step: int | None) -> tuple[int, Path]:
    """(step, step folder): ``step`` or, when None, the newest ``step-N`` that holds model weights."""
    folder = run_dir / config.get("checkpoint", {}).get("folder", "checkpoint")
    steps = sorted((int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else ()) if (m := _STEP.match(p.name)))
    usable = [(n, p) for n, p in steps if (p / ".metadata").is_file() or any(p.glob("*.safetensors"))]
    if step is not None:
        hit = [(n, p) for n, p in usable if n == step]
        if not hit:
            raise ConfigError(
                f"--step {step}: {folder / f'step-{step}'} is not a complete checkpoint. Steps with weights in "
                f"{folder}: {[n for n, _ in usable] or 'none'}; pass one of them or leave out --step for the newest."
            )
        return hit[0]
    if not usable:
        raise DataError(
            f"no checkpoint in {folder} (no step-N folder with a .metadata or safetensors file). Train with "
            f"checkpoint.enable = true (the final save is kept; checkpoint.interval sets the others), then export."
        )
    return usable[-1]


def tokenizer_dir(config: dict[str, Any], run_dir: Path) -> Path | None:
    """The run's tokenizer directory. Relative paths were relative to the launch's working directory,
    the repository root for ``run_train.sh``; tried from here, then from the repository."""
    from ..fixtures import REPO_ROOT

    model = config.get("model", {})
    path = model.get("tokenizer_path") or model.get("hf_assets_path")
    if not path:
        return None
    path = Path(path)
    if path.is_file():
        path = path.parent
    for candidate in ([path] if path.is_absolute() else [path, REPO_ROOT / path, run_dir / path]):
        if candidate.is_dir():
            return candidate
    raise ConfigError(
        f"the run's tokenizer directory model.hf_assets_path = '{path}' does not exist here (tried it relative "
        f"to the working directory and to {REPO_ROOT}). Run the export from the directory the run was "
        f"launched in."
    )


def special_ids(tok_dir: Path | None) -> tuple[int | None, int | None]:
    """(bos, eos) token ids of the tokenizer in ``tok_dir``: its tokenizer_config.json names the tokens,
    tokenizer.json gives their ids."""
    if tok_dir is None or not (tok_dir / "tokenizer.json").is_file():
        return None, None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    names = json.loads((tok_dir / "tokenizer_config.json").read_text()) if (tok_dir / "tokenizer_config.json").is_file() else {}

    def token_id(name: str) -> int | None:
        token = names.get(name)
        token = token.get("content") if isinstance(token, dict) else token
        return tokenizer.token_to_id(token) if token else None

    return token_id("bos_token"), token_id("eos_token")


# -- weights ---------------------------------------------------------------------------------------------


def model_keys(args: Any) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """FQN -> (shape, dtype) of the persistent weights of torchtitan's ``Transformer(args)``, from a
    model built on the meta device (no memory)."""
    from torchtitan.models.llama3 import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def load_dcp_model(step_dir: Path, args: Any) -> dict[str, torch.Tensor]:
    """The model weights of DCP checkpoint ``step_dir`` as full CPU tensors (any saving process count)."""
    import pickle

    import torch.distributed.checkpoint as dcp

    meta = pickle.loads((step_dir / ".metadata").read_bytes()).state_dict_metadata
    want = model_keys(args)
    missing = sorted(set(want) - set(meta))
    if missing:
        raise DataError(
            f"{step_dir} lacks {len(missing)} weights of the flavor's model (e.g. {missing[:3]}): it was written "
            f"for another model or flavor than the run's config says. Export with the run directory that wrote it."
        )
    state = {}
    for key, (shape, _) in want.items():
        stored = meta[key]
        if tuple(stored.size) != tuple(shape):
            raise DataError(f"{step_dir}: {key} has shape {tuple(stored.size)}, the flavor's model {tuple(shape)}.")
        state[key] = torch.empty(stored.size, dtype=stored.properties.dtype)
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": no_dist is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(step_dir), no_dist=True)
    return state


def load_hf_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the ``*.safetensors`` files in ``directory`` (HF names)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(path)))
    return state


def to_hf(args: Any, state: dict[str, torch.Tensor], dtype: str = "float32") -> dict[str, torch.Tensor]:
    """torchtitan llama3 weights -> HF ``LlamaForCausalLM`` weights, by torchtitan's adapter (renames,
    q/k permuted for HF's rotate-half RoPE), contiguous and in ``dtype``."""
    from torchtitan.models.llama3 import Llama3StateDictAdapter

    hf = Llama3StateDictAdapter(args, None).to_hf(state)
    target = getattr(torch, dtype)
    return {k: v.to(target).contiguous() for k, v in hf.items()}


# -- the HF directory --------------------------------------------------------------------------------------


def prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"OUT_DIR {out_dir} is a file; pass a directory.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"OUT_DIR {out_dir} is not empty; pass an empty or new directory, or --overwrite to replace the export in it.")
        for old in [*out_dir.glob("model*.safetensors"), out_dir / "model.safetensors.index.json"]:
            old.unlink(missing_ok=True)  # stale shards of a bigger export would be read back
    out_dir.mkdir(parents=True, exist_ok=True)


def save_weights(out_dir: Path, hf_state: dict[str, torch.Tensor], max_shard_size: int | str = "5GB") -> list[str]:
    """Write ``hf_state`` as safetensors, sharded with huggingface_hub's own splitter (the file names and
    index transformers writes); returns the file names."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(hf_state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: hf_state[name] for name in names}, str(out_dir / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sorted(split.filename_to_tensors)


def _readme(run_dir: Path, step: int, record: dict[str, Any], config: dict[str, Any], dtype: str) -> str:
    git = record.get("git") or {}
    sha = git.get("sha", "unknown")
    dirty = " (uncommitted changes)" if git.get("dirty") else ""
    model = config.get("model", {})
    return f"""# {run_dir.name}, step {step}

A HuggingFace `LlamaForCausalLM` exported by `titan-recipes export hf` from the titan-recipes run
`{run_dir.name}`, checkpoint step {step}.

- model: `{model.get('name')}`, flavor `{model.get('flavor')}`; weights {dtype}
- titan-recipes git SHA: `{sha}`{dirty}
- recipe config: `{Path(str(record.get('config_file') or config.get('job', {}).get('config_file', '?'))).name}`
- torchtitan: {record.get('versions', {}).get('torchtitan', '?')}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/directory")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/directory")
```

Continue pretraining from it with titan-recipes: `--checkpoint.initial_load_path path/to/this/directory
--checkpoint.initial_load_in_hf` (same flavor).
"""


def write_hf_dir(out_dir: Path, args: Any, hf_state: dict[str, torch.Tensor], *, tok_dir: Path | None = None,
                 dtype: str = "float32", max_shard_size: int | str = "5GB", readme: str | None = None) -> Path:
    """Write a complete HF model directory: config.json, generation_config.json, safetensors weights,
    tokenizer files and README.md. ``out_dir`` must exist (see :func:`prepare_out_dir`)."""
    bos, eos = special_ids(tok_dir)
    config = hf_config(args, bos_token_id=bos, eos_token_id=eos, dtype=dtype)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": bos, "eos_token_id": eos}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    save_weights(out_dir, hf_state, max_shard_size)
    for name in TOKENIZER_FILES:
        if tok_dir is not None and (tok_dir / name).is_file():
            shutil.copyfile(tok_dir / name, out_dir / name)
    if readme is not None:
        (out_dir / "README.md").write_text(readme)
    return out_dir


def export_hf(run_dir: Path, out_dir: Path, step: int | None = None, *, dtype: str = "float32",
              max_shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
    """Export checkpoint ``step`` (default: the newest) of run ``run_dir`` as an HF model directory
    ``out_dir``; returns ``out_dir``. ConfigError/DataError name the file and the fix."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"RUN_DIR {run_dir} does not exist; pass the directory a recipe launch wrote (runs/...).")
    config, record = read_run(run_dir)
    model = config.get("model", {})
    args = flavor_args(model.get("name", "recipes.llama3"), model.get("flavor", ""))
    step, step_dir = find_step(run_dir, config, step)
    tok_dir = tokenizer_dir(config, run_dir)
    hf_config(args, dtype=dtype)  # refuse an unsupported flavor or dtype before reading gigabytes
    prepare_out_dir(out_dir, overwrite)

    begin = time.monotonic()
    if (step_dir / ".metadata").is_file():
        hf_state = to_hf(args, load_dcp_model(step_dir, args), dtype)
    else:  # torchtitan's checkpoint.last_save_in_hf: already HF names and layout
        target = getattr(torch, dtype)
        hf_state = {k: v.to(target).contiguous() for k, v in load_hf_safetensors(step_dir).items()}
    write_hf_dir(out_dir, args, hf_state, tok_dir=tok_dir, dtype=dtype, max_shard_size=max_shard_size,
                 readme=_readme(run_dir, step, record, config, dtype))
    logger.info("exported %s step %d to %s in %.1f s", run_dir, step, out_dir, time.monotonic() - begin)
    return out_dir
