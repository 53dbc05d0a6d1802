#!/usr/bin/env bash
# Train a titan-recipes recipe with torchrun, like torchtitan's run_train.sh; this recipe first makes
# its MDS data from the embedded Tiny Shakespeare corpus (once, when an index.json is missing).
#
# usage:  [NGPU=N] [CONFIG_FILE=path.toml] [RUN_DIR=runs/x] [LOG_RANK=0,1] [DATA_DIR=dir] recipes/debug_mds/run_train.sh [--section.key value ...]
#
#   NGPU        processes on this node (default: number of visible GPUs; 1 on a machine without GPUs,
#               where training runs on the CPU over gloo)
#   CONFIG_FILE the recipe TOML (default: train.toml next to this script)
#   RUN_DIR     where the run writes (default: runs/<recipe>-<timestamp>); reuse it to resume
#   LOG_RANK    ranks whose output is shown (default: 0)
#   PYTHON      interpreter (default: the repository's .venv if present and no venv is active)
#   DATA_DIR    where the MDS data is made: DATA_DIR/train (documents [0, n-200) of the corpus) and
#               DATA_DIR/val (the last 200). Default data/debug_mds (relative to the repository),
#               which train.toml reads; with another DATA_DIR, pass a CONFIG_FILE that reads from it.
# Arguments after the script override the TOML (`--training.steps 100`), as in torchtitan.
set -eo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${HERE}/../.." && pwd)"
RECIPE="$(basename "${HERE}")"

CONFIG_FILE="$(realpath "${CONFIG_FILE:-${HERE}/train.toml}")"
# shellcheck source-path=SCRIPTDIR source=../../scripts/recipe_launch.sh
source "${REPO}/scripts/recipe_launch.sh"  # PYTHON, NGPU, LOG_RANK, RUN_DIR defaults; recipe_torchrun
DATA_DIR="${DATA_DIR:-data/debug_mds}"

cd "${REPO}"

# The data: train = documents [0, n-200), val = the last 200 documents of the embedded corpus, both
# packed into samples of 257 tokens (training.seq_len 256) with the committed tokenizer, zstd shards.
# The conversion is deterministic, so every machine makes byte-identical shards.
scripts/make_shakespeare_mds.sh "${DATA_DIR}" "${PYTHON}"

recipe_torchrun "$@"
