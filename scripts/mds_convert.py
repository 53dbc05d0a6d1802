#!/usr/bin/env python
r"""Convert documents, or an existing MDS dataset, to packed token samples in Mosaic streaming (MDS) shards.

    python scripts/mds_convert.py data/part-*.jsonl.gz \
        --tokenizer assets/tokenizers/shakespeare-bpe-2048 --seq-len 2048 --out /data/mds/web \
        [--compression zstd] [--size-limit 64mb] [--overwrite]
    python scripts/mds_convert.py assets/data/tinyshakespeare.txt --documents 0:-200 ...
    python scripts/mds_convert.py data/web.parquet --text-field content --out s3://bucket/web --upload-threads 8 ...
    python scripts/mds_convert.py /data/llm-foundry/c4-text --tokenizer ... --seq-len 4096 --out /data/mds/c4
    python scripts/mds_convert.py s3://bucket/c4-concat-2048 --input-cache /scratch/c4 --seq-len 4096 ...

Inputs, packed in the order given:
  *.jsonl, *.jsonl.gz   one JSON object per non-blank line; the document is its --text-field (default text)
  *.parquet             column --text-field, read one record batch at a time (never loaded whole)
  a directory           a Hugging Face dataset written by save_to_disk (has dataset_info.json / state.json /
                        dataset_dict.json); --split picks the split of a DatasetDict
  *.txt, *.txt.gz       plain text split into documents at blank lines ("\n\n"), as the text loader does
  --hf-dataset NAME     a hub dataset streamed with datasets.load_dataset(NAME, --hf-config, split=--split
                        or train, streaming=True). Needs network access to the hub; not covered by this
                        repository's tests (they run without network).
  an MDS dataset        a directory holding index.json, or a remote one given as s3://bucket/prefix (or
                        with --input-remote), e.g. written by llm-foundry's convert_dataset_hf/json.py,
                        by your own streaming.MDSWriter script, or by this script. Read with streaming's
                        reader, samples in index order (shard order, row order). A remote one is
                        downloaded into --input-cache DIR/<url> (kept for the next run), or into a
                        temporary directory removed afterwards. The endpoint comes from S3_ENDPOINT_URL.
                        Its layout decides what happens:
      text: str                  each sample is a document: re-tokenized like a JSONL input (the
                                 output is byte-identical to converting the same texts from JSONL).
      tokens: ndarray:<int dtype>  re-packed WITHOUT tokenizing: the samples (any length, e.g. the
                                 exact N tokens of llm-foundry's --concat_tokens N) are concatenated
                                 in index order into one token stream, cut as below.
      tokens: bytes              the same, ids decoded as --token-encoding-type (llm-foundry's
                                 token_encoding_type; default int64).
      our own output             windows of L+1 tokens with stride L (conversion.json records
                                 seq_len L): consecutive windows share one token, so each window
                                 after the first adds its last L tokens: no token is duplicated.
                                 Re-packing it at --seq-len N equals converting the original
                                 documents at N, except the tail.
                        Token ids must be < the vocabulary of --tokenizer (DataError naming shard and
                        sample otherwise); --tokenizer is recorded in conversion.json. Token inputs
                        cannot be mixed with document inputs, nor take --documents. Any other layout is
                        an error listing the columns found.
--documents START:END keeps documents [START:END] of all inputs together (Python slice bounds, e.g. 0:-200
for all but the last 200, --documents=-200: for the last 200: write a negative START with "="), so one
corpus gives disjoint train/validation sets.

Each document is tokenized with BOS and EOS. The documents (or an MDS input's token samples) are
concatenated and cut into samples of seq_len + 1 tokens with stride seq_len (inputs = first seq_len
tokens, labels = last seq_len). The tail shorter than one sample is dropped and its size reported. The
output is a streaming MDS directory (``index.json`` + shards, column ``tokens`` =
ndarray:int32:<seq_len+1>, xxh64 per shard) plus ``conversion.json`` recording the tokenizer hash, the
inputs (for an MDS input: its location, layout and index.json sha256) and the counts. The same inputs and
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

Inspect it with ``python scripts/mds_stats.py /data/mds/web``. Tokenization runs in one process (the fast
tokenizer encodes batches of 1000 documents in its own threads).
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
    parser.add_argument("inputs", nargs="*", help="input files, saved HF dataset directories or MDS datasets (directory with index.json, or s3://...), in packing order")
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
    parser.add_argument("--input-remote", action="append", default=[], metavar="URL", help="a remote MDS dataset (s3://bucket/prefix) to convert, after the inputs; repeatable")
    parser.add_argument("--input-cache", default=None, metavar="DIR", help="download remote MDS inputs into DIR/<url> and keep them (default: a temporary directory, removed)")
    parser.add_argument("--token-encoding-type", default="int64", help="numpy dtype of the ids in an MDS 'tokens: bytes' column (llm-foundry's token_encoding_type; default int64)")
    parser.add_argument("--overwrite", action="store_true", help="delete the contents of --out first")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    inputs: list = list(args.inputs) + list(args.input_remote)
    if args.hf_dataset:
        inputs.append(HubDataset(args.hf_dataset, args.split or "train", args.hf_config))
    if not inputs:
        parser.error("give at least one input file/directory, --input-remote or --hf-dataset")
    size_limit = int(args.size_limit) if args.size_limit.isdigit() else args.size_limit
    try:
        documents = parse_document_range(args.documents) if args.documents else None
        summary = write_mds(
            inputs, args.tokenizer, args.seq_len, args.out, compression=args.compression,
            size_limit=size_limit, overwrite=args.overwrite, progress=not args.no_progress,
            text_field=args.text_field, split=args.split, documents=documents, upload_threads=args.upload_threads,
            input_cache=args.input_cache, token_encoding_type=args.token_encoding_type,
        )
    except (DataError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    read = f"{summary.input_samples:,} MDS samples re-packed" if summary.input_samples else f"{summary.documents:,} documents"
    print(
        f"wrote {summary.out}: {read}, {summary.tokens:,} tokens -> "
        f"{summary.samples:,} samples of {summary.seq_len + 1} tokens in {summary.shards} shard(s); "
        f"{summary.tail_tokens} tail tokens unused"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
