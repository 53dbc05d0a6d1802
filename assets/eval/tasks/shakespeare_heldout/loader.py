"""Dataset of the ``shakespeare_heldout`` lm-eval task: the JSONL beside this file, by absolute path.

A task YAML's ``dataset_kwargs.data_files`` would be resolved against the caller's working directory;
lm-eval calls this function (``custom_dataset``) instead, with the task's metadata as keyword arguments,
which it does not need.
"""

from pathlib import Path

DATA_FILE = Path(__file__).with_name("shakespeare_heldout.jsonl")


def load(**_metadata):
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA_FILE)})
