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

# Printed last by a worker that stopped on a configuration error (titan_recipes.train.CONFIG_ERROR_LINE).
RECIPE_CONFIG_ERROR_LINE="titan_recipes.train: configuration error (exit status 2)"

# The console filter of recipe_torchrun (train.log keeps everything). A worker stopped by a configuration
# error prints the message and RECIPE_CONFIG_ERROR_LINE and exits with status 2; torchrun then adds its
# own report of the failed worker (it stops the other ranks, logs "failed (exitcode: 2)", and prints a
# Python traceback and the ChildFailedError summary: ~30 lines that say nothing new). From that line or
# from RECIPE_CONFIG_ERROR_LINE on, whichever comes first, torchrun's own lines (those without a
# "[rankN]:" prefix) are held back. At the end, if a shown rank (LOG_RANK) printed
# RECIPE_CONFIG_ERROR_LINE, they are dropped and the filter exits 2, the launch's status under pipefail;
# otherwise they are printed (the message may be on a hidden rank: torchrun's summary then carries it).
# Every other line passes at once.
recipe_quiet_config_error() {
    { set +x; } 2>/dev/null
    exec awk -v marker="${RECIPE_CONFIG_ERROR_LINE}" '
        /^\[rank[0-9]+\]:/ { if (index($0, marker)) seen = 1; print; fflush(); next }
        /failed \(exitcode: 2\)/ { failed = 1 }
        seen || failed { buffer[++n] = $0; next }
        { print; fflush() }
        END { if (seen && failed) exit 2; for (i = 1; i <= n; i++) print buffer[i] }'
}

recipe_torchrun() {
    # One writer per run directory: refuse at once (stdlib only, no torch import) when a live launch holds
    # RUN_DIR's lock, before tee appends to its train.log. Global rank 0 takes the lock itself
    # (src/titan_recipes/rundir.py); this is the early, friendly check.
    "${PYTHON}" "${REPO}/src/titan_recipes/rundir.py" check "${RUN_DIR}" || return 1
    mkdir -p "${RUN_DIR}"
    echo "titan-recipes: recipe ${RECIPE}, ${NGPU} process(es), config ${CONFIG_FILE}, run directory ${RUN_DIR}"
    set -x
    # The subshell execs torchrun, so BASHPID is torchrun's pid: the parent each worker checks before it
    # arms its parent-death signal (rundir.die_with_parent: no worker outlives its launcher).
    (export TITAN_RECIPES_LAUNCHER_PID="${BASHPID}" PYTORCH_ALLOC_CONF="expandable_segments:True"
    exec "${PYTHON}" -m torch.distributed.run --nproc_per_node="${NGPU}" --rdzv_backend c10d --rdzv_endpoint="localhost:0" \
        --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
        --local-ranks-filter "${LOG_RANK}" --role rank --tee 3 \
        -m "${TRAIN_FILE}" --job.config_file "${CONFIG_FILE}" --job.dump_folder "${RUN_DIR}" "$@") \
        2>&1 | (trap '' TERM USR1; exec tee -a "${RUN_DIR}/train.log") \
        | (trap '' TERM USR1; recipe_quiet_config_error)  # tee and the filter outlive a preemption signal
    set +x
    echo "titan-recipes: run directory ${RUN_DIR} (metrics.jsonl, run.json, summary.json, train.log, checkpoint/)"
}
