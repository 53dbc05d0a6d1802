"""Resuming the mixture loader from a checkpoint written with another DP degree, or in an older format.

The checkpoint state (see :mod:`.loader`) holds every DP rank's position. A resume with the same DP
degree takes each rank's position back. A resume with another DP degree (:func:`reshard`) continues
the same global order with no document lost or repeated: the unread rest of every old rank (its carry,
the rest of its current block and its blocks of the chunks other ranks already started), in chunk
order and old-rank order, is cut into one contiguous piece per new rank as its carry; after it every
new rank continues with the first chunk no old rank had started, cut the new way.

States written before version 2 (``mixture_dp_rank_<r>``, one per rank, each rank's own position) are
turned into version-2 states by :func:`from_legacy`: they load with their DP degree (and a 1-rank one
with any); :func:`checkpoint_rank_keys` tells each rank at build time how many such keys the
checkpoint holds, so that rank ``r`` asks DCP for its own key. :func:`merge_rank_states` builds the
all-gathered state from per-rank states, for tests and tools that drive several ranks in one process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import DataError
from .. import state as codec

if TYPE_CHECKING:
    from .loader import MixtureLoader

WHAT = "Mixture loader"
"""How checkpoint errors name this loader."""
FINGERPRINT_COVERS = "the index's files, the mixture, query, seed, chunk size, tokenizer or seq_len"
"""What the mixture loader's data fingerprint covers (named in a FingerprintMismatchError)."""
LEGACY_FINGERPRINT_COVERS = (
    "the index's files, the mixture, query, seed, chunk size, tokenizer, seq_len or training.local_batch_size "
    "(a checkpoint of this older format also needs the local batch size it was written with)"
)
"""What the fingerprint of a state written before version 2 covers (it covered the global batch too)."""


def reshard(loader: MixtureLoader, positions: list[dict[str, Any]]) -> dict[str, Any]:
    """``loader``'s rank's position when the old ranks stood at ``positions``: the unread rest of every old rank
    (its carry; the rest of its block of its current chunk; its blocks of later chunks another old rank
    had started), in chunk order then old-rank order, cut into ``loader.dp_world_size`` contiguous pieces;
    then the chunks after the last one any old rank had started."""
    old_world = len(positions)
    starts = [int(p["chunk_state"]["next_chunk"]) for p in positions]
    first, last = min(starts), max(starts)
    loader.planner.load_state_dict(positions[starts.index(first)]["chunk_state"])
    chunks = {}
    for k in range(first, last + 1):
        chunks[k] = loader.planner.next_chunk()
    after_last = loader.planner.state_dict()
    rest: list[list[int]] = [list(c) for p in positions for c in p["carry"]]
    for k in range(first, last + 1):
        for r, p in enumerate(positions):
            if k < starts[r]:
                continue
            block = chunks[k].shard(r, old_world)
            item, offset = (int(p["item"]), int(p["offset"])) if k == starts[r] else (0, 0)
            for j in range(item, len(block)):
                domain, sid = block[j]
                rest.append([int(sid), loader._domain_id[domain], offset if j == item else 0])
    n, w, r = len(rest), loader.dp_world_size, loader.dp_rank
    return {"carry": rest[r * n // w : (r + 1) * n // w], "chunk_state": after_last, "item": 0, "offset": 0}


def from_legacy(loader: MixtureLoader, state: dict[str, Any], state_dict: dict[str, Any]) -> dict[str, Any]:
    """A state written before version 2 (this rank's own position under ``mixture_dp_rank_<r>``) as a
    version-2 state. A 1-rank one is complete; a multi-rank one only for its own DP degree."""
    old_world = int(state["dp_world_size"])
    expected = loader.legacy_fingerprint(loader.local_batch_size * old_world)  # it covered the global batch
    codec.check_fingerprint(state, expected, what=WHAT, changed=LEGACY_FINGERPRINT_COVERS)
    if old_world > 1:
        raw = state_dict.get(codec.mixture_rank_key(loader.dp_rank)) if loader.dp_world_size == old_world else None
        if raw is None:
            raise DataError(
                f"Mixture loader: the checkpoint was written with DP degree {old_world} by an older version that "
                f"kept one state per DP rank; this run has DP degree {loader.dp_world_size}. Resume it with DP "
                f"degree {old_world} (its next checkpoint then resumes with any degree), or set "
                f"checkpoint.exclude_from_loading = ['dataloader'] to restart the data."
            )
        state = json.loads(raw)
    pos = {"carry": [], "chunk_state": state["chunk_state"], "item": state["item"], "offset": state["offset"]}
    ranks: list[Any] = [pos] if old_world == 1 else [pos if r == loader.dp_rank else {} for r in range(old_world)]
    out = {"version": loader.STATE_VERSION, "fingerprint": loader.data_fingerprint, "dp_world_size": old_world,
           "local_batch_size": loader.local_batch_size, "global_batch_size": loader.local_batch_size * old_world,
           "batches": state["batches"], "ranks": ranks}
    if "mixture" in state:
        out["mixture"] = state["mixture"]
    return out


def checkpoint_rank_keys(job_config: Any) -> int:
    """How many old-format per-rank mixture keys (``dataloader.mixture_dp_rank_<r>``) the checkpoint this
    launch will resume from holds (0 when there is none, or it is of the current format, which has one
    key). Looked up in the DCP metadata of ``checkpoint.load_step`` or the newest ``step-N`` folder."""
    import pickle
    import re

    try:
        ckpt = job_config.checkpoint
        folder = Path(job_config.job.dump_folder, ckpt.folder)
        steps = {int(m.group(1)): p for p in folder.iterdir() if (m := re.fullmatch(r"step-(\d+)", p.name))}
        step = ckpt.load_step if ckpt.load_step > 0 else max((s for s, p in steps.items() if (p / ".metadata").is_file()), default=None)
        if step is None or step not in steps:
            return 0
        keys = pickle.loads((steps[step] / ".metadata").read_bytes()).state_dict_metadata
    except Exception:  # no checkpoint folder or config, unreadable metadata: nothing to adapt to (the load reports it)
        return 0
    return len([k for k in keys if re.fullmatch(r"dataloader\.mixture_dp_rank_\d+", k)])


def merge_rank_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One checkpoint state from the ``state_dict()`` of each DP rank's loader taken without a process
    group (each then knows only its own position), as the all-gather of a distributed save makes it.
    For tests and tools that drive several ranks' loaders in one process."""
    decoded = [json.loads(next(iter(s.values()))) for s in states]
    merged = dict(decoded[0])
    merged["ranks"] = [next(p for p in (d["ranks"][r] for d in decoded) if p is not None)
                       for r in range(merged["dp_world_size"])]
    return {codec.MIXTURE: json.dumps(merged, sort_keys=True)}
