"""The one checkpoint codec of every data loader: keys, fingerprint, encoding and the errors of a resume.

torchtitan's CheckpointManager stores ``dataloader.state_dict()`` in the DCP checkpoint under
``dataloader``; DCP keeps one copy of each key, so a key must hold the same value on every rank that
writes it. Two layouts follow from that, and every loader uses one of them through this module:

* **Global state** (one dict, equal on every rank): the position in the one global sample order plus
  the data fingerprint, e.g. ``{"mds": {"consumed_samples": 4096, "fingerprint": "9f2c...",
  "num_samples": 1517}}``. A resume with any DP degree continues the same order. ``as_json`` stores
  the dict as one JSON string (the mixture loader's nested lists of per-rank positions, which DCP
  would otherwise flatten into many keys).
* **Per-rank state** (:func:`encode_per_rank`): an opaque user loader (``titan_recipes.inject``) keeps
  one pickled state per DP rank under ``dp_rank_<r>`` plus ``world_size``; it resumes with the same DP
  degree only.

The keys below are the on-disk names of the checkpoints written so far; they do not change, so old
checkpoints load. Tests import them instead of spelling them out.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from typing import Any

from ..errors import ConfigError, DataError, FingerprintMismatchError

PACKED_TEXT = "packed_text"
RANDOM_TOKENS = "random_tokens"
MDS = "mds"
BLENDCORPUS = "blendcorpus"
MIXTURE = "mixture_dp_rank_0"
"""The mixture loader's global state (a JSON string). The name is historical: before state version 2
each DP rank wrote its own ``mixture_dp_rank_<r>`` (see :func:`mixture_rank_key`)."""

WORLD_SIZE = "world_size"
"""Per-rank layout: the DP degree the states were written with."""

RESTART_HINT = (
    "Start a fresh run directory, or set checkpoint.exclude_from_loading = ['dataloader'] to restart the data "
    "from the beginning deliberately."
)


def fingerprint(**parts: Any) -> str:
    """A short stable hash of everything that determines a sample order (JSON-serialisable parts)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def mixture_rank_key(dp_rank: int) -> str:
    """The per-rank key of mixture checkpoints written before state version 2."""
    return f"mixture_dp_rank_{dp_rank}"


def rank_key(dp_rank: int) -> str:
    """Per-rank layout: the key of DP rank ``dp_rank``'s state."""
    return f"dp_rank_{dp_rank}"


def encode(key: str, state: dict[str, Any], *, fingerprint: str, as_json: bool = False) -> dict[str, Any]:
    """``{key: state + fingerprint}``, the global layout."""
    body = {**state, "fingerprint": fingerprint}
    return {key: json.dumps(body, sort_keys=True) if as_json else body}


def decode(state_dict: dict[str, Any], key: str, *, fingerprint: str | None, what: str,
           changed: str = "the data, tokenizer, seq_len or order settings") -> dict[str, Any] | None:
    """The state under ``key`` (a JSON string is parsed), checked against ``fingerprint``.

    None for an empty ``state_dict`` (nothing to resume). A missing key means another loader wrote
    the checkpoint (DataError); another fingerprint means other data or another order
    (FingerprintMismatchError). ``what`` names the loader, ``changed`` what the fingerprint covers.
    ``fingerprint=None`` skips the check (a caller that migrates an older layout first checks it
    itself with :func:`check_fingerprint`).
    """
    if not state_dict:
        return None
    if key not in state_dict:
        raise DataError(
            f"{what}: the checkpoint has no '{key}' data-loader state (keys: {sorted(state_dict)}): it was "
            f"written by another loader. {RESTART_HINT}"
        )
    raw = state_dict[key]
    state = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw)
    if fingerprint is not None:
        check_fingerprint(state, fingerprint, what=what, changed=changed)
    return state


def check_fingerprint(state: dict[str, Any], fingerprint: str, *, what: str, changed: str) -> None:
    if state.get("fingerprint") != fingerprint:
        raise FingerprintMismatchError(
            f"{what}: the checkpoint's data fingerprint {state.get('fingerprint')} does not match the configured "
            f"data ({fingerprint}): {changed} changed since it was written. Resuming would train on a different "
            f"sample order. Restore the original settings, or set checkpoint.exclude_from_loading = "
            f"['dataloader'] to restart the data deliberately."
        )


def encode_per_rank(dp_rank: int, dp_world_size: int, state: Any) -> dict[str, Any]:
    """Per-rank layout: ``{"dp_rank_<r>": pickle(state), "world_size": W}``."""
    return {rank_key(dp_rank): pickle.dumps(state), WORLD_SIZE: dp_world_size}


def decode_per_rank(state_dict: dict[str, Any], dp_rank: int, dp_world_size: int, *, what: str) -> Any:
    """The state :func:`encode_per_rank` wrote for ``dp_rank``; None for an empty ``state_dict``."""
    if not state_dict:
        return None
    saved = state_dict.get(WORLD_SIZE)
    if saved != dp_world_size:  # a ConfigError: the run's parallelism, not the data, has to change
        raise ConfigError(
            f"{what}: the checkpoint's data loader state was written with data-parallel degree {saved}, this run "
            f"has {dp_world_size}: this loader keeps one state per rank, so resume with the same degree. "
            f"{RESTART_HINT}"
        )
    key = rank_key(dp_rank)
    if key not in state_dict:
        raise DataError(f"{what}: the checkpoint has no '{key}' data-loader state (keys: {sorted(state_dict)}). {RESTART_HINT}")
    return pickle.loads(state_dict[key])
