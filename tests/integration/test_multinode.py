"""Two nodes for real on one machine: slurm/train.sbatch itself, with its own torchrun line on each node.

A stand-in ``srun`` starts the job step's tasks as Slurm does with ``--ntasks-per-node=1``: one task per
node, all at once, each with its node's SLURM_NODEID/SLURM_PROCID/SLURMD_NODENAME and its node-local
HOME and XDG_CACHE_HOME (``<job>/node<N>/``) and TMPDIR (``<scratch>/node<N>``, a short path: reader
workers need one, see the ``scratch`` fixture), started in its own directory; it passes SIGTERM
on to nobody (Slurm signals every process itself) and waits for its tasks. A stand-in ``scontrol show
hostnames`` names 127.0.0.1 for both nodes, so the two torchrun agents (``--nnodes 2 --nproc_per_node
1``) meet in a c10d rendezvous on 127.0.0.1:MASTER_PORT. Everything else is the real job script, the
real torchrun and the real trainer; ``PYTHON`` is this interpreter (no container).

Each test trains a recipe for its fixture's 20 steps, SIGTERMs every process of the job (batch shell,
srun, both torchruns, both trainers and their readers) while it trains, as Slurm does on preemption,
then launches the same script again as the requeued job (same job id and run directory,
SLURM_RESTART_COUNT=1). The resumed run is held to the recipe's one-node 2-process fixture
(``cpu-torch<ver>-2``) within its measured tolerance, and bit for bit to an uninterrupted one-node
2-process run: the fixture's own losses when this machine is the kind that recorded it (CPU model, core
count, kernel level, threads), else a reference run launched here. So 2 nodes x 1 process, preempted
and requeued, train exactly as 1 node x 2 processes.

Node-local directories: each task gets its own TMPDIR/HOME/XDG_CACHE_HOME and starts in its own
directory; the test checks (in /proc) that each node's trainer runs with its node's, in the shared
checkout (the launch line cds there), and writes into the one shared run directory (both checkpoint
shards, one metrics.jsonl) and its own torchrun log directory (logs/node<N>). debug_mds streams its
training shards from a real S3-compatible server (moto on 127.0.0.1) into each node's own cache,
``local = "${TMPDIR}/mds/train"`` expanded on that node; the mixture reads the shared DuckDB index and
the documents' files in place, as on a cluster's shared filesystem.

OMP_NUM_THREADS=1: torchrun sets it only with more than one process per node; the fixture's processes
ran with one thread each (its provenance says torch_threads 1), and two nodes share the machine's cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from launching import (
    REPO, assert_ok, launch, process_children, process_cmdline, process_descendants, process_parents, wait_for_step,
    finish,
)
from titan_recipes import fixtures as fx
from titan_recipes.data.mixture.spawn import free_port
from titan_recipes.train import PREEMPTED_FILE

SBATCH = REPO / "slurm" / "train.sbatch"
NODES = 2
STEPS, INTERVAL = 20, 10  # the recipes' train.toml, which the fixtures were recorded with
SIGNAL_AFTER_STEP = 4
TIMEOUT_S = 900  # generous: the CPUs of this machine are shared
JOB_ID = "4343"


@pytest.fixture
def scratch():
    """The nodes' local temporary directories (TMPDIR), on a short path of their own: reader workers need
    TMPDIR short enough for a Unix socket path (titan_recipes.data.workers.check_worker_socket_dir)."""
    path = Path(tempfile.mkdtemp(prefix="nodes-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _stand_ins(job: Path, scratch: Path) -> Path:
    """srun and scontrol for a 2-node allocation whose nodes are both this machine."""
    bin_dir = job / "bin"
    bin_dir.mkdir(parents=True)
    _executable(bin_dir / "srun", f"""
