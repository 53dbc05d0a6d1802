#!/usr/bin/env python
r"""Convert documents to packed token samples in Mosaic streaming (MDS) shards.

    python scripts/mds_convert.py data/part-*.jsonl.gz \
        --tokenizer assets/tokenizers/shakespeare-bpe-2048 --seq-len 2048 --out /data/mds/web \
        [--compression zstd] [--size-limit 64mb] [--overwrite]
    python scripts/mds_convert.py assets/data/tinyshakespeare.txt --documents 0:-200 ...
    python scripts/mds_convert.py data/web.parquet --text-field content --out s3://bucket/web --upload-threads 8 ...

Inputs, packed in the order given:
  *.jsonl, *.jsonl.gz   one JSON object per non-blank line; the document is its --text-field (default text)
  *.parquet             column --text-field, read one record batch at a time (never loaded whole)
  a directory           a Hugging Face dataset written by save_to_disk (has dataset_info.json / state.json /
                        dataset_dict.json); --split picks the split of a DatasetDict
  *.txt, *.txt.gz       plain text split into documents at blank lines ("\n\n"), as the text loader does
  --hf-dataset NAME     a hub dataset streamed with datasets.load_dataset(NAME, --hf-config, split=--split
                        or train, streaming=True). Needs network access to the hub; not covered by this
                        repository's tests (they run without network).
--documents START:END keeps documents [START:END] of all inputs together (Python slice bounds, e.g. 0:-200
for all but the last 200, --documents=-200: for the last 200: write a negative START with "="), so one
corpus gives disjoint train/validation sets.

Each document is tokenized with BOS and EOS. The documents are concatenated and cut into samples of
seq_len + 1 tokens with stride seq_len (inputs = first seq_len tokens, labels = last seq_len). The tail
shorter than one sample is dropped and its size reported. The output is a streaming MDS directory
(``index.json`` + shards, column ``tokens`` = ndarray:int32:<seq_len+1>, xxh64 per shard) plus
``conversion.json`` recording the tokenizer hash, the inputs and the counts. The same inputs and
settings give byte-identical shards and index.json (except --compression gz, whose shards carry a
timestamp). --out is a local directory or a remote one written by streaming's uploader: s3://
(endpoint from S3_ENDPOINT_URL, credentials as boto3 finds them; tested) and gs://, oci://, azure://,
dbfs:/Volumes/... (as streaming supports them; untested here), with --upload-threads upload threads.
Train on it with:

    [training]
    dataset = "mds"
    seq_len = 2048                      # must equal --seq-len
    [mosaic_dataloader.dataset]
    local = "/data/mds/web"

Inspect it with ``python scripts/mds_stats.py /data/mds/web``. Tokenization runs in one process.
"""

from __future__ import annotations

import argparse
import logging
import sys

from titan_recipes.errors import DataError
from titan_recipes.data.mds.inputs import HubDataset, parse_document_range
from titan_recipes.data.mds.writer import write_mds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="input files or saved HF dataset directories, in packing order")
    parser.add_argument("--tokenizer", required=True, help="HF tokenizer directory (tokenizer.json + tokenizer_config.json)")
    parser.add_argument("--seq-len", type=int, required=True, help="training.seq_len the data is for; samples hold seq_len + 1 tokens")
    parser.add_argument("--out", type=str, required=True, help="output directory: local (must be empty unless --overwrite) or remote, e.g. s3://bucket/prefix (endpoint from S3_ENDPOINT_URL)")
    parser.add_argument("--text-field", default="text", help="JSONL key / Parquet or HF column holding the text (default: text)")
    parser.add_argument("--split", default=None, help="split of a saved HF DatasetDict, or of --hf-dataset (default there: train)")
    parser.add_argument("--hf-dataset", default=None, metavar="NAME", help="stream this hub dataset after the inputs (needs network; untested here)")
    parser.add_argument("--hf-config", default=None, help="config name of --hf-dataset")
    parser.add_argument("--documents", default=None, metavar="START:END", help="keep only documents [START:END] of all inputs (slice bounds, may be negative)")
    parser.add_argument("--compression", default=None, help="shard compression: none (default), zstd, gz, bz2, br, snappy, optionally :<level> (zstd:7)")
    parser.add_argument("--size-limit", default="64mb", help="uncompressed bytes per shard, e.g. 64mb (default) or 1048576")
    parser.add_argument("--upload-threads", type=int, default=None, help="threads uploading shards to a remote --out (MDSWriter max_workers; default: Python's)")
    parser.add_argument("--overwrite", action="store_true", help="delete the contents of --out first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    inputs: list = list(args.inputs)
    if args.hf_dataset:
        inputs.append(HubDataset(args.hf_dataset, args.split or "train", args.hf_config))
    if not inputs:
        parser.error("give at least one input file/directory or --hf-dataset")
    size_limit = int(args.size_limit) if args.size_limit.isdigit() else args.size_limit
    try:
        documents = parse_document_range(args.documents) if args.documents else None
        summary = write_mds(
            inputs, args.tokenizer, args.seq_len, args.out, compression=args.compression,
            size_limit=size_limit, overwrite=args.overwrite, progress=not args.no_progress,
            text_field=args.text_field, split=args.split, documents=documents, upload_threads=args.upload_threads,
        )
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {summary.out}: {summary.documents:,} documents, {summary.tokens:,} tokens -> "
        f"{summary.samples:,} samples of {summary.seq_len + 1} tokens in {summary.shards} shard(s); "
        f"{summary.tail_tokens} tail tokens unused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
