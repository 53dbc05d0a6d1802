#!/usr/bin/env bash
# Train the mixtera_slimpajama recipe with torchrun, like torchtitan's run_train.sh; registers the data first.
#
# usage:  [NGPU=N] [CONFIG_FILE=path.toml] [RUN_DIR=runs/x] [DATA_DIR=data/mixtera_slimpajama] \
#             [SLIMPAJAMA_DIR=assets/data/slimpajama_sample] [LOG_RANK=0,1] \
#             recipes/mixtera_slimpajama/run_train.sh [--section.key value ...]
#
#   NGPU            processes on this node (default: number of visible GPUs; 1 on a machine without
#                   GPUs, where training runs on the CPU over gloo)
#   CONFIG_FILE     the recipe TOML (default: train.toml next to this script; ado.toml, 1b.toml beside it)
#   RUN_DIR         where the run writes (default: runs/<recipe>-<timestamp>); reuse it to resume
#   DATA_DIR        where the sample index is made and read (default: data/mixtera_slimpajama,
#                   git-ignored); another value also passes --mixture.index_dir ${DATA_DIR}/index
#   SLIMPAJAMA_DIR  the SlimPajama JSONL(.zst) directory registered into that index (default: the
#                   embedded sample); registration is resumable and skips files already indexed
#   LOG_RANK        ranks whose output is shown (default: 0)
#   PYTHON          interpreter (default: the repository's .venv if present and no venv is active)
# Arguments after the script override the TOML (`--training.steps 100`), as in torchtitan. With
# `--mixture.server host:port` (served mode) nothing is registered here: the server holds the index.
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
    DATA_ARGS=(--mixture.index_dir "${DATA_DIR}/index")
fi
DATA_DIR="${DATA_DIR:-data/mixtera_slimpajama}"
SLIMPAJAMA_DIR="${SLIMPAJAMA_DIR:-assets/data/slimpajama_sample}"

served=0
for arg in "$@"; do
    if [[ "${arg}" == --mixture.server* ]]; then served=1; fi
done
# Register the corpus (SlimPajama's meta.redpajama_set_name becomes the property redpajama_set_name):
# idempotent and resumable, so this is quick once the index exists. Delete DATA_DIR to remake it.
if [[ "${served}" == 0 ]]; then
    "${PYTHON}" -m titan_recipes.cli mixture register "${DATA_DIR}/index" "${SLIMPAJAMA_DIR}" \
        --name slimpajama --parser slimpajama
fi

echo "titan-recipes: index ${DATA_DIR}/index"
recipe_torchrun "${DATA_ARGS[@]}" "$@"
