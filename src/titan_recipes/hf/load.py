"""HF weights into torchtitan: continued pretraining from a HuggingFace Llama directory.

The training path is torchtitan's own and needs no code here: with

    --checkpoint.initial_load_path DIR --checkpoint.initial_load_in_hf

torchtitan's ``CheckpointManager.load`` (when the run's checkpoint folder does not exist yet) reads
``DIR``'s safetensors through the TrainSpec's ``state_dict_adapter`` (``Llama3StateDictAdapter``, which
``recipes.llama3`` inherits from torchtitan's llama3 spec), un-permutes q/k and loads the weights into
the sharded model; optimizer, schedule and data start fresh. The run's own checkpoints are DCP, so a
stop/resume of that run resumes from them and never rereads ``DIR``.

What torchtitan does not do is check that ``DIR`` is the flavor's model: it loads into the flavor's
tensors by name, so a different shape fails deep inside DCP and a different RoPE (theta, scaling) or
norm eps loads silently and trains a different function. :func:`check_hf_dir` compares ``DIR``'s
config.json with the flavor first (:func:`titan_recipes.hf.config.flavor_mismatches`).

One thing torchtitan's path cannot do alone: a model with tied embeddings (Llama-3.2-1B ships no
``lm_head.weight``) leaves the flavor's untied output layer without a source, and the load fails.
:func:`prepare_hf_init` (``titan-recipes export hf-init HF_DIR DIR --flavor 1B``) checks the download
against the flavor and writes ``DIR``: links to its files plus ``lm_head.safetensors``, a copy of the
embedding, which is what tying means; the output layer then trains on its own.

The helpers below also serve the parity tests and a user checking an export by hand: the torchtitan
model with an HF directory's weights, read the way torchtitan reads them (:func:`titan_state_from_hf`,
:func:`build_titan_model`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from .config import flavor_mismatches


def read_hf_config(hf_dir: Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{path} not found: checkpoint.initial_load_path must be a HuggingFace model directory (config.json "
            f"and *.safetensors), e.g. one `hf download meta-llama/Llama-3.2-1B --local-dir DIR` or "
            f"`titan-recipes export hf` wrote."
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e}); download or export the directory again.") from None


def weight_names(hf_dir: Path) -> set[str]:
    """Names of the tensors in ``hf_dir``'s safetensors files (headers only), as torchtitan's
    ``HuggingFaceStorageReader`` sees them: every ``*.safetensors`` file of the directory."""
    from safetensors import safe_open

    names: set[str] = set()
    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            names.update(f.keys())
    return names


def check_hf_dir(hf_dir: Path, args: Any, flavor: str = "the flavor", allow_tied: bool = False) -> dict[str, Any]:
    """ConfigError unless HF directory ``hf_dir`` holds safetensors of the model ``args`` describes
    (same shapes, RoPE, norm eps) that torchtitan can load as they are. A tied model (no
    ``lm_head.weight``, as Llama-3.2-1B ships) passes only with ``allow_tied``. Returns its config.json."""
    hf_dir = Path(hf_dir)
    config = read_hf_config(hf_dir)
    mismatches = flavor_mismatches(args, config)
    if mismatches:
        raise ConfigError(
            f"{hf_dir / 'config.json'} does not describe model.flavor = '{flavor}': " + "; ".join(mismatches)
            + ". Pick the flavor of that model (e.g. 1B for Llama-3.2-1B) or another HF directory."
        )
    names = weight_names(hf_dir)
    if not names:
        raise ConfigError(
            f"{hf_dir} has no *.safetensors weights (torchtitan reads safetensors only); download the "
            f"safetensors files of the model, not only its config."
        )
    if "lm_head.weight" not in names and not allow_tied:
        raise ConfigError(
            f"{hf_dir} has no lm_head.weight: the model ties its output layer to the embedding, torchtitan's "
            f"llama3 has its own, and torchtitan's initial_load_in_hf needs every weight. Run `titan-recipes "
            f"export hf-init {hf_dir} NEW_DIR --flavor {flavor}` and load NEW_DIR instead."
        )
    return config


def prepare_hf_init(hf_dir: Path, out_dir: Path, args: Any, flavor: str = "the flavor") -> Path:
    """A directory torchtitan's ``initial_load_in_hf`` loads into flavor ``args``: links to ``hf_dir``'s
    files, plus ``lm_head.safetensors`` (a copy of the embedding) when the model is tied. The download
    itself is not modified. Returns ``out_dir``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    hf_dir, out_dir = Path(hf_dir).resolve(), Path(out_dir)
    check_hf_dir(hf_dir, args, flavor, allow_tied=True)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"{out_dir} is not empty; pass a new directory for the loadable copy of {hf_dir}.")
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(hf_dir.iterdir()):
        if path.is_file():
            (out_dir / path.name).symlink_to(path)
    if "lm_head.weight" not in weight_names(hf_dir):
        for path in sorted(hf_dir.glob("*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                if "model.embed_tokens.weight" in f.keys():
                    embedding = f.get_tensor("model.embed_tokens.weight")
                    break
        else:
            raise DataError(f"{hf_dir} has neither lm_head.weight nor model.embed_tokens.weight; it is not a Llama checkpoint.")
        save_file({"lm_head.weight": embedding.contiguous()}, str(out_dir / "lm_head.safetensors"), metadata={"format": "pt"})
    return out_dir


def titan_state_from_hf(hf_dir: Path, args: Any) -> dict[str, torch.Tensor]:
    """torchtitan llama3 weights (CPU, fp32) from HF directory ``hf_dir`` by torchtitan's own path:
    ``CheckpointManager.dcp_load(from_hf=True)`` maps the model's state dict to HF names with the
    adapter, reads it through ``HuggingFaceStorageReader`` and maps it back. Done here without a process
    group, so tests and users see exactly what a run starting from ``hf_dir`` starts with."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from torchtitan.models.llama3 import Llama3StateDictAdapter

    from .export import model_keys

    check_hf_dir(hf_dir, args)
    adapter = Llama3StateDictAdapter(args, None)
    hf_state = adapter.to_hf({k: torch.empty(shape, dtype=dtype) for k, (shape, dtype) in model_keys(args).items()})
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": no_dist is the intent here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(hf_state, storage_reader=adapter.get_hf_storage_reader(str(hf_dir)), no_dist=True)
    return adapter.from_hf(hf_state)
def build_titan_model(args: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """torchtitan's ``Transformer(args)`` on CPU in eval mode with ``state`` loaded (strict: every
    persistent weight must be there)."""
    from torchtitan.models.llama3 import Transformer

    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(state, strict=True, assign=True)
    model.freqs_cis = model._precompute_freqs_cis()  # a non-persistent buffer, still on meta
    return model.eval()


def check_initial_load(job_config: Any) -> None:
    """``checkpoint.initial_load_in_hf``: torchtitan loads the directory's weights by name, so a model with
    another RoPE, norm eps or shape would load (or half-load) silently. Called by the trainer before it
    loads: ConfigError naming each field that differs from ``model.flavor`` (:func:`check_hf_dir`).
    Models other than llama3 flavors are left to torchtitan's own adapter, unchecked."""
    ckpt = job_config.checkpoint
    if not (ckpt.enable and ckpt.initial_load_in_hf and ckpt.initial_load_path):
        return
    from .config import flavor_args

    try:
        args = flavor_args(job_config.model.name, job_config.model.flavor)
    except ConfigError:
        return
    check_hf_dir(Path(ckpt.initial_load_path), args, job_config.model.flavor)
