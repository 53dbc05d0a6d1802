"""nox sessions for titan-recipes. All sessions share one pinned environment in ``.venv``.

    nox -s debug       train the debug recipe on the embedded data, check it against its fixture (~1 min)
    nox -s tests       the whole test suite: unit tests + real CPU training runs          (~24 min)
    nox -s tests_fast  unit tests and the fast integration tests (-m "not slow")          (shorter; not re-measured)
    nox -s smoke       every recipe's CPU fixture entries for this torch, trained and compared
    nox -s bench       MDS loader, remote streaming and mixture loader throughput -> runs/bench/  (not in the default)
    nox -s image       build the GPU image (Dockerfile + env/gpu.lock) with docker or podman
    nox -s enroot      import that image into a .sqsh file for pyxis/enroot
    nox -s gpu         train a recipe on this node's GPUs, check its fixture, print throughput/MFU
    nox -s wheelhouse  download the cp312 wheels a GPU node lacks (env/wheelhouse.txt) into wheelhouse/ (<= 60 MiB)
    nox -s gpu_check   on a GPU node: install wheelhouse/, recipes' fixtures + 1B tok/s, MFU, float8 (<= 6 min);
                       `-- --dry-run` on a CPU machine checks everything but the GPU (~1 min)

Timings are wall time on a 2-core machine once ``.venv`` exists; creating it first takes ~2 min
(``pip install --no-deps -r env/cpu.lock``). The environment is rebuilt only when env/cpu.lock or
pyproject.toml change (a hash is kept in .venv). Sessions run with venv_backend="none" and call the
.venv interpreter, because nox would otherwise build one multi-GB environment per session.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "env" / "cpu.lock"
STAMP = VENV / ".titan-recipes-env.sha256"
PY = VENV / "bin" / "python"

COMMAND_HINT = (
    "the titan-recipes command is in .venv/bin, not on PATH: `source .venv/bin/activate` puts it there "
    "(then `titan-recipes --help`), or call .venv/bin/titan-recipes"
)
"""Logged last by `nox -s debug` (the README's next commands use `titan-recipes`)."""

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"


def _env_hash() -> str:
    h = hashlib.sha256()
    for path in (LOCK, ROOT / "pyproject.toml"):
        h.update(path.read_bytes())
    return h.hexdigest()


def pinned_env(session: nox.Session) -> str:
    """Create or update .venv from env/cpu.lock; return its python."""
    wanted = _env_hash()
    if PY.exists() and STAMP.exists() and STAMP.read_text().strip() == wanted:
        return str(PY)
    if not PY.exists():
        session.log(f"creating {VENV} with {sys.executable}")
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    session.log("installing the pinned CPU environment (env/cpu.lock), ~2 min the first time")
    session.run(str(PY), "-m", "pip", "install", "--no-deps", "-r", str(LOCK), external=True)
    session.run(str(PY), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT), external=True)
    STAMP.write_text(wanted + "\n")
    return str(PY)


def _pytest(session: nox.Session, *args: str) -> None:
    py = pinned_env(session)
    session.run(py, "-m", "pytest", *args, *session.posargs, external=True)


