#!/usr/bin/env bash
# Train a titan-recipes recipe with torchrun, like torchtitan's run_train.sh.
#
# usage:  [NGPU=N] [CONFIG_FILE=path.toml] [RUN_DIR=runs/x] [LOG_RANK=0,1] recipes/debug/run_train.sh [--section.key value ...]
#
#   NGPU        processes on this node (default: number of visible GPUs; 1 on a machine without GPUs,
#               where training runs on the CPU over gloo)
#   CONFIG_FILE the recipe TOML (default: train.toml next to this script)
#   RUN_DIR     where the run writes (default: runs/<recipe>-<timestamp>); reuse it to resume
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
recipe_torchrun "$@"
