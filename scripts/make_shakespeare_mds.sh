#!/usr/bin/env bash
# Make the embedded Tiny Shakespeare corpus into MDS train/val shards, once: the CPU data of the recipes
# that read MDS (recipes/debug_mds, the smoke variant of recipes/llama3_1b). Run from the repository root.
#
# usage:  scripts/make_shakespeare_mds.sh DATA_DIR [PYTHON]
#
#   DATA_DIR/train  documents [0, n-200) of assets/data/tinyshakespeare.txt
#   DATA_DIR/val    the last 200 documents
# Both are packed into samples of 257 tokens (training.seq_len 256) with the committed 2048-token BPE
# tokenizer, zstd shards. A split whose index.json exists is left alone. The conversion is
# deterministic, so every machine makes byte-identical shards and the recipes' fixtures do not depend
# on where the data was made.
set -eo pipefail

DATA_DIR="${1:?usage: scripts/make_shakespeare_mds.sh DATA_DIR [PYTHON]}"
PYTHON="${2:-python3}"
CORPUS="assets/data/tinyshakespeare.txt"
TOKENIZER="assets/tokenizers/shakespeare-bpe-2048"

for split in train val; do
    if [[ ! -f "${DATA_DIR}/${split}/index.json" ]]; then
        if [[ "${split}" == train ]]; then range="0:-200"; else range="-200:"; fi
        echo "titan-recipes: converting ${CORPUS} documents [${range}] into ${DATA_DIR}/${split}"
        "${PYTHON}" scripts/mds_convert.py "${CORPUS}" --tokenizer "${TOKENIZER}" --seq-len 256 \
            --compression zstd --documents="${range}" --out "${DATA_DIR}/${split}" --overwrite --no-progress
    fi
done
