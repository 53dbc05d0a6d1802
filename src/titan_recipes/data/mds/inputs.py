"""Reading the input documents of a conversion: JSONL, Parquet, HF ``save_to_disk`` directories, .txt, hub
datasets, MDS text datasets.

Inputs (:func:`iter_input_documents`): JSONL (``.jsonl``/``.jsonl.gz``), Parquet (``.parquet``, read
by record batch), a Hugging Face dataset directory written by ``save_to_disk``, plain text
(``.txt``/``.txt.gz``, documents split on blank lines as :func:`titan_recipes.data.text.loader.read_documents`
does), a streamed Hugging Face hub dataset (:class:`HubDataset`, needs network access), and an MDS
dataset with a ``text`` column, opened by :mod:`titan_recipes.data.mds.mds_input` (its token layouts
are re-packed by the writer without passing through here).
:class:`Documents` chains several inputs and cuts them to a document range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

from ...errors import DataError
from ..documents import iter_jsonl_texts
from .mds_input import MdsInput, OpenedMds, open_mds_input


iter_documents = iter_jsonl_texts
"""The ``text`` field of each non-blank line of a JSONL (or .jsonl.gz) file, streamed."""

TEXT_SEPARATOR = "\n\n"
"""Plain-text inputs are split into documents here, as ``text_data.document_separator`` defaults to."""
HF_DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write; one marks a directory."""
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face hub dataset read with ``datasets.load_dataset(name, config, split=split,
    streaming=True)``: documents arrive over the network as they are converted, nothing is cached
    whole. Needs network access to the hub (untested in this repository's CI, which has none)."""

    name: str
    split: str = "train"
    config: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.name}" + (f"/{self.config}" if self.config else "") + f"[{self.split}]"


Input = Union[str, Path, HubDataset, MdsInput]


def input_kind(path: Path) -> str:
    """``jsonl``, ``parquet``, ``hf_disk``, ``mds`` or ``txt`` for an input path; DataError for anything else."""
    if path.is_dir():
        if (path / "index.json").is_file():
            return "mds"
        if any((path / m).is_file() for m in HF_DISK_MARKERS):
            return "hf_disk"
        raise DataError(
            f"Input directory {path} is neither an MDS dataset (no index.json) nor a Hugging Face dataset "
            f"saved with save_to_disk (it has none of {', '.join(HF_DISK_MARKERS)})."
        )
    if not path.is_file():
        raise DataError(f"Input file not found: {path}")
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        return "jsonl"
    if path.name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".txt"):
        return "txt"
    raise DataError(
        f"Input {path}: unknown kind. Accepted: .jsonl / .jsonl.gz, .parquet, .txt / .txt.gz (documents "
        f"separated by blank lines), a directory written by datasets' save_to_disk, or an MDS directory "
        f"(index.json; local or s3://...)."
    )


def _iter_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    names = parquet.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column '{text_field}' (columns: {names}); choose one with --text-field.")
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[text_field]):
            column = batch.column(0)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                raise DataError(f"{path}: column '{text_field}' is {column.type}, not a string column (row {row}).")
            for text in column.to_pylist():
                if text is None:
                    raise DataError(f"{path}: row {row}: '{text_field}' is null")
                yield text
                row += 1
    except pa.ArrowException as e:
        raise DataError(f"{path}: cannot read Parquet row group near row {row} ({type(e).__name__}: {e})") from None


def _iter_hf(dataset: Any, where: str, text_field: str) -> Iterator[str]:
    names = dataset.column_names
    if names is not None and text_field not in names:
        raise DataError(f"{where}: no column '{text_field}' (columns: {names}); choose one with --text-field.")
    for row, example in enumerate(dataset.select_columns([text_field]) if names is not None else dataset):
        text = example.get(text_field) if isinstance(example, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{where}: row {row}: '{text_field}' must be a string, got {type(text).__name__}")
        yield text


def _load_hf_disk(path: Path, split: str | None) -> Any:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises FileNotFoundError, ValueError, pyarrow errors, ...
        raise DataError(f"{path}: cannot load the saved Hugging Face dataset ({type(e).__name__}: {e})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise DataError(
                f"{path} is a DatasetDict with splits {sorted(loaded)}; choose one with --split "
                f"(got {split!r})."
            )
        return loaded[split]
    return loaded


def iter_input_documents(
    source: Input | OpenedMds, text_field: str = "text", split: str | None = None
) -> Iterator[str]:
    """The documents of one input, in file order, streamed (plain text is read whole; an MDS text
    dataset, opened, in index order, one document per sample).

    ``text_field`` names the JSONL key / Parquet or HF column; ``split`` picks the split of a saved
    ``DatasetDict``. Bad rows are DataErrors naming the file and the line (JSONL, 1-based) or row
    (Parquet, HF: 0-based).
    """
    if isinstance(source, OpenedMds):
        if source.layout != "text":
            raise DataError(f"MDS input {source.source} holds tokens, not documents: it is re-packed, not tokenized.")
        yield from source.iter_texts()
        return
    if isinstance(source, HubDataset):
        import datasets

        dataset = datasets.load_dataset(source.name, source.config, split=source.split, streaming=True)
        yield from _iter_hf(dataset, str(source), text_field)
        return
    path = Path(source)
    kind = input_kind(path)
    if kind == "jsonl":
        yield from iter_jsonl_texts(path, text_field)
    elif kind == "parquet":
        yield from _iter_parquet(path, text_field)
    elif kind == "hf_disk":
        yield from _iter_hf(_load_hf_disk(path, split), str(path), text_field)
    elif kind == "mds":
        from .compat import import_streaming

        yield from iter_input_documents(open_mds_input(import_streaming(), MdsInput(str(path)), None))
    else:
        from ..text.loader import read_documents

        yield from read_documents(path, TEXT_SEPARATOR)



def parse_document_range(text: str) -> tuple[int | None, int | None]:
    """``"START:END"`` (Python slice bounds, either may be empty or negative) -> (start, end)."""
    start, sep, end = text.partition(":")
    try:
        if not sep:
            raise ValueError
        return (int(start) if start.strip() else None, int(end) if end.strip() else None)
    except ValueError:
        raise ValueError(f"documents range must look like START:END (e.g. 0:-200 or -200:), got {text!r}") from None


class Documents:
    """The documents of all inputs in order, cut to ``documents = (start, end)``; reports the current input."""

    def __init__(self, inputs, text_field, split, documents):
        self.inputs, self.text_field, self.split = inputs, text_field, split
        self.range = documents
        self.current = str(inputs[0])

    def _all(self) -> Iterator[str]:
        for src in self.inputs:
            self.current = src.name if isinstance(src, Path) else str(src)
            yield from iter_input_documents(src, self.text_field, self.split)

    def __iter__(self) -> Iterator[str]:
        if self.range is None:
            yield from self._all()
            return
        start, end = self.range
        if (start is not None and start < 0) or (end is not None and end < 0):
            total = sum(1 for _ in self._all())
            start, end, _ = slice(start, end).indices(total)
        start = start or 0
        for i, doc in enumerate(self._all()):
            if end is not None and i >= end:
                break
            if i >= start:
                yield doc

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for src in self.inputs:
            if isinstance(src, HubDataset):
                out.append({"hf_dataset": src.name, "config": src.config, "split": src.split})
            elif isinstance(src, OpenedMds):
                out.append(src.describe())
            elif src.is_dir():
                size = sum(f.stat().st_size for f in sorted(src.rglob("*")) if f.is_file())
                out.append({"path": str(src), "bytes": size, "split": self.split})
            else:
                out.append({"path": str(src), "bytes": src.stat().st_size})
        return out
