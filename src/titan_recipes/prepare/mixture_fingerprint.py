"""The content fingerprint of a mixture index: one order-free hash over every sample row of a dataset.

A row is what training reads for a sample: its file's path, line, byte offset, length and property
values. The sum of DuckDB's ``hash()`` of the rows does not depend on row ids or insertion order, so
an index built by 1 or 4 workers, or resumed after a crash, has the same fingerprint as long as it
indexes the same rows. (``hash`` is DuckDB's; the manifest records the DuckDB version with it.)
"""

from __future__ import annotations

from pathlib import Path


def index_fingerprint(index_dir: str | Path, dataset: str) -> str:
    from ..data.mixture.index import SampleIndex

    index = SampleIndex(index_dir, read_only=True)
    try:
        props = [r[0] for r in index.con.execute("SELECT name FROM properties ORDER BY name").fetchall()]
        columns = ", ".join(["f.path", "s.line", "s.byte_offset", "s.n_bytes", *(f's."{p}"' for p in props)])
        total, rows = index.con.execute(
            f"SELECT coalesce(sum(hash({columns})::HUGEINT), 0), count(*) FROM samples s "
            f"JOIN files f ON f.id = s.file_id JOIN datasets d ON d.id = s.dataset_id WHERE d.name = ?", [dataset],
        ).fetchone()
    finally:
        index.close()
    return f"{int(total) & ((1 << 128) - 1):032x}-{rows}"
