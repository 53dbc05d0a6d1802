"""The preparation's torch-free tokenizer gives the ids training's tokenizers give (issue 18)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from titan_recipes.errors import ConfigError
from titan_recipes.prepare.encoder import DocumentEncoder

REPO = Path(__file__).resolve().parents[3]
TOKENIZER = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048"
TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "", "  ", "x" * 300,
         "ROMEO <|end_of_text|> and <|begin_of_text|> JULIET", "naïve café — ünïcödé 🙂"]


def _torchtitan(path: Path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    return HuggingFaceTokenizer(str(path))


@pytest.mark.parametrize("bos,eos", [(True, True), (False, True), (False, False)])
def test_hf_ids_equal_torchtitans_tokenizer(bos, eos):
    ours, theirs = DocumentEncoder(TOKENIZER), _torchtitan(TOKENIZER)
    assert ours.encode_batch(TEXTS, bos=bos, eos=eos) == [theirs.encode(t, add_bos=bos, add_eos=eos) for t in TEXTS]
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (theirs.bos_id, theirs.eos_id, theirs.get_vocab_size())


def test_a_tokenizer_whose_template_adds_bos_gets_it_once(tmp_path):
    """A Llama-3-style post-processor adds BOS itself: neither torchtitan nor we add a second one."""
    d = tmp_path / "tok"
    d.mkdir()
    spec = json.loads((TOKENIZER / "tokenizer.json").read_text())
    spec["post_processor"] = {"type": "TemplateProcessing",
                              "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                         {"Sequence": {"id": "A", "type_id": 0}}],
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [0],
                                                                       "tokens": ["<|begin_of_text|>"]}}}
    (d / "tokenizer.json").write_text(json.dumps(spec))
    (d / "tokenizer_config.json").write_text((TOKENIZER / "tokenizer_config.json").read_text())
    ours, theirs = DocumentEncoder(d), _torchtitan(d)
    got = ours.encode_batch(TEXTS)
    assert got == [theirs.encode(t, add_bos=True, add_eos=True) for t in TEXTS]
    assert all(ids[0] == ours.bos_id and ids[1] != ours.bos_id for ids in got if len(ids) > 2)


def test_wrong_tokenizer_paths_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"--tokenizer '.*missing' does not exist"):
        DocumentEncoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"has no tokenizer.json \(nor tokenizer.model\)"):
        DocumentEncoder(tmp_path / "empty")
    with pytest.raises(ConfigError, match="no SentencePiece model"):
        DocumentEncoder(TOKENIZER, backend="sp")
