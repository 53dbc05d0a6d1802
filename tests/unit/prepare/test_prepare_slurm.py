"""``titan-recipes prepare ... --slurm`` with stand-in ``sbatch`` / ``srun`` / ``scontrol`` (no Slurm here), as
the tests of slurm/train.sbatch do: datatrove's SlurmPipelineExecutor writes and submits the real job
scripts; the stand-in sbatch records its arguments and runs each script at once, one array element after
another, with the environment Slurm gives it. The result must equal a local run's, the final job must
depend on the array (afterok), a failed element must be the only one resubmitted by a rerun, and the
documented chain (training ``--dependency=afterok`` on the final job) must name that job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_prepare import REPO, TOKENIZER, manifest, outputs, prepare, write_corpus

SBATCH = r"""#!/usr/bin/env bash
# Stand-in sbatch: record, then run datatrove's scripts at once (array elements in turn); record others only.
script="${@: -1}"
id=$(( $(cat "$STANDIN_DIR/next_id" 2>/dev/null || echo 100) + 1 )); echo $id > "$STANDIN_DIR/next_id"
echo "job $id: $*" >> "$STANDIN_DIR/sbatch.log"
cp "$script" "$STANDIN_DIR/job_$id.sh"
if grep -q -e launch_pickled_pipeline -e merge_stats "$script"; then
  range=$(grep -oP '^#SBATCH --array=\K[0-9]+-[0-9]+' "$script" || echo 0-0)
  for kv in $(echo "$*" | grep -oP -- '--export=ALL,\K\S+' | tr ',' ' '); do export "$kv"; done
  for i in $(seq "${range%-*}" "${range#*-}"); do
    if grep -q -- '^#SBATCH --array' "$script"; then export SLURM_ARRAY_TASK_ID=$i; fi
    if [ "$i" = "${FAIL_ELEMENT:-none}" ] && grep -q launch_pickled "$script" && [ ! -e "$STANDIN_DIR/failed_once" ]; then
      touch "$STANDIN_DIR/failed_once"; echo "job $id element $i: node failure" >> "$STANDIN_DIR/sbatch.log"; continue
    fi
    SLURM_JOB_ID=$id SLURM_NODELIST=node001 bash "$script" > "$STANDIN_DIR/job_${id}_$i.out" 2>&1 \
      || echo "job $id element $i exited $?" >> "$STANDIN_DIR/sbatch.log"
  done
fi
echo "Submitted batch job $id"
"""
SRUN = r"""#!/usr/bin/env bash
printf '%s\n' "$*" >> "$STANDIN_DIR/srun.args"
while [[ "$1" == -* ]]; do case "$1" in -n|-N) shift;; esac; shift; done
exec "$@"
"""
SCONTROL = """#!/usr/bin/env bash
[[ "$1 $2" == "show hostnames" ]] && echo node001
exit 0
"""


def standins(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    # launch_pickled_pipeline / merge_stats are datatrove's console scripts, beside this interpreter.
    return {"PATH": f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "STANDIN_DIR": str(tmp_path)}


def jobs(tmp_path: Path) -> list[str]:
    return (tmp_path / "sbatch.log").read_text().splitlines()


def test_slurm_array_then_final_job_equals_a_local_run(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, files=3, docs=60)
    prepare("mds", corpus, "--out", tmp_path / "local", "--tokenizer", TOKENIZER, "--seq-len", 64)
    env = standins(tmp_path)
    proc = prepare("mds", corpus, "--out", tmp_path / "out", "--tokenizer", TOKENIZER, "--seq-len", 64, "--slurm",
                   "--partition", "cpu", "--time", "02:00:00", "--container-image", "/images/titan.sqsh",
                   "--nodes", "2", "--cores-per-node", "4", "--sbatch-arg", "account=proj", "--print-job-id", **env)
    final = proc.stdout.strip()
    log = jobs(tmp_path)
    array = next(line for line in log if "RUN_OFFSET" in line and "dependency" not in line).split(":")[0].split()[1]
    assert any(line.startswith(f"job {final}: --export=ALL,RUN_OFFSET=0 --dependency=afterok:{array} ") for line in log), log
    script = (tmp_path / f"job_{array}.sh").read_text()
    for line in ("#SBATCH --array=0-2%8", "#SBATCH --partition=cpu", "#SBATCH --time=02:00:00", "#SBATCH --account=proj"):
        assert line in script, script
    srun = (tmp_path / "srun.args").read_text()
    assert "--container-image=/images/titan.sqsh" in srun and f"--container-mounts={tmp_path / 'out'}:{tmp_path / 'out'}" in srun
    assert outputs(tmp_path / "out") == outputs(tmp_path / "local")
    assert manifest(tmp_path / "out")["content_fingerprint"] == manifest(tmp_path / "local")["content_fingerprint"]
    stats = json.loads((tmp_path / "out" / ".prepare" / "logs" / "tasks" / "stats" / "00001.json").read_text())
    assert any("documents" in step.get("stats", {}) for step in stats), stats  # datatrove's per-task stats
    assert (tmp_path / "out" / ".prepare" / "logs" / "tasks" / "logs" / "task_00002.log").is_file()


def test_a_failed_array_element_is_the_only_one_resubmitted_and_training_chains_on_the_final_job(tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, files=3, docs=40)
    env = standins(tmp_path)
    args = ("blendcorpus", corpus, "--out", tmp_path / "out", "--tokenizer", TOKENIZER, "--corpus", "web", "--slurm",
            "--partition", "cpu", "--time", "01:00:00", "--venv", sys.prefix, "--print-job-id")
    first = prepare(*args, FAIL_ELEMENT="1", **env)
    assert not (tmp_path / "out" / "blend.txt").exists()  # the final job found task 1 missing and wrote nothing
    finals = [p for p in (tmp_path).glob("job_*_0.out") if "finalize" in p.read_text()]
    assert any("task 1" in p.read_text() and "Rerun the same" in p.read_text() for p in finals)
    # The documented chain: training submitted with --dependency=afterok on the id the rerun prints.
    chain = subprocess.run(
        ["bash", "-c", f"set -e; JOB=$({sys.executable} -m titan_recipes.cli prepare " + " ".join(map(str, args))
         + " --no-progress); sbatch --dependency=afterok:$JOB slurm/train.sbatch recipes/debug_mds/train.toml"],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=300)
    assert chain.returncode == 0, chain.stderr[-3000:]
    log = jobs(tmp_path)
    resubmitted = (tmp_path / "out" / ".prepare" / "logs" / "tasks" / "ranks_to_run.json").read_text()
    assert json.loads(resubmitted) == [1], resubmitted
    finals = [line.split(":")[0].split()[1] for line in log if "RUN_OFFSET=0 --dependency=afterok:" in line]
    assert len(finals) == 2  # the first run's final job, and the rerun's
    assert log[-1].endswith(f"--dependency=afterok:{finals[-1]} slurm/train.sbatch recipes/debug_mds/train.toml"), log
    assert (tmp_path / "out" / "blend.txt").is_file() and first.stdout.strip()
