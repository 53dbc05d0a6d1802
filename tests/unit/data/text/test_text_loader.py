"""PackedTextLoader and the GlobalOrderLoader contract: determinism, DP partition, exact resume, errors.

The checks follow three published styles, all asserted exactly (``torch.equal`` / set equality):
torchtitan's test_dataset_checkpointing (resume gives the same batches as an uninterrupted loader),
streaming's mid-epoch resumption test (resume mid-epoch, across epochs and with another DP degree) and
OLMo-core's union-of-ranks test (ranks are disjoint and together cover the epoch exactly once).
"""

from __future__ import annotations

import gzip
import json
import logging
import re

import numpy as np
import pytest
import torch
from batches import take, take_ranks, concat_ranks, assert_batches_equal, flat_ids
from configs import job_config

from titan_recipes.errors import ConfigError, DataError, FingerprintMismatchError
from titan_recipes.data.text.config import TextData
from titan_recipes.data.registry import build_dataloader, source_names
from titan_recipes.data import state as codec
from titan_recipes.data.global_order import GlobalOrderLoader
from titan_recipes.data.text.config import EMBEDDED_DATASETS, REPO_ROOT
from titan_recipes.data.text.loader import PackedTextLoader, read_documents, resolve_text_path

B = 4  # local batch size of the 2-rank runs; the 1-rank equivalents use 2 * B


def make_loader(corpus, tokenizer, **overrides) -> PackedTextLoader:
    kwargs = dict(
        path=corpus.path,
        tokenizer=tokenizer,
        seq_len=corpus.seq_len,
        local_batch_size=B,
        dp_rank=0,
        dp_world_size=1,
        shuffle=True,
        seed=1234,
    )
    kwargs.update(overrides)
    return PackedTextLoader(**kwargs)


def make_ranks(corpus, tokenizer, world: int, local_batch_size: int = B, **overrides) -> list[PackedTextLoader]:
    return [
        make_loader(corpus, tokenizer, dp_rank=r, dp_world_size=world, local_batch_size=local_batch_size, **overrides)
        for r in range(world)
    ]












# -- a. determinism ----------------------------------------------------------------------------------


def test_batches_have_the_contract_shape_and_dtype(corpus, tokenizer):
    (x, y), = take(make_loader(corpus, tokenizer), 1)
    assert x.shape == y.shape == (B, corpus.seq_len)
    assert x.dtype == y.dtype == torch.int64


def test_loader_tokens_are_documents_with_bos_and_eos(corpus, tokenizer):
    loader = make_loader(corpus, tokenizer)
    np.testing.assert_array_equal(loader.tokens, corpus.tokens)
    assert loader.tokens[0] == tokenizer.bos_id
    assert int((loader.tokens == tokenizer.bos_id).sum()) == len(corpus.docs)
    assert int((loader.tokens == tokenizer.eos_id).sum()) == len(corpus.docs)
    assert loader.num_samples == corpus.num_samples == (len(corpus.tokens) - 1) // corpus.seq_len


def test_same_settings_give_identical_batches(corpus, tokenizer):
    a = take(make_loader(corpus, tokenizer), 12)
    b = take(make_loader(corpus, tokenizer), 12)
    assert_batches_equal(a, b)


def test_other_seed_gives_other_order(corpus, tokenizer):
    steps = corpus.num_samples // B
    a = flat_ids(corpus, take(make_loader(corpus, tokenizer, seed=1234), steps))
    b = flat_ids(corpus, take(make_loader(corpus, tokenizer, seed=4321), steps))
    assert a != b
    # Same samples, another order: both are permutations of the epoch.
    assert sorted(a) == sorted(b) == list(range(corpus.num_samples))


