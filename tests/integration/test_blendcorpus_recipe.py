"""The blendcorpus recipe, for real: run_train.sh makes the two-corpus blend from the embedded corpus
(DATA_DIR in tmp), trains with validation on the blend's valid split, and matches its CPU fixture."""

from __future__ import annotations

from launching import REPO, assert_ok, launch
from titan_recipes import fixtures as fx
from titan_recipes.records import read_metrics

RECIPE = REPO / "recipes" / "blendcorpus"


def test_blendcorpus_recipe_matches_its_fixture_and_validates(tmp_path):
    run, data = tmp_path / "run", tmp_path / "data"
    key = fx.current_key(1)
    entry = fx.get_entry(RECIPE, key)
    proc = launch(RECIPE, 1, run, *entry["overrides"], env={"DATA_DIR": str(data)})
    assert_ok(proc)
    assert (data / "filelist.txt").is_file()
    lines = (data / "filelist.txt").read_text().splitlines()
    assert sorted({line.split()[2] for line in lines}) == ["first_half", "second_half"] and len(lines) == 3
    result = fx.check_run(RECIPE, run, key=key)
    assert result.ok, result.table()

    rows = read_metrics(run / "metrics.jsonl")
    val = [r for r in rows if "validation_metrics/loss" in r]
    # torchtitan validates at step 1 and every validation.freq (10) steps, on the same valid batches
    assert [r["step"] for r in val] == [1, 10, 20]
    assert val[-1]["validation_metrics/loss"] < val[0]["validation_metrics/loss"] < 20
