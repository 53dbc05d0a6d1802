"""Each command-line summary appears once: the library returns it (and logs it at DEBUG), the command
prints it. Run as subprocesses, so that the commands' own logging setup is what is tested."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
TOKENIZER_DIR = REPO_ROOT / "assets" / "tokenizers" / "shakespeare-bpe-2048"


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def test_mds_convert_prints_its_summary_once(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Speak, friend {i}, and enter the castle at night." for i in range(40)))
    out = tmp_path / "mds"
    output = run("scripts/mds_convert.py", str(text), "--tokenizer", str(TOKENIZER_DIR), "--seq-len", "16",
                 "--out", str(out), "--no-progress")
    summaries = re.findall(rf"(?im)^.*wrote {re.escape(str(out))}\b.*$", output)
    assert len(summaries) == 1, output
    assert "40 documents" in summaries[0]


def test_mixture_register_prints_its_summary_once(tmp_path):
    output = run("-m", "titan_recipes.cli", "mixture", "register", str(tmp_path / "index"),
                 str(REPO_ROOT / "assets" / "data" / "slimpajama_sample"), "--name", "sp", "--no-progress")
    summaries = re.findall(r"(?im)^.*indexed 3 file\(s\).*$", output)
    assert len(summaries) == 1, output
    assert "903 new sample(s)" in summaries[0]