def test_shuffled_epoch_is_a_permutation_not_file_order(corpus, tokenizer):
    ids = flat_ids(corpus, take(make_loader(corpus, tokenizer), corpus.num_samples // B))
    assert sorted(ids) == list(range(corpus.num_samples))
    assert ids != list(range(corpus.num_samples))


def test_unshuffled_is_file_order(corpus, tokenizer):
    L = corpus.seq_len
    batches = take(make_loader(corpus, tokenizer, shuffle=False, local_batch_size=3), 20)
    k = 0
    for x, y in batches:
        for row in range(x.shape[0]):
            expected = torch.from_numpy(corpus.tokens[k * L : k * L + L + 1])
            assert torch.equal(x[row], expected[:-1]), f"sample {k}"
            assert torch.equal(y[row], expected[1:]), f"sample {k}"
            k += 1
    assert k == 60


def test_labels_are_inputs_shifted_by_one(corpus, tokenizer):
    for x, y in take(make_loader(corpus, tokenizer), 10):
        assert torch.equal(y[:, :-1], x[:, 1:])
        # ...and each (input, last label) row is a window of the token stream.
        assert len(corpus.sample_ids(x, y)) == x.shape[0]


def test_jsonl_gives_the_same_stream_as_txt(corpus, tokenizer, tmp_path):
    jsonl = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": doc, "id": i}) for i, doc in enumerate(corpus.docs)]
    lines.insert(5, "")  # blank lines are skipped
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loader = make_loader(corpus, tokenizer, path=jsonl)
    np.testing.assert_array_equal(loader.tokens, corpus.tokens)
    assert loader.data_fingerprint == make_loader(corpus, tokenizer).data_fingerprint
    assert_batches_equal(take(loader, 5), take(make_loader(corpus, tokenizer), 5))


def test_gzipped_text_reads_the_same_documents(corpus, tmp_path):
    gz = tmp_path / "corpus.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(corpus.path.read_text(encoding="utf-8"))
    assert read_documents(gz, "\n\n") == corpus.docs == read_documents(corpus.path, "\n\n")


def test_document_separator_splits_plain_text(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("one\n===\ntwo\n\nstill two\n===\n  \n===\nthree", encoding="utf-8")
    assert read_documents(path, "\n===\n") == ["one", "two\n\nstill two", "three"]
    assert read_documents(path, "\n\n") == ["one\n===\ntwo", "still two\n===\n  \n===\nthree"]


# -- b. data-parallel partition ----------------------------------------------------------------------


def test_two_ranks_partition_one_epoch(corpus, tokenizer):
    steps = corpus.num_samples // (2 * B)
    assert steps * 2 * B == corpus.num_samples
    rank0, rank1 = make_ranks(corpus, tokenizer, world=2)
    ids0 = flat_ids(corpus, take(rank0, steps))
    ids1 = flat_ids(corpus, take(rank1, steps))
    assert len(ids0) == len(set(ids0)) == len(ids1) == len(set(ids1)) == corpus.num_samples // 2
    assert set(ids0).isdisjoint(ids1)
    assert set(ids0) | set(ids1) == set(range(corpus.num_samples))


@pytest.mark.parametrize("shuffle", [True, False])
def test_rank_interleaving_equals_one_rank_with_double_batch(corpus, tokenizer, shuffle):
    # Past the end of the epoch too: the wrap must interleave the same way.
    steps = corpus.num_samples // (2 * B) + 5
    two = take_ranks(make_ranks(corpus, tokenizer, world=2, shuffle=shuffle), steps)
    one = take(make_loader(corpus, tokenizer, local_batch_size=2 * B, shuffle=shuffle), steps)
    assert_batches_equal([concat_ranks(step) for step in two], one)


def test_ranks_read_contiguous_blocks_of_global_indices(corpus, tokenizer):
    """Instrument global_index_to_sample (calling through) to see which global indices each rank reads."""
    world, steps = 3, 4
    seen: list[list[int]] = []
    for loader in make_ranks(corpus, tokenizer, world=world):
        calls: list[int] = []
        original = loader.global_index_to_sample

        def recording(g, _original=original, _calls=calls):
            _calls.append(g)
            return _original(g)

        loader.global_index_to_sample = recording
        take(loader, steps)
        seen.append(calls)
    for r, calls in enumerate(seen):
        expected = [s * world * B + r * B + i for s in range(steps) for i in range(B)]
        assert calls == expected, f"rank {r}"
    assert sorted(g for calls in seen for g in calls) == list(range(steps * world * B))


# -- c. resume -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("position", ["start", "mid_epoch", "before_wrap"])
def test_resume_continues_exactly(corpus, tokenizer, world, position):
    steps_per_epoch = corpus.num_samples // (world * B)
    k = {"start": 0, "mid_epoch": 5, "before_wrap": steps_per_epoch - 2}[position]
    m = 7

    reference = take_ranks(make_ranks(corpus, tokenizer, world), k + m)

    interrupted = make_ranks(corpus, tokenizer, world)
    before = take_ranks(interrupted, k)
    for r in range(world):
        assert_batches_equal([step[r] for step in before], [step[r] for step in reference[:k]])
    states = [loader.state_dict() for loader in interrupted]
    assert all(state == states[0] for state in states), "state must be identical on every rank"
    assert states[0][codec.PACKED_TEXT]["consumed_samples"] == k * world * B

    resumed = make_ranks(corpus, tokenizer, world)
    for loader, state in zip(resumed, states):
        loader.load_state_dict(state)
    after = take_ranks(resumed, m)
    for r in range(world):
        assert_batches_equal([step[r] for step in after], [step[r] for step in reference[k:]])


def test_state_dict_is_global_and_identical_on_ranks(corpus, tokenizer):
    ranks = make_ranks(corpus, tokenizer, world=2)
    take_ranks(ranks, 3)
    s0, s1 = (loader.state_dict() for loader in ranks)
    assert s0 == s1
    assert set(s0) == {codec.PACKED_TEXT}
    state = s0[codec.PACKED_TEXT]
    assert state["consumed_samples"] == 3 * 2 * B
    assert state["num_samples"] == corpus.num_samples
    assert state["fingerprint"] == ranks[0].data_fingerprint
    assert isinstance(state["fingerprint"], str) and len(state["fingerprint"]) == 16


def test_state_dict_of_a_fresh_loader_is_at_zero(corpus, tokenizer):
    state = make_loader(corpus, tokenizer).state_dict()[codec.PACKED_TEXT]
    assert state["consumed_samples"] == 0


def test_resume_from_two_ranks_into_one_rank_with_double_batch(corpus, tokenizer):
    k, m = 6, 9
    reference = take_ranks(make_ranks(corpus, tokenizer, world=2), k + m)

    two = make_ranks(corpus, tokenizer, world=2)
    before = take_ranks(two, k)
    state = two[0].state_dict()
    one = make_loader(corpus, tokenizer, local_batch_size=2 * B)
    one.load_state_dict(state)
    after = take(one, m)

    assert_batches_equal(after, [concat_ranks(step) for step in reference[k:]])
    # Nothing lost or repeated across the change of DP degree.
    ids = [i for step in before for x, y in step for i in corpus.sample_ids(x, y)] + flat_ids(corpus, after)
    expected = flat_ids(corpus, [concat_ranks(step) for step in reference])
    assert ids == expected
    assert len(set(ids)) == len(ids) == (k + m) * 2 * B


def test_resume_from_one_rank_into_two_ranks(corpus, tokenizer):
    k, m = 4, 6
    reference = take(make_loader(corpus, tokenizer, local_batch_size=2 * B), k + m)

    one = make_loader(corpus, tokenizer, local_batch_size=2 * B)
    take(one, k)
    state = one.state_dict()
    two = make_ranks(corpus, tokenizer, world=2)
    for loader in two:
        loader.load_state_dict(state)
    assert_batches_equal([concat_ranks(step) for step in take_ranks(two, m)], reference[k:])


def test_resume_across_dp_change_covers_the_epoch_exactly_once(corpus, tokenizer):
    k = 10
    two = make_ranks(corpus, tokenizer, world=2)
    before = take_ranks(two, k)
    one = make_loader(corpus, tokenizer, local_batch_size=2 * B)
    one.load_state_dict(two[1].state_dict())
    rest = take(one, corpus.num_samples // (2 * B) - k)
    ids = [i for step in before for x, y in step for i in corpus.sample_ids(x, y)] + flat_ids(corpus, rest)
    assert sorted(ids) == list(range(corpus.num_samples))


def _straddling_batch_size(n: int) -> int:
    return next(b for b in (3, 5, 7, 11, 13) if n % b)


def test_epoch_wrap_gives_a_new_permutation_and_warns(corpus, tokenizer, caplog):
    n = corpus.num_samples
    size = _straddling_batch_size(n)  # a micro-batch straddles the epoch boundary
    steps = -(-2 * n // size)  # ceil: at least two full epochs
    loader = make_loader(corpus, tokenizer, local_batch_size=size)
    with caplog.at_level(logging.WARNING, logger="titan_recipes.data.global_order"):
        ids = flat_ids(corpus, take(loader, steps))
    epoch0, epoch1 = ids[:n], ids[n : 2 * n]
    assert len(epoch1) == n
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "epoch 1" in r.getMessage()]
    assert len(warnings) == 1
    assert loader.name in warnings[0].getMessage()


def test_epoch_wrap_without_shuffle_repeats_file_order(corpus, tokenizer, caplog):
    n = corpus.num_samples
    size = _straddling_batch_size(n)
    with caplog.at_level(logging.WARNING, logger="titan_recipes.data.global_order"):
        loader = make_loader(corpus, tokenizer, local_batch_size=size, shuffle=False)
        ids = flat_ids(corpus, take(loader, -(-2 * n // size)))
    assert ids[:n] == ids[n : 2 * n] == list(range(n))
    assert any("epoch 1" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_no_epoch_warning_within_the_first_epoch(corpus, tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="titan_recipes.data.global_order"):
        take(make_loader(corpus, tokenizer), corpus.num_samples // B)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_resume_in_a_later_epoch(corpus, tokenizer):
    """A checkpoint taken in epoch 1 resumes into epoch 1's order, not epoch 0's."""
    steps_per_epoch = corpus.num_samples // B
    k, m = steps_per_epoch + 3, 5
    reference = take(make_loader(corpus, tokenizer), k + m)
    loader = make_loader(corpus, tokenizer)
    take(loader, k)
    fresh = make_loader(corpus, tokenizer)
    fresh.load_state_dict(loader.state_dict())
    assert_batches_equal(take(fresh, m), reference[k:])


# -- d. errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [{"seed": 4321}, {"seq_len": 12}, {"shuffle": False}, {"data": True}],
    ids=["seed", "seq_len", "shuffle", "data"],
)
def test_fingerprint_mismatch_refuses_to_resume(corpus, other_corpus, tokenizer, change):
    saved = make_loader(corpus, tokenizer)
    take(saved, 3)
    state = saved.state_dict()
    if change.pop("data", False):
        target = make_loader(other_corpus, tokenizer)
    else:
        target = make_loader(corpus, tokenizer, **change)
    assert target.data_fingerprint != saved.data_fingerprint
    with pytest.raises(FingerprintMismatchError, match="fingerprint"):
        target.load_state_dict(state)
    assert target.consumed_samples == 0, "a refused state must not be applied"


def test_fingerprint_ignores_batch_size_and_dp_layout(corpus, tokenizer):
    a = make_loader(corpus, tokenizer)
    b = make_loader(corpus, tokenizer, local_batch_size=7, dp_rank=2, dp_world_size=3)
    assert a.data_fingerprint == b.data_fingerprint


def test_state_without_the_loader_key_is_a_data_error(corpus, tokenizer):
    loader = make_loader(corpus, tokenizer)
    with pytest.raises(DataError, match=codec.PACKED_TEXT) as excinfo:
        loader.load_state_dict({GlobalOrderLoader.state_key: {"consumed_samples": 8}})
    assert not isinstance(excinfo.value, FingerprintMismatchError)
    assert loader.consumed_samples == 0


def test_empty_state_dict_leaves_the_loader_at_the_start(corpus, tokenizer):
    loader = make_loader(corpus, tokenizer)
    loader.load_state_dict({})
    assert_batches_equal(take(loader, 2), take(make_loader(corpus, tokenizer), 2))


def test_missing_file_is_a_data_error_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_corpus.txt"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        resolve_text_path("text", str(missing))


def test_text_dataset_without_path_is_a_data_error():
    with pytest.raises(DataError, match="training.dataset_path"):
        resolve_text_path("text", None)


def test_embedded_dataset_name_resolves_to_the_committed_file(tmp_path):
    path = resolve_text_path("tinyshakespeare", None)
    assert path == REPO_ROOT / EMBEDDED_DATASETS["tinyshakespeare"].path
    assert path.is_file()
    assert path.read_text(encoding="utf-8").startswith("First Citizen:")
    # An explicit dataset_path wins over the embedded file.
    own = tmp_path / "own.txt"
    own.write_text("hello", encoding="utf-8")
    assert resolve_text_path("tinyshakespeare", str(own)) == own


@pytest.mark.parametrize(
    "bad_line",
    ['{"content": "no text field"}', "this is not json", '["a", "list"]'],
    ids=["no_text_key", "not_json", "not_an_object"],
)
def test_jsonl_line_without_text_names_file_and_line(tmp_path, tokenizer, bad_line):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "first"}\n\n' + bad_line + '\n{"text": "last"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:3") + ".*'text'"):
        read_documents(path, "\n\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:3")):
        PackedTextLoader(path=path, tokenizer=tokenizer, seq_len=4, local_batch_size=1, dp_rank=0, dp_world_size=1)


def test_text_shorter_than_one_sample_is_a_data_error(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Brevity is the soul of wit.", encoding="utf-8")
    n_tokens = len(tokenizer.encode("Brevity is the soul of wit.", add_bos=True, add_eos=True))
    with pytest.raises(DataError, match="fewer than one sample"):
        PackedTextLoader(
            path=path, tokenizer=tokenizer, seq_len=n_tokens, local_batch_size=1, dp_rank=0, dp_world_size=1
        )
    # One token fewer and exactly one sample fits.
    loader = PackedTextLoader(
        path=path, tokenizer=tokenizer, seq_len=n_tokens - 1, local_batch_size=1, dp_rank=0, dp_world_size=1
    )
    assert loader.num_samples == 1


def test_empty_file_is_a_data_error(tmp_path, tokenizer):
    path = tmp_path / "empty.txt"
    path.write_text("\n\n  \n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no documents"):
        PackedTextLoader(path=path, tokenizer=tokenizer, seq_len=4, local_batch_size=1, dp_rank=0, dp_world_size=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"local_batch_size": 0}, "local batch size"), ({"dp_rank": 2, "dp_world_size": 2}, "dp_rank")],
)
def test_invalid_batch_layout_is_rejected(corpus, tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_loader(corpus, tokenizer, **kwargs)


# -- build_dataloader dispatch ------------------------------------------------------------------------


def fake_job_config(dataset: str, dataset_path: str | None = None, **text_data):
    return job_config(training={"dataset": dataset, "dataset_path": dataset_path, "seq_len": 16, "local_batch_size": 2},
                      text_data=TextData(**text_data))


def test_unknown_dataset_is_a_config_error_listing_valid_names(tokenizer):
    with pytest.raises(ConfigError, match="training.dataset = 'shakespear'") as excinfo:
        build_dataloader(1, 0, tokenizer, fake_job_config("shakespear"))
    message = str(excinfo.value)
    for name in [*source_names(), "c4"]:
        assert name in message


def test_build_dataloader_text_uses_the_config(corpus, tokenizer):
    config = fake_job_config("text", str(corpus.path), seed=77, shuffle=True)
    loader = build_dataloader(2, 1, tokenizer, config)
    assert isinstance(loader, PackedTextLoader)
    assert (loader.seq_len, loader.local_batch_size, loader.dp_rank, loader.dp_world_size) == (16, 2, 1, 2)
    direct = make_loader(corpus, tokenizer, seed=77, local_batch_size=2, dp_rank=1, dp_world_size=2)
    assert loader.data_fingerprint == direct.data_fingerprint
    assert_batches_equal(take(loader, 3), take(direct, 3))


def test_build_dataloader_passes_the_document_separator(tmp_path, tokenizer):
    path = tmp_path / "sep.txt"
    docs = ["First part, with a blank\n\nline inside.", "Second part.", "Third part."]
    path.write_text("\n%%\n".join(docs), encoding="utf-8")
    loader = build_dataloader(1, 0, tokenizer, fake_job_config("text", str(path), document_separator="\n%%\n"))
    assert int((loader.tokens == tokenizer.bos_id).sum()) == 3


def test_build_dataloader_missing_file_names_the_path(tmp_path, tokenizer):
    missing = tmp_path / "gone.jsonl"
    with pytest.raises(DataError, match=re.escape(str(missing))):
        build_dataloader(1, 0, tokenizer, fake_job_config("text", str(missing)))


def test_build_dataloader_without_tokenizer_is_a_config_error(corpus):
    with pytest.raises(ConfigError, match="model.hf_assets_path"):
        build_dataloader(1, 0, None, fake_job_config("text", str(corpus.path)))


def test_jsonl_text_must_be_a_string(tmp_path):
    from titan_recipes.errors import DataError
    from titan_recipes.data.text.loader import read_documents

    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: 'text' must be a string"):
        read_documents(path, "\n\n")


def test_read_documents_missing_file_is_a_data_error(tmp_path):
    from titan_recipes.errors import DataError
    from titan_recipes.data.text.loader import read_documents

    with pytest.raises(DataError, match="Dataset file not found"):
        read_documents(tmp_path / "nope.txt", "\n\n")
