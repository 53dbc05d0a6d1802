"""The embedded SlimPajama-format sample (assets/data/slimpajama_sample) is what
scripts/make_slimpajama_sample.py makes, byte for byte, and registers with the SlimPajama parser."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from titan_recipes.data.mixture import SampleIndex

REPO = Path(__file__).resolve().parents[4]
SAMPLE = REPO / "assets" / "data" / "slimpajama_sample"


def _script():
    spec = importlib.util.spec_from_file_location("make_slimpajama_sample", REPO / "scripts" / "make_slimpajama_sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_sample_equals_the_scripts_output(tmp_path):
    made = _script().write_sample(tmp_path)
    assert [p.relative_to(tmp_path) for p in made] == [
        Path(f"train/chunk1/example_train_{i}.jsonl.zst") for i in range(3)
    ]
    for path in made:
        assert path.read_bytes() == (SAMPLE / path.relative_to(tmp_path)).read_bytes(), path.name


def test_sample_registers_three_domains_of_301_documents(tmp_path):
    with SampleIndex(tmp_path / "index") as index:
        report = index.register_dataset("slimpajama", SAMPLE, parser="slimpajama", progress=False)
        assert report.samples_total == 903
        assert index.domain_counts("redpajama_set_name") == {
            "RedPajamaBook": 301, "RedPajamaC4": 301, "RedPajamaGithub": 301,
        }
