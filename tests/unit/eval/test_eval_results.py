"""Rows of ``eval.jsonl`` from lm-eval's answer, and how re-evaluating merges into the record."""

from __future__ import annotations

import json
import math

from titan_recipes.eval import results

# The shape of lm-eval 0.4.13's simple_evaluate answer (fields this module reads).
ANSWER = {
    "results": {
        "shakespeare_heldout": {
            "alias": "shakespeare_heldout", "sample_len": 50,
            "word_perplexity,none": 912.5, "word_perplexity_stderr,none": "N/A",
            "bits_per_byte,none": 2.75, "bits_per_byte_stderr,none": "N/A",
        },
        "arc_easy": {"alias": "arc_easy", "acc,none": 0.25, "acc_stderr,none": 0.01,
                     "acc_norm,none": 0.3, "acc_norm_stderr,none": 0.02},
    },
    "higher_is_better": {"shakespeare_heldout": {"word_perplexity": False, "bits_per_byte": False},
                         "arc_easy": {"acc": True, "acc_norm": True}},
    "n-samples": {"shakespeare_heldout": {"original": 200, "effective": 50},
                  "arc_easy": {"original": 2376, "effective": 50}},
}


def test_rows_from_results_one_per_metric_with_stderr_and_direction():
    rows = results.rows_from_results(ANSWER, 20, limit=50)
    by = {(r["task"], r["metric"]): r for r in rows}
    assert sorted(by) == [("arc_easy", "acc"), ("arc_easy", "acc_norm"),
                          ("shakespeare_heldout", "bits_per_byte"), ("shakespeare_heldout", "word_perplexity")]
    assert by["arc_easy", "acc"] == {"step": 20, "task": "arc_easy", "metric": "acc", "filter": "none", "value": 0.25,
                                     "stderr": 0.01, "higher_is_better": True, "samples": 50, "limit": 50}
    assert by["shakespeare_heldout", "word_perplexity"]["stderr"] is None
    assert by["shakespeare_heldout", "word_perplexity"]["higher_is_better"] is False


def test_write_merges_a_reevaluated_step_and_keeps_the_others(tmp_path):
    path = tmp_path / results.EVAL_FILE
    results.write_rows(path, results.rows_from_results(ANSWER, 10) + results.rows_from_results(ANSWER, 20))
    assert len(results.read_rows(path)) == 8
    again = json.loads(json.dumps(ANSWER))
    again["results"]["arc_easy"]["acc,none"] = 0.5
    del again["results"]["arc_easy"]["acc_norm,none"]
    results.write_rows(path, [r for r in results.rows_from_results(again, 20) if r["task"] == "arc_easy"])
    rows = results.read_rows(path)
    assert [(r["step"], r["task"], r["metric"]) for r in rows] == [
        (10, "arc_easy", "acc"), (10, "arc_easy", "acc_norm"),
        (10, "shakespeare_heldout", "bits_per_byte"), (10, "shakespeare_heldout", "word_perplexity"),
        (20, "arc_easy", "acc"),  # step 20's arc_easy rows replaced as a whole
        (20, "shakespeare_heldout", "bits_per_byte"), (20, "shakespeare_heldout", "word_perplexity"),
    ]
    assert results.series(rows)[("arc_easy", "acc")] == [(10, 0.25), (20, 0.5)]
    assert not path.with_name(path.name + ".tmp").exists()


def test_non_finite_scores_are_written_as_null(tmp_path):
    answer = {"results": {"t": {"word_perplexity,none": math.inf, "bits_per_byte,none": math.nan}}}
    path = results.write_rows(tmp_path / results.EVAL_FILE, results.rows_from_results(answer, 1))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert [r["value"] for r in results.read_rows(path)] == [None, None]
    assert results.series(results.read_rows(path)) == {}
