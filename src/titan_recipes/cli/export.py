"""HuggingFace in and out.

    titan-recipes export hf RUN_DIR OUT_DIR [--step N] [--dtype float32|bfloat16] [--max-shard-size 5GB] [--overwrite]
        a run's checkpoint as a HuggingFace model directory (:func:`titan_recipes.hf.export.export_hf`)
    titan-recipes export hf-init HF_DIR OUT_DIR --flavor F
        an HF Llama directory checked against flavor F and made loadable by ``checkpoint.initial_load_in_hf``
        (:func:`titan_recipes.hf.load.prepare_hf_init`)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from . import reports


@reports(ConfigError, DataError)
def cmd_export_hf(args) -> int:
    import time

    from ..hf.export import export_hf

    begin = time.monotonic()
    out = export_hf(args.run_dir, args.out_dir, args.step, dtype=args.dtype, max_shard_size=args.max_shard_size,
                    overwrite=args.overwrite)
    print(f"exported {args.run_dir} to {out} in {time.monotonic() - begin:.1f} s; load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained('{out}')")
    return 0


@reports(ConfigError, DataError)
def cmd_hf_init(args) -> int:
    from ..hf.config import flavor_args
    from ..hf.load import prepare_hf_init

    out = prepare_hf_init(args.hf_dir, args.out_dir, flavor_args(args.model, args.flavor), args.flavor)
    print(f"{out} loads into {args.model} flavor {args.flavor}: train with --checkpoint.initial_load_path {out} "
          f"--checkpoint.initial_load_in_hf")
    return 0


def register(sub) -> None:
    """Add ``export`` to the ``titan-recipes`` subcommands ``sub``."""
    p = sub.add_parser("export", help="export a run's checkpoint (HuggingFace format)")
    kinds = p.add_subparsers(dest="format", required=True)
    hf = kinds.add_parser("hf", help="write a transformers LlamaForCausalLM directory (safetensors, config, tokenizer)")
    hf.add_argument("run_dir", type=Path, help="the run directory (runs/<recipe>-<timestamp>)")
    hf.add_argument("out_dir", type=Path, help="new or empty output directory")
    hf.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest step-N)")
    hf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weight dtype (default float32)")
    hf.add_argument("--max-shard-size", default="5GB", help="safetensors shard size limit (default 5GB)")
    hf.add_argument("--overwrite", action="store_true", help="replace an export already in OUT_DIR")
    hf.set_defaults(func=cmd_export_hf)
    init = kinds.add_parser("hf-init", help="check an HF Llama directory against a flavor and make it loadable by "
                                            "checkpoint.initial_load_in_hf (unties tied embeddings)")
    init.add_argument("hf_dir", type=Path, help="HF model directory (config.json + *.safetensors)")
    init.add_argument("out_dir", type=Path, help="new directory: links to HF_DIR's files (+ lm_head.safetensors if tied)")
    init.add_argument("--flavor", required=True, help="model.flavor the run trains (e.g. 1B)")
    init.add_argument("--model", default="recipes.llama3", help="model.name (default recipes.llama3)")
    init.set_defaults(func=cmd_hf_init)