while [[ "$1" == -* ]]; do shift; done  # the container options: no container here
trap 'true' TERM  # like srun: survive the job's SIGTERM and wait for the tasks (children get SIG_DFL)
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    dir="{job}/node$node"
    mkdir -p "{scratch}/node$node" "$dir/home" "$dir/work"
    (cd "$dir/work" && SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 SLURMD_NODENAME=node$node \\
        TMPDIR="{scratch}/node$node" HOME="$dir/home" XDG_CACHE_HOME="$dir/home/.cache" \\
        exec "$@") > "$dir/task${{SLURM_RESTART_COUNT:-0}}.out" 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${{pids[@]}}"; do
    while true; do wait "$pid"; status=$?; kill -0 "$pid" 2>/dev/null || break; done
    (( status > rc )) && rc=$status
done
exit $rc
""")
    _executable(bin_dir / "scontrol", f"""
case "$1" in
  show) for ((i = 0; i < SLURM_NNODES; i++)); do echo 127.0.0.1; done ;;
  requeue) echo "$2" >> "{job}/requeued" ;;
esac
""")
    return bin_dir


def _start(job: Path, config: Path, port: int, restart: int) -> tuple[subprocess.Popen, Path]:
    """slurm/train.sbatch as Slurm's batch step runs it: in its own session, from the submit directory."""
    env = {
        **os.environ, "PATH": f"{job / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "titan-recipes", "SLURM_NNODES": str(NODES),
        "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_SUBMIT_DIR": str(REPO), "SLURM_RESTART_COUNT": str(restart),
        "IMAGE": "docker://titan-recipes:unused", "GPUS_PER_NODE": "1", "RUN_DIR": str(job / "run"),
        "CONFIG_FILE": str(config), "MASTER_PORT": str(port), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
    }
    out = job / f"sbatch{restart}.out"
    with out.open("w") as f:
        proc = subprocess.Popen(["bash", str(SBATCH)], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, out


def _kill_job(proc: subprocess.Popen | None) -> None:
    """After a failed assertion: nothing of the job may outlive the test (torchrun's workers and their
    readers are in their own process groups, so the batch shell's group is not enough)."""
    if proc is None or proc.poll() is not None:
        return
    for pid in [proc.pid, *process_descendants(proc.pid, process_parents())]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _job_log(job: Path, restart: int) -> str:
    """The batch script's output and both tasks' (srun's per-node output)."""
    parts = [(job / f"sbatch{restart}.out").read_text()]
    parts += [(job / f"node{n}" / f"task{restart}.out").read_text() for n in range(NODES)
              if (job / f"node{n}" / f"task{restart}.out").is_file()]
    return "\n".join(parts)


def _trainers(job_pid: int) -> dict[int, dict]:
    """Global rank -> the trainer process of the running job: its node's environment and cwd."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        table = process_parents()
        # By argv: srun's own command line holds the launch line's text, "torch.distributed.run" included.
        agents = [p for p in process_descendants(job_pid, table)
                  if process_cmdline(p).split()[1:3] == ["-m", "torch.distributed.run"]]
        trainers = [p for a in agents for p in process_children(a, table) if "titan_recipes.train" in process_cmdline(p)]
        if len(agents) == NODES and len(trainers) == NODES:
            out = {}
            for pid in trainers:
                raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
                env = dict(v.split("=", 1) for v in raw if "=" in v)
                agent = process_cmdline(table[pid]).split()
                out[int(env["RANK"])] = {"env": env, "cwd": os.readlink(f"/proc/{pid}/cwd"), "agent": agent}
            return out
        time.sleep(0.2)
    raise AssertionError(f"no {NODES} torchrun agents with one trainer each under the job (pid {job_pid})")


def _preempt(job_pid: int) -> int:
    """SIGTERM to every process of the job, the batch shell included, as Slurm preempts; returns how many."""
    pids = [job_pid, *process_descendants(job_pid, process_parents())]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return len(pids)


def _same_machine_as_fixture(entry: dict, run: Path) -> bool:
    """Whether this machine's kernels are the fixture's: then its losses must be reproduced bit for bit."""
    recorded, here = entry["provenance"]["machine"], fx.run_info(run)["hardware"]
    return all(here.get(k) == recorded.get(k) for k in ("cpu_model", "cpu_count", "cpu_capability", "torch_threads"))


def _train_preempt_and_requeue(recipe: Path, job: Path, config: Path, reference_env: dict[str, str],
                               scratch: Path) -> None:
    """The whole scenario, with every assertion on its launches; the job is killed if one fails."""
    launched: list[subprocess.Popen] = []
    try:
        _scenario(recipe, job, config, reference_env, scratch, launched)
    finally:
        for proc in launched:
            _kill_job(proc)


def _scenario(recipe: Path, job: Path, config: Path, reference_env: dict[str, str], scratch: Path,
              launched: list[subprocess.Popen]) -> None:
    key = fx.current_key(NODES)
    entry = fx.get_entry(recipe, key)
    assert entry["overrides"] == [] and len(entry["losses"]) == STEPS  # the job runs train.toml unchanged
    _stand_ins(job, scratch)
    run = job / "run"
    port = free_port()

    proc, out = _start(job, config, port, restart=0)
    launched.append(proc)
    wait_for_step(proc, job / "run" / "metrics.jsonl", SIGNAL_AFTER_STEP, lambda: _job_log(job, 0), TIMEOUT_S)
    trainers = _trainers(proc.pid)
    signalled = _preempt(proc.pid)
    text = finish(proc, out, TIMEOUT_S)
    log = _job_log(job, 0)
    assert proc.returncode == 143, f"the batch script should exit 143 after SIGTERM, got {proc.returncode}:\n{log[-6000:]}"
    assert "not requeueing from the script" in text and not (job / "requeued").exists()
    assert f"2 node(s) x 1, config {config}, run directory {run}, rendezvous 127.0.0.1:{port}" in text
    marker = json.loads((run / PREEMPTED_FILE).read_text())
    step = marker["step"]
    assert SIGNAL_AFTER_STEP <= step < INTERVAL, f"stopped at step {step} ({signalled} processes signalled)"
    assert marker["exit_code"] == 143 and marker["checkpoint"] == f"checkpoint/step-{step}"
    assert sorted(fx.run_losses(run)) == list(range(1, step + 1))
    shards = sorted(p.name for p in (run / "checkpoint" / f"step-{step}").glob("*.distcp"))
    assert shards == ["__0_0.distcp", "__1_0.distcp"]  # one shard per node, in the one shared run directory

    # Each node: its own rank, its node's environment and node-local directories; the checkout is shared.
    nodes = {int(t["env"]["SLURM_NODEID"]) for t in trainers.values()}
    assert sorted(trainers) == [0, 1] and nodes == {0, 1}
    for t in trainers.values():
        env, node_dir = t["env"], job / f"node{t['env']['SLURM_NODEID']}"
        assert (env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", "0", "1")
        assert env["GROUP_RANK"] == env["RANK"]  # node rank, assigned by the c10d rendezvous
        assert env["SLURMD_NODENAME"] == f"node{env['SLURM_NODEID']}"
        assert (env["TMPDIR"], env["HOME"]) == (str(scratch / f"node{env['SLURM_NODEID']}"), str(node_dir / "home"))
        assert f"--rdzv_endpoint=127.0.0.1:{port}" in t["agent"] and "--nproc_per_node=1" in t["agent"]
        assert t["cwd"] == str(REPO)  # the launch line cds into the checkout, whatever srun's directory

    # The requeued job: same job id and run directory; both nodes resume from the preemption checkpoint.
    proc, out = _start(job, config, port, restart=1)
    launched.append(proc)
    text = finish(proc, out, TIMEOUT_S)
    log = _job_log(job, 1)
    assert proc.returncode == 0, f"the requeued job failed (exit {proc.returncode}):\n{log[-6000:]}"
    assert "srun exited with status 0" in text
    assert f"Training starts at step {step + 1}" in log
    assert not (run / PREEMPTED_FILE).exists()
    got = fx.run_losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    result = fx.check_run(recipe, run, key=key)
    assert result.ok, result.table()
    for node in range(NODES):  # torchrun --log-dir: one directory per node, one run id per launch
        assert len(list((run / "logs" / f"node{node}").glob(f"{JOB_ID}_*/attempt_0/0/stdout.log"))) == 2
    if _same_machine_as_fixture(entry, run):
        want = {int(s): v for s, v in entry["losses"].items()}
    else:  # another machine: an uninterrupted one-node 2-process run here is the exact reference
        reference = job / "reference"
        assert_ok(launch(recipe, NODES, reference, env={**reference_env, "OMP_NUM_THREADS": "1"}))
        want = fx.run_losses(reference)
    assert got == want  # bitwise: 2 nodes x 1 process, preempted and requeued == 1 node x 2 processes


@contextlib.contextmanager
def _s3_bucket(bucket: str, monkeypatch: pytest.MonkeyPatch):
    """A real S3-compatible server (moto) on 127.0.0.1 with ``bucket``; its endpoint and test credentials
    are in this process's environment, which the job's processes inherit."""
    import boto3
    from moto import server as moto_server

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {"S3_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        client.create_bucket(Bucket=bucket)
        yield client
    finally:
        server.stop()


@pytest.mark.slow
def test_debug_mds_two_nodes_preempted_and_requeued(tmp_path, monkeypatch, scratch):
    """The training stream comes from S3 into each node's own cache, ``local = "${TMPDIR}/mds/train"``:
    one TOML for the job, expanded on each node (its TMPDIR is node-local), as a cluster caches shards on
    node-local disks. The held-out stream stays on the shared filesystem."""
    recipe = REPO / "recipes" / "debug_mds"
    data = tmp_path / "data"
    subprocess.run(["scripts/make_shakespeare_mds.sh", str(data), sys.executable], cwd=REPO, check=True,
                   capture_output=True)
    config = tmp_path / "config" / "train.toml"  # the fixture's file name, its data paths in tmp_path
    config.parent.mkdir()
    toml = (recipe / "train.toml").read_text()
    assert toml.count('local = "data/debug_mds/train"') == 1 and toml.count('"data/debug_mds/val"') == 1
    toml = toml.replace('local = "data/debug_mds/train"\n', "").replace('"data/debug_mds/val"', f'"{data}/val"')
    config.write_text(toml + '\n[mosaic_dataloader.dataset.streams.train]\n'
                      'remote = "s3://corpus/debug_mds/train"\nlocal = "${TMPDIR}/mds/train"\n')
    (scratch / "reference").mkdir()
    with _s3_bucket("corpus", monkeypatch) as client:
        shards = sorted(p.name for p in (data / "train").iterdir())
        for name in shards:
            client.upload_file(str(data / "train" / name), "corpus", f"debug_mds/train/{name}")
        # run_train.sh (the fallback reference) reads the same config, caching into its own TMPDIR.
        _train_preempt_and_requeue(recipe, tmp_path / "job", config,
                                   {"DATA_DIR": str(data), "CONFIG_FILE": str(config), "TMPDIR": str(scratch / "reference")},
                                   scratch)
    for node in range(NODES):  # each node downloaded into its own cache; nothing went to the shared paths
        cache = scratch / f"node{node}" / "mds" / "train"
        assert (cache / "index.json").is_file() and list(cache.glob("shard.*.mds")), sorted(cache.glob("*"))
    assert sorted(p.name for p in (data / "train").iterdir()) == shards


@pytest.mark.slow
def test_mixture_two_nodes_preempted_and_requeued(tmp_path, scratch):
    recipe = REPO / "recipes" / "mixtera_slimpajama"
    index = tmp_path / "data" / "index"
    subprocess.run([sys.executable, "-m", "titan_recipes.cli", "mixture", "register", str(index),
                    "assets/data/slimpajama_sample", "--name", "slimpajama", "--parser", "slimpajama"],
                   cwd=REPO, check=True, capture_output=True)
    config = tmp_path / "config" / "train.toml"
    config.parent.mkdir()
    toml = (recipe / "train.toml").read_text()
    assert toml.count('index_dir = "data/mixtera_slimpajama/index"') == 1
    config.write_text(toml.replace('index_dir = "data/mixtera_slimpajama/index"', f'index_dir = "{index}"'))
    # run_train.sh (the fallback reference) finds the index registered and reads it (--mixture.index_dir).
    _train_preempt_and_requeue(recipe, tmp_path / "job", config,
                               {"DATA_DIR": str(index.parent), "CONFIG_FILE": str(config)}, scratch)
