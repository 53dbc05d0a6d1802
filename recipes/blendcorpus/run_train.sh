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
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO}/.venv/bin/python" ]]; then
        PYTHON="${REPO}/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi
if [[ -z "${NGPU:-}" ]]; then
    NGPU="$("${PYTHON}" -c 'import torch; print(torch.cuda.device_count() or 1)')"
fi
LOG_RANK="${LOG_RANK:-0}"
TRAIN_FILE="${TRAIN_FILE:-titan_recipes.train}"
RUN_DIR="${RUN_DIR:-runs/${RECIPE}-$(date +%Y%m%d-%H%M%S)}"

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

mkdir -p "${RUN_DIR}"
echo "titan-recipes: recipe ${RECIPE}, ${NGPU} process(es), config ${CONFIG_FILE}, data ${DATA_DIR}, run directory ${RUN_DIR}"

set -x
PYTORCH_ALLOC_CONF="expandable_segments:True" \
"${PYTHON}" -m torch.distributed.run --nproc_per_node="${NGPU}" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
    --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    --local-ranks-filter "${LOG_RANK}" --role rank --tee 3 \
    -m "${TRAIN_FILE}" --job.config_file "${CONFIG_FILE}" --job.dump_folder "${RUN_DIR}" "${DATA_ARGS[@]}" "$@" \
    2>&1 | (trap '' TERM USR1; exec tee -a "${RUN_DIR}/train.log")  # tee outlives a preemption signal
set +x
echo "titan-recipes: run directory ${RUN_DIR} (metrics.jsonl, run.json, train.log, checkpoint/)"
