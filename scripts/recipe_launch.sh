# shellcheck shell=bash
# What every recipes/<name>/run_train.sh shares, sourced after it set HERE (its directory), REPO and
# RECIPE: the environment defaults and the torchrun launch, in torchtitan's run_train.sh conventions.
# One copy, so a fix to the launch (signals, log tee, torchrun flags) reaches every recipe.
#
# Sets, keeping values from the environment:
#   PYTHON      interpreter (default: the repository's .venv if present and no venv is active, else python3)
#   NGPU        processes on this node (default: the number of visible GPUs, 1 without GPUs: CPU over gloo)
#   LOG_RANK    ranks whose output is shown (default: 0)
#   TRAIN_FILE  the module torchrun runs (default: titan_recipes.train)
#   RUN_DIR     where the run writes (default: runs/<recipe>-<timestamp>, relative to the repository)
# Defines:
#   recipe_count_gpus           set RECIPE_GPUS to the number of visible CUDA GPUs (0 without),
#                               unless it is set already
#   recipe_torchrun [ARGS...]   train CONFIG_FILE into RUN_DIR with NGPU processes; ARGS are
#                               --section.key value overrides. Run it from the repository root.

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -z "${VIRTUAL_ENV:-}" && -x "${REPO}/.venv/bin/python" ]]; then
        PYTHON="${REPO}/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi

recipe_count_gpus() {  # sets RECIPE_GPUS (asks torch once per launch)
    if [[ -z "${RECIPE_GPUS:-}" ]]; then
        RECIPE_GPUS="$("${PYTHON}" -c 'import torch; print(torch.cuda.device_count())')"
    fi
}

if [[ -z "${NGPU:-}" ]]; then
    recipe_count_gpus
    NGPU="$(( RECIPE_GPUS > 0 ? RECIPE_GPUS : 1 ))"
fi
LOG_RANK="${LOG_RANK:-0}"
TRAIN_FILE="${TRAIN_FILE:-titan_recipes.train}"
RUN_DIR="${RUN_DIR:-runs/${RECIPE}-$(date +%Y%m%d-%H%M%S)}"

recipe_torchrun() {
    mkdir -p "${RUN_DIR}"
    echo "titan-recipes: recipe ${RECIPE}, ${NGPU} process(es), config ${CONFIG_FILE}, run directory ${RUN_DIR}"
    set -x
    PYTORCH_ALLOC_CONF="expandable_segments:True" \
    "${PYTHON}" -m torch.distributed.run --nproc_per_node="${NGPU}" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
        --local-ranks-filter "${LOG_RANK}" --role rank --tee 3 \
        -m "${TRAIN_FILE}" --job.config_file "${CONFIG_FILE}" --job.dump_folder "${RUN_DIR}" "$@" \
        2>&1 | (trap '' TERM USR1; exec tee -a "${RUN_DIR}/train.log")  # tee outlives a preemption signal
    set +x
    echo "titan-recipes: run directory ${RUN_DIR} (metrics.jsonl, run.json, summary.json, train.log, checkpoint/)"
}
