#!/usr/bin/env bash
# Train the blendcorpus recipe with torchrun, like torchtitan's run_train.sh; makes the data first.
#
# usage:  [NGPU=N] [CONFIG_FILE=path.toml] [RUN_DIR=runs/x] [DATA_DIR=data/blendcorpus] [LOG_RANK=0,1] \
#             recipes/blendcorpus/run_train.sh [--section.key value ...]
#
#   NGPU        processes on this node (default: number of visible GPUs; 1 on a machine without GPUs,
#               where training runs on the CPU over gloo)
#   CONFIG_FILE the recipe TOML (default: train.toml next to this script)
#   RUN_DIR     where the run writes (default: runs/<recipe>-<timestamp>); reuse it to resume
#   DATA_DIR    where the demo data is made and read (default: data/blendcorpus, git-ignored); another
#               value also passes --training.dataset_path ${DATA_DIR}/filelist.txt
#   LOG_RANK    ranks whose output is shown (default: 0)
#   PYTHON      interpreter (default: the repository's .venv if present and no venv is active)
# Arguments after the script override the TOML (`--training.steps 100`), as in torchtitan.
set -eo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"
RECIPE="$(basename "${HERE}")"

CONFIG_FILE="$(realpath "${CONFIG_FILE:-${HERE}/train.toml}")"
# shellcheck source-path=SCRIPTDIR source=../../scripts/recipe_launch.sh
source "${REPO}/scripts/recipe_launch.sh"  # PYTHON, NGPU, LOG_RANK, RUN_DIR defaults; recipe_torchrun

cd "${REPO}"

DATA_ARGS=()
if [[ -n "${DATA_DIR:-}" ]]; then
    DATA_ARGS=(--training.dataset_path "${DATA_DIR}/filelist.txt")
fi
DATA_DIR="${DATA_DIR:-data/blendcorpus}"

# The data (deterministic, so every machine makes byte-identical shards):
#   1. the embedded corpus cut into two JSONL corpora, first_half (2 files) and second_half (1 file);
#   2. each tokenized into Megatron .bin/.idx shards with the committed tokenizer (EOS after each document);
#   3. a file list weighting each shard by its tokens x its corpus's epochs: second_half is read twice
#      per epoch of the blend, so the blend is about 1/3 first_half, 2/3 second_half.
# Delete DATA_DIR to remake it.
TOKENIZER="assets/tokenizers/shakespeare-bpe-2048"
if [[ ! -f "${DATA_DIR}/filelist.txt" ]]; then
    echo "titan-recipes: making the blendcorpus demo data in ${DATA_DIR}"
    "${PYTHON}" "${HERE}/prepare_data.py" "${DATA_DIR}/jsonl"
    for corpus in first_half second_half; do
        "${PYTHON}" scripts/blendcorpus.py --quiet tokenize "${DATA_DIR}/jsonl/${corpus}"/*.jsonl \
            --output-dir "${DATA_DIR}/tokens/${corpus}" --tokenizer "${TOKENIZER}" --tokenizer-backend hf
    done
    "${PYTHON}" scripts/blendcorpus.py --quiet file-list \
        --corpus first_half="${DATA_DIR}/tokens/first_half" --corpus second_half="${DATA_DIR}/tokens/second_half" \
        --epochs second_half=2 --output "${DATA_DIR}/filelist.txt.tmp"
    mv "${DATA_DIR}/filelist.txt.tmp" "${DATA_DIR}/filelist.txt"  # last: a half-made DATA_DIR is remade
fi

echo "titan-recipes: data ${DATA_DIR}"
recipe_torchrun "${DATA_ARGS[@]}" "$@"
