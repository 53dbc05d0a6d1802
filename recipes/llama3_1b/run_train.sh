#!/usr/bin/env bash
# Train the llama3_1b recipe with torchrun, like torchtitan's run_train.sh.
#
# usage:  [NGPU=N] [CONFIG_FILE=path.toml] [RUN_DIR=runs/x] [LOG_RANK=0,1] recipes/llama3_1b/run_train.sh [--section.key value ...]
#
#   NGPU        processes on this node (default: number of visible GPUs; 1 on a machine without GPUs)
#   CONFIG_FILE the recipe TOML. Default: train.toml next to this script (Llama-3.2-1B, one 8-GPU node)
#               when a GPU is visible, smoke.toml (same structure, debugmodel, CPU) when none is: the
#               CPU fixtures in expected_loss.json are smoke.toml runs, the GPU ones train.toml runs.
#   RUN_DIR     where the run writes (default: runs/<recipe>-<timestamp>); reuse it to resume
#   LOG_RANK    ranks whose output is shown (default: 0)
#   PYTHON      interpreter (default: the repository's .venv if present and no venv is active)
#   SMOKE_DATA_DIR  where smoke.toml's MDS data is made from the embedded corpus (default
#               data/llama3_1b_smoke, which smoke.toml reads; scripts/make_shakespeare_mds.sh)
# Arguments after the script override the TOML (`--training.steps 100`), as in torchtitan.
set -eo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"
RECIPE="$(basename "${HERE}")"

# shellcheck source-path=SCRIPTDIR source=../../scripts/recipe_launch.sh
source "${REPO}/scripts/recipe_launch.sh"  # PYTHON, NGPU, LOG_RANK, RUN_DIR defaults; recipe_torchrun
if [[ -z "${CONFIG_FILE:-}" ]]; then
    recipe_count_gpus
    if [[ "${RECIPE_GPUS}" -gt 0 ]]; then
        CONFIG_FILE="${HERE}/train.toml"
    else
        CONFIG_FILE="${HERE}/smoke.toml"
        echo "titan-recipes: no GPU visible, so the CPU smoke config ${CONFIG_FILE} (set CONFIG_FILE to choose)"
    fi
fi
CONFIG_FILE="$(realpath "${CONFIG_FILE}")"

cd "${REPO}"

# smoke.toml reads the embedded corpus as MDS shards (made once; byte-identical on every machine).
# train.toml reads the data you converted (README.md), so nothing is made for it.
if [[ "${CONFIG_FILE}" == "${HERE}/smoke.toml" ]]; then
    scripts/make_shakespeare_mds.sh "${SMOKE_DATA_DIR:-data/llama3_1b_smoke}" "${PYTHON}"
fi

recipe_torchrun "$@"
