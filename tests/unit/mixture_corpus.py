"""A tiny SlimPajama-format corpus with hand-known counts, for the mixture-engine tests.

Three files, 300 samples (the index assigns ids in sorted path order, then line order)::

    part-00.jsonl       C4 x 50, Github x 30, Wikipedia x 20     (plain, with one blank line)
    part-01.jsonl.gz    C4 x 40, Github x 20, Book x 40          (gzip)
    part-02.jsonl.zst   C4 x 30, Wikipedia x 40, ArXiv x 30      (zstd)

    totals: C4 120, Github 50, Wikipedia 60, Book 40, ArXiv 30

Domains are interleaved within each file. Every record also has ``meta.quality``: the j-th sample of a
domain within a file has quality ``(j % 10) / 10``, so each quality value holds exactly a tenth of
every (file, domain) run.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import zstd

C4, GITHUB, WIKI, BOOK, ARXIV = (f"RedPajama{n}" for n in ("C4", "Github", "Wikipedia", "Book", "ArXiv"))

FILES: dict[str, dict[str, int]] = {
    "part-00.jsonl": {C4: 50, GITHUB: 30, WIKI: 20},
    "part-01.jsonl.gz": {C4: 40, GITHUB: 20, BOOK: 40},
    "part-02.jsonl.zst": {C4: 30, WIKI: 40, ARXIV: 30},
}
TOTALS = {ARXIV: 30, BOOK: 40, C4: 120, GITHUB: 50, WIKI: 60}
BLANK_AFTER = 3
"""part-00.jsonl has a blank line after its 3rd record (line 4), which the index skips."""


@dataclass(frozen=True)
class Sample:
    id: int
    file: str
    line: int
    domain: str
    quality: float


def _records(counts: dict[str, int], file: str) -> list[tuple[str, float]]:
    """Domains interleaved round-robin while they last; (domain, quality) per record."""
    left = dict(counts)
    seen = {d: 0 for d in counts}
    out = []
    while any(left.values()):
        for d in counts:
            if left[d]:
                out.append((d, (seen[d] % 10) / 10))
                seen[d] += 1
                left[d] -= 1
    return out


def write_corpus(directory: Path) -> list[Sample]:
    """Write the corpus into ``directory``; the samples in index id order."""
    directory.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for name in sorted(FILES):
        lines = []
        for j, (domain, quality) in enumerate(_records(FILES[name], name)):
            record = {"text": f"{name} sample {j} of {domain}", "meta": {"redpajama_set_name": domain, "quality": quality}}
            lines.append(json.dumps(record) + "\n")
            samples.append(Sample(len(samples), name, len(lines), domain, quality))
            if name == "part-00.jsonl" and j + 1 == BLANK_AFTER:
                lines.append("\n")
        data = "".join(lines).encode()
        path = directory / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(data))
        elif name.endswith(".zst"):
            path.write_bytes(zstd.compress(data))
        else:
            path.write_bytes(data)
    return samples


@dataclass
class RegisteredCorpus:
    root: Path
    """The corpus files (:func:`write_corpus`)."""
    index_dir: Path
    """A sample index with the corpus registered as dataset ``sp``."""
    samples: list[Sample]


def registered_corpus(tmp_path_factory, parser=None) -> RegisteredCorpus:
    """The test corpus written and registered into a fresh sample index (``parser``: the registration's)."""
    from titan_recipes.data.mixture import SampleIndex

    root = tmp_path_factory.mktemp("corpus")
    samples = write_corpus(root)
    index_dir = tmp_path_factory.mktemp("index")
    with SampleIndex(index_dir) as index:
        index.register_dataset("sp", root, progress=False, **({"parser": parser} if parser is not None else {}))
    return RegisteredCorpus(root=root, index_dir=index_dir, samples=samples)