def test_workers() -> int:
    """pytest-xdist processes for the suite: $TEST_WORKERS, else one per core, at most 4, and at most one per
    8 GiB of memory (the 1B HF parity test alone holds about 12 GiB). Two on this project's 2-core CI
    machines: a training test leaves a core partly idle (process start-up, imports, small kernels), so
    two files at a time finish the suite sooner than one."""
    if os.environ.get("TEST_WORKERS"):
        return max(1, int(os.environ["TEST_WORKERS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        mem_gib = 8.0
    return max(1, min(cores, 4, int(mem_gib // 8)))


def _parallel() -> tuple[str, ...]:
    """``-n N --dist loadfile``: each test file runs whole in one worker, so module fixtures (a recipe's
    reference run, a converted dataset) are built once; N = 1 runs the suite in this process."""
    n = test_workers()
    return ("-n", str(n), "--dist", "loadfile") if n > 1 else ()


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: unit tests and real CPU training runs, two test files at a time on 2 cores
    (TEST_WORKERS=1 for one at a time)."""
    _pytest(session, *_parallel())


@nox.session
def tests_fast(session: nox.Session) -> None:
    """Unit tests and fast integration tests (-m 'not slow')."""
    _pytest(session, *_parallel(), "-m", "not slow")


@nox.session
def debug(session: nox.Session) -> None:
    """Train the debug recipe on the embedded Tiny Shakespeare corpus and check its loss curve."""
    py = pinned_env(session)
    run_dir = ROOT / "runs" / f"debug-{time.strftime('%Y%m%d-%H%M%S')}"
    env = {"NGPU": os.environ.get("NGPU", "1"), "RUN_DIR": str(run_dir), "PYTHON": py}
    if not session.posargs:  # `fixtures check` below prints the table and sets the exit status
        env["TITAN_RECIPES_NO_FIXTURE_CHECK"] = "1"
    try:
        session.run(str(ROOT / "recipes" / "debug" / "run_train.sh"), *session.posargs, env=env, external=True)
        if not session.posargs:
            session.run(py, "-m", "titan_recipes.cli", "fixtures", "check", "recipes/debug", str(run_dir), external=True)
    finally:  # also after a failure: the run directory and the command are what one looks at next
        session.log(f"run directory: {run_dir.relative_to(ROOT)}")
        session.log(COMMAND_HINT)


@nox.session
def smoke(session: nox.Session) -> None:
    """Train every recipe with each CPU fixture entry of this torch version and compare."""
    py = pinned_env(session)
    script = (
        "import sys, torch, json, pathlib\n"
        "v = torch.__version__.split('+')[0]\n"
        "for f in sorted(pathlib.Path('recipes').glob('*/expected_loss.json')):\n"
        "    for key, e in json.loads(f.read_text())['entries'].items():\n"
        "        if key.startswith(f'cpu-torch{v}-'):\n"
        "            print(f.parent, e['nproc'])\n"
    )
    plan = session.run(py, "-c", script, external=True, silent=True).split("\n")
    plan = [line.split() for line in plan if line.strip()]
    if not plan:
        session.error("no CPU fixture entries for this torch version: nothing to smoke-test")
    for recipe, nproc in plan:
        session.run(py, "-m", "titan_recipes.cli", "fixtures", "verify", recipe, "--nproc", nproc, external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """MDS loader throughput (0/1/2 workers vs the H100 demand) and remote streaming (moto S3 on
    127.0.0.1, cold vs warm cache, zstd vs none), llm-foundry's MDS layouts (text tokenized on the fly,
    token ndarray/bytes packed; tok/s per rank vs the 1B demand and encode_batch), then the mixture loader (embedded vs served tok/s per
    rank, registration rows/s; its own defaults), then data preparation (``titan-recipes prepare`` vs the bare
    tokenizer, 2 vs 1 workers, the SlimPajama projection; mixture registration vs DuckDB ``read_json``;
    the BlendCorpus cold index build vs megatron-core's builder). Results: runs/bench/*.json, *.png. Arguments after
    ``--`` go to the two MDS scripts, e.g. ``nox -s bench -- --samples 6000 --seq-len 2048``."""
    py = pinned_env(session)
    for script in ("bench_mds_loader.py", "bench_mds_remote.py"):
        session.run(py, str(ROOT / "scripts" / script), "--out", str(ROOT / "runs" / "bench"), *session.posargs, external=True)
    session.run(py, str(ROOT / "scripts" / "bench_mds_layouts.py"), "--out", str(ROOT / "runs" / "bench"), external=True)
    session.run(py, str(ROOT / "scripts" / "bench_mixture.py"), "--out", str(ROOT / "runs" / "bench"), external=True)
    # Data preparation (issue 18): prepare vs encode_batch and 2 vs 1 workers, the SlimPajama-627B
    # projection; mixture registration vs DuckDB read_json; BlendCorpus cold index vs megatron-core.
    for script in ("bench_prepare.py", "bench_mixture_register.py", "bench_blend_index.py"):
        session.run(py, str(ROOT / "scripts" / script), "--out", str(ROOT / "runs" / "bench"), external=True)


# Container sessions. The package titan_recipes.image builds every command line
# (tests/unit/test_container.py checks them); these sessions only run them. README, "On a cluster".
IMAGE_PY = Path("/opt/venv/bin/python")  # the image's interpreter (Dockerfile)


def _container():
    """The package src/titan_recipes/image, loaded by path under the name ``titan_recipes_image``: it
    needs only the standard library and its modules import each other relatively, so `image` and
    `enroot` run with nox's own Python on a build machine that has no .venv, no torch and no installed
    titan-recipes (nothing is added to sys.path)."""
    import importlib.util

    package = ROOT / "src" / "titan_recipes" / "image"
    spec = importlib.util.spec_from_file_location(
        "titan_recipes_image", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the relative imports look their package up here
    spec.loader.exec_module(module)
    return module


def _image_plan(session: nox.Session):
    """(container module, engine, lock, tag) from $CONTAINER_ENGINE, $GPU_LOCK and $IMAGE_TAG."""
    c = _container()
    try:
        lock = c.read_lock(Path(os.environ.get("GPU_LOCK", ROOT / c.GPU_LOCK)))
        engine = c.detect_engine()
        tag = os.environ.get("IMAGE_TAG") or c.image_tag(lock, c.project_version(ROOT))
    except c.ContainerError as e:
        session.error(str(e).rstrip("."))  # nox adds the full stop
    return c, engine, lock, tag


@nox.session
def image(session: nox.Session) -> None:
    """Build the GPU image from the Dockerfile and env/gpu.lock with docker or podman (whichever has a
    working engine; $CONTAINER_ENGINE picks). Tag: titan-recipes:<version>-torch<torch>, or $IMAGE_TAG;
    another lock: $GPU_LOCK. Arguments after ``--`` go to ``<engine> build`` (``-- --no-cache``)."""
    c, engine, lock, tag = _image_plan(session)
    command = c.build_command(
        engine, lock, tag, context=ROOT, dockerfile=ROOT / "Dockerfile", revision=c.git_revision(ROOT), extra=session.posargs
    )
    session.run(*command, external=True)
    session.log(f"built {tag}; next: nox -s enroot")


@nox.session
def enroot(session: nox.Session) -> None:
    """Import the image built by `nox -s image` into a squashfs file for pyxis/enroot:
    ``nox -s enroot [-- OUTPUT.sqsh]`` (default runs/images/<tag>.sqsh)."""
    c, engine, lock, tag = _image_plan(session)
    output = Path(session.posargs[0]) if session.posargs else ROOT / "runs" / "images" / (tag.replace(":", "-") + ".sqsh")
    try:
        c.require_enroot()
    except c.ContainerError as e:
        session.error(str(e).rstrip("."))
    if not c.image_present(engine, tag):
        session.error(f"image {tag} not found in {engine.name}'s local images: build it first with `nox -s image`")
    output.parent.mkdir(parents=True, exist_ok=True)
    session.run(*c.enroot_import_command(engine, tag, output), external=True)
    session.log(f"image file: {output} (IMAGE={output} sbatch slurm/train.sbatch ...)")


@nox.session
def gpu(session: nox.Session) -> None:
    """Train a recipe on this node's GPUs through its run_train.sh with the overrides of its fixture for
    this GPU type, compare the losses and print throughput/MFU:
    ``nox -s gpu [-- recipes/debug --nproc 8 [-- --training.steps 50]]``. Interpreter: $PYTHON, else the
    image's /opt/venv/bin/python inside the image, else .venv (a CPU build: the session then says so)."""
    py = os.environ.get("PYTHON") or (str(IMAGE_PY) if IMAGE_PY.exists() else pinned_env(session))
    session.run(py, "-m", "titan_recipes.cli", "image", "gpu", *(session.posargs or ["recipes/debug"]), external=True)


# The prepared check of a GPU node without internet (README, "On a cluster"): scripts/gpu_check.py does
# the work; titan_recipes.gpu_check_plan/_steps/_report build its command lines and report.


@nox.session
def wheelhouse(session: nox.Session) -> None:
    """Download into wheelhouse/ the cp312 manylinux wheels of env/wheelhouse.txt (what a GPU node's image
    lacks), keeping those already there; needs a package index (a login node). Prints the size (<= 60 MiB)."""
    session.run(sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "wheelhouse", *session.posargs, external=True)


@nox.session
def gpu_check(session: nox.Session) -> None:
    """On a GPU node: install wheelhouse/ into a fresh --target directory, train every recipe's debug config
    (fixture compared or recorded), the 1B at 4 x 4096 with compile on random tokens and MDS, float8;
    writes runs/gpu_check-<time>/gpu_check.{json,png} and prints the table. Interpreter: $PYTHON, else
    python3 (the node's, which holds CUDA torch). ``nox -s gpu_check -- --dry-run`` on a CPU machine
    (.venv's python) checks the wheelhouse, installs and imports it, trains 2 CPU steps, prints the plan."""
    dry = "--dry-run" in session.posargs
    py = os.environ.get("PYTHON") or (pinned_env(session) if dry else "python3")
    session.run(py, str(ROOT / "scripts" / "gpu_check.py"), *session.posargs, external=True)
