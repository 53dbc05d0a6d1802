# syntax=docker/dockerfile:1
# titan-recipes GPU image: CUDA base + Python + every package of env/gpu.lock (torch CUDA build, its
# CUDA and NCCL wheels, torchtitan 0.2.2, mosaicml-streaming, sentencepiece, duckdb, ...) + this package.
#
# Build:   nox -s image                      (docker or podman; passes the build args below from the lock)
#          docker build -t titan-recipes .   (same contents: the ARG defaults equal env/gpu.lock, tested;
#                                             only the revision, lock-hash and tag labels stay unset)
# Import:  nox -s enroot                     (enroot import -> runs/images/<tag>.sqsh for pyxis)
# Run:     docker run --gpus all --rm titan-recipes:<tag> recipes/debug/run_train.sh   (tag: see nox -s image)
#          srun --container-image=titan-recipes.sqsh ...   (slurm/train.sbatch; README "On a cluster")
#
# Versions live in env/gpu.lock only: its "# image.cuda" and "# image.python" lines and its pins. A
# different CUDA/torch variant is a different lock (e.g. env/gpu-cu128.lock with the cu128 torch, its
# nvidia-*-cu12 wheels and a 12.8 base image): GPU_LOCK=env/gpu-cu128.lock nox -s image.
#
# NCCL: one copy, the nvidia-nccl-cu13 wheel of the lock (the one torch was built and tested with). The
# CUDA "base" flavour has no libnccl2 (the runtime/devel flavours do), and `image verify` below fails the
# build if any other libnccl.so exists in the image. Cluster network plugins (aws-ofi-nccl, the CSCS
# hook) are injected at run time and work with this NCCL.
#
# Runs as any uid: enroot/pyxis start the container as the submitting user. Everything installed is
# world-readable (pip's default modes; a chmod -R here would copy every file into a new layer); at run
# time only /opt/titan-recipes/{runs,data} (mode 1777), the mounted checkout, $HOME and /tmp are written.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
FROM ${CUDA_IMAGE}

# Each ARG is declared just before its first use: a RUN sees every ARG declared above it, so a changed
# value there would rebuild that layer and all below (a new lock must not re-run apt-get).
ARG PYTHON_VERSION=3.12

# Python from Ubuntu 24.04 (3.12). gcc, libc6-dev and the Python headers: triton compiles its small C
# launcher with them on first use (torch.compile). git: run.json records the checkout's SHA. The apt
# packages are not pinned to versions: the base image tag fixes the distribution, and the archive drops
# superseded patch versions, so a pin would stop the build from working weeks later.
# A non-root user for docker/podman run (enroot ignores USER and runs as the calling user).
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-venv" "python${PYTHON_VERSION}-dev" \
        gcc libc6-dev git ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1001 --shell /bin/bash titan

# A virtual environment at a fixed path: launchers call /opt/venv/bin/python, so a PATH or VIRTUAL_ENV
# inherited from the host (pyxis passes the job's environment) cannot pick another interpreter.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN "python${PYTHON_VERSION}" -m venv "${VIRTUAL_ENV}"

# The lock before the source: this (large) layer is rebuilt only when the lock changes. --no-deps: the
# lock is complete, pip resolves nothing (and cannot swap in another torch or a second NCCL).
ARG GPU_LOCK=env/gpu.lock
COPY ${GPU_LOCK} /opt/titan-recipes/${GPU_LOCK}
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -r "/opt/titan-recipes/${GPU_LOCK}"

# The package itself (editable, so fixtures and recipes resolve against /opt/titan-recipes), with runs/
# and data/ writable for any uid, so `docker run ... recipes/debug/run_train.sh` works without a mount.
# On a cluster slurm/train.sbatch sets PYTHONPATH to the mounted checkout's src/ instead.
COPY . /opt/titan-recipes
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/titan-recipes \
 && mkdir -p /opt/titan-recipes/runs /opt/titan-recipes/data \
 && chmod 1777 /opt/titan-recipes/runs /opt/titan-recipes/data

# Versions as labels (`docker inspect`). Here at the end: a new lock changes them, and nothing above
# should be rebuilt for that.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG TORCH_VERSION=2.11.0+cu130
ARG TORCHTITAN_VERSION=0.2.2
ARG NCCL_VERSION=2.28.9
ARG LOCK_SHA256=unknown
ARG IMAGE_TAG=titan-recipes
LABEL org.opencontainers.image.title="titan-recipes" \
      org.opencontainers.image.description="Reproducible LLM-pretraining recipes on torchtitan ${TORCHTITAN_VERSION}" \
      org.opencontainers.image.licenses="BSD-3-Clause" \
      org.opencontainers.image.base.name="${CUDA_IMAGE}" \
      titan-recipes.python="${PYTHON_VERSION}" \
      titan-recipes.torch="${TORCH_VERSION}" \
      titan-recipes.torchtitan="${TORCHTITAN_VERSION}" \
      titan-recipes.nccl="${NCCL_VERSION}" \
      titan-recipes.lock="${GPU_LOCK}" \
      titan-recipes.lock-sha256="${LOCK_SHA256}"
# Inside a job (enroot keeps no labels): run.json records the image's name (titan_recipes.records reads
# TITAN_RECIPES_IMAGE); the lock's hash says which env/gpu.lock the packages came from.
ENV TITAN_RECIPES_IMAGE="${IMAGE_TAG}" \
    TITAN_RECIPES_GPU_LOCK_SHA256="${LOCK_SHA256}"

# The build checks itself: installed versions == lock, Python == image.python, the labels' versions ==
# lock, one libnccl (the wheel's) anywhere in the image, `pip check` clean but for streaming's extras.
RUN python -m titan_recipes.cli image verify --lock "/opt/titan-recipes/${GPU_LOCK}" \
        --nccl-root /usr --nccl-root /opt --nccl-root /lib \
        --expect "torch=${TORCH_VERSION}" --expect "torchtitan=${TORCHTITAN_VERSION}" \
        --expect "nccl=${NCCL_VERSION}" --expect "python=${PYTHON_VERSION}" --expect "cuda-image=${CUDA_IMAGE}"

USER 1001:1001
WORKDIR /opt/titan-recipes
CMD ["bash"]
