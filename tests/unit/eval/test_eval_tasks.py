"""The repository's lm-eval tasks: their JSONL files are cut from the text loader's last documents, and
lm-eval finds and loads them from any working directory with no network."""

from __future__ import annotations

import json

import pytest

from titan_recipes.data.text.loader import read_documents
from titan_recipes.errors import ConfigError
from titan_recipes.eval import tasks
from titan_recipes.eval.runner import check_tasks


def test_committed_jsonl_is_the_last_documents_as_the_text_loader_splits_them():
    committed = [json.loads(line)["text"] for line in tasks.HELDOUT_FILE.read_text(encoding="utf-8").splitlines()]
    loader_docs = read_documents(tasks.HELDOUT_SOURCE, tasks.DOCUMENT_SEPARATOR)
    assert len(committed) == tasks.HELDOUT_DOCS == 200
    assert committed == loader_docs[-200:]
    assert tasks.heldout_jsonl(tasks.heldout_documents()) == tasks.HELDOUT_FILE.read_text(encoding="utf-8"), \
        "regenerate with: python -m titan_recipes.eval.tasks"


def test_task_manager_finds_the_task_beside_lm_evals_own():
    manager = tasks.task_manager()
    assert {tasks.HELDOUT_TASK, tasks.CLOZE_TASK} <= set(manager.all_tasks)
    assert {"hellaswag", "arc_easy"} <= set(manager.all_tasks), "lm-eval's own tasks stay available"


def test_task_loads_its_documents_from_another_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub lookup would fail here instead of hanging
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    task = tasks.task_manager().load([tasks.HELDOUT_TASK])["tasks"][tasks.HELDOUT_TASK]
    assert task.OUTPUT_TYPE == "loglikelihood_rolling"
    docs = list(task.test_docs())
    assert len(docs) == 200
    assert task.doc_to_target(docs[0]) == tasks.heldout_documents()[0]
    assert {m["metric"] for m in task.config.metric_list} == {"word_perplexity", "byte_perplexity", "bits_per_byte"}


def test_committed_cloze_items_are_reproducible_and_answerable():
    committed = [json.loads(line) for line in tasks.CLOZE_FILE.read_text(encoding="utf-8").splitlines()]
    assert committed == tasks.cloze_items(tasks.heldout_documents()), "regenerate with: python -m titan_recipes.eval.tasks"
    docs = [d.strip() for d in tasks.heldout_documents() if "\n" in d.strip()]
    assert len(committed) == len(docs) > 150
    for item, doc in zip(committed, docs):
        assert len(item["choices"]) == len(set(item["choices"])) == tasks.CLOZE_CHOICES
        assert item["context"] + "\n" + item["choices"][item["label"]] == doc
    labels = [item["label"] for item in committed]
    assert set(labels) == set(range(tasks.CLOZE_CHOICES)) and max(map(labels.count, range(4))) < len(labels) / 2


def test_cloze_task_is_multiple_choice_like_hellaswag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    task = tasks.task_manager().load([tasks.CLOZE_TASK])["tasks"][tasks.CLOZE_TASK]
    assert task.OUTPUT_TYPE == "multiple_choice"
    doc = next(iter(task.test_docs()))
    assert task.doc_to_choice(doc) == doc["choices"] and task.doc_to_target(doc) == doc["label"]
    assert task.doc_to_text(doc) == doc["context"] + "\n"


def test_unknown_task_names_are_refused_before_any_export():
    manager = tasks.task_manager()
    check_tasks(["hellaswag", tasks.HELDOUT_TASK], manager)
    with pytest.raises(ConfigError, match=r"lm-eval knows no task \['shakespeare_heldot'\]"):
        check_tasks(["shakespeare_heldot", "arc_easy"], manager)
