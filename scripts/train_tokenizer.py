#!/usr/bin/env python
"""Train a small byte-level BPE tokenizer offline and write it as a torchtitan HF-assets directory.

The committed ``assets/tokenizers/shakespeare-bpe-2048`` was made with:

    python scripts/train_tokenizer.py assets/data/tinyshakespeare.txt \
        --vocab-size 2048 --out assets/tokenizers/shakespeare-bpe-2048

The output directory holds ``tokenizer.json`` and ``tokenizer_config.json`` (BOS/EOS names), which is
what ``torchtitan.components.tokenizer.HuggingFaceTokenizer`` loads from ``model.hf_assets_path``. The
vocabulary size includes the special tokens, so it must not exceed the model's ``vocab_size`` (2048 for
llama3 ``debugmodel``). Training is deterministic for a given input and settings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"


def train(files: list[Path], vocab_size: int, out: Path) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tokenizer.train([str(f) for f in files], trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 1_000_000,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "source": f"scripts/train_tokenizer.py {' '.join(f.name for f in files)} --vocab-size {vocab_size}",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="plain-text training files")
    parser.add_argument("--vocab-size", type=int, default=2048, help="vocabulary size incl. special tokens")
    parser.add_argument("--out", type=Path, required=True, help="output HF-assets directory")
    args = parser.parse_args(argv)
    for f in args.files:
        if not f.is_file():
            parser.error(f"training file not found: {f}")
    tokenizer = train(args.files, args.vocab_size, args.out)
    print(f"wrote {args.out} (vocab {tokenizer.get_vocab_size()})")


if __name__ == "__main__":
    main()
