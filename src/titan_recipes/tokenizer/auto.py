"""Tokenizers loaded with ``transformers.AutoTokenizer``, as llm-foundry loads them, from local files only.

llm-foundry users name their tokenizer the way they pass it to ``AutoTokenizer.from_pretrained``: a
HuggingFace hub name (``meta-llama/Llama-3.2-1B``) or a local directory, plus keyword arguments.
:func:`build_auto_tokenizer` accepts exactly that, with one difference: nothing is downloaded. Compute
nodes often have no internet, and a download in the middle of a multi-node launch would make every rank
race for the same cache. So a hub name is resolved in the local HuggingFace cache only (the layout
``huggingface_hub`` writes: ``$HF_HUB_CACHE/models--<org>--<name>/refs/<revision>`` holding a commit
hash, ``snapshots/<hash>/`` the files), as with ``HF_HUB_OFFLINE=1``; a name that is not cached is a
ConfigError saying how to download it on a login node.

Any directory ``AutoTokenizer`` can load works: ``tokenizer.json`` (fast tokenizers), or only a
SentencePiece ``tokenizer.model`` plus a ``tokenizer_config.json`` naming its class (e.g.
``{"tokenizer_class": "LlamaTokenizer"}``), which transformers converts to a fast tokenizer. That
conversion reproduces a model trained as Llama's was (identity normalization, byte fallback); a
SentencePiece model with the trainer's default ``nmt_nfkc`` normalization gets other ids from it for
newlines and repeated spaces; read such a model with SentencePiece itself (``model.hf_assets_path`` with
``model.tokenizer_backend = "sptoken"``).

:class:`TransformersTokenizer` gives the loaded tokenizer the interface torchtitan's Trainer and our
loaders use (``encode``/``decode``/``get_vocab_size``/``bos_id``/``eos_id``), adds BOS/EOS exactly once
whatever the tokenizer's own template does, and batches ``encode_batch`` through the fast tokenizer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from torchtitan.components.tokenizer import BaseTokenizer

from ..errors import ConfigError

VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
"""A directory holding none of these has no tokenizer ``AutoTokenizer`` could load."""

CONFIG_FILES = ("tokenizer_config.json", "config.json")
"""Without ``tokenizer.json``, ``AutoTokenizer`` learns the tokenizer class from one of these."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def hf_hub_cache() -> Path:
    """The HuggingFace hub cache, read from the environment at call time as huggingface_hub defines it:
    ``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``. (huggingface_hub reads these once, at import; reading them here lets a
    job or a test set them later.)"""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _download_hint(name: str, setting: str) -> str:
    return (
        f"Download it on a login node (with internet) into the same cache, i.e. with the same HF_HOME / "
        f"HF_HUB_CACHE as the job: `hf download {name}` (or `huggingface-cli download {name}`; gated models "
        f"need `hf auth login` first), or point {setting} at a local directory holding the tokenizer files."
    )


def resolve_tokenizer_dir(
    name: str, setting: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local directory of tokenizer ``name`` (the value of ``setting``): ``name`` itself when it is a
    directory, else the cached snapshot of hub repo ``name`` at ``revision`` (a branch/tag recorded under
    ``refs/``, or a commit hash; default ``main``) in ``cache_dir`` (default :func:`hf_hub_cache`).
    Never touches the network. ConfigError, with the fix, when neither exists or the directory has no
    tokenizer files."""
    if not name:
        raise ConfigError(f"{setting} is empty; set it to a HuggingFace tokenizer name or a local directory.")
    path = Path(name).expanduser()
    if path.is_dir():
        return _check_tokenizer_files(path, setting, name)
    if path.exists():
        raise ConfigError(
            f"{setting} = '{name}' is a file, not a tokenizer directory. Point it at the directory that holds "
            f"it (with a tokenizer_config.json), or at a HuggingFace tokenizer name."
        )
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "") or not _REPO_ID.match(name):
        raise ConfigError(
            f"{setting} = '{name}': no such directory (relative paths resolve from the working directory "
            f"{os.getcwd()}), and it is not a HuggingFace repo name (org/name). Point it at a directory "
            f"holding tokenizer files ({', '.join(VOCAB_FILES)})."
        )
    cache = Path(cache_dir).expanduser() if cache_dir else hf_hub_cache()
    repo = cache / f"models--{name.replace('/', '--')}"
    wanted = revision or "main"
    commit = wanted if _COMMIT.match(wanted) else None
    ref = repo / "refs" / wanted
    if commit is None and ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    snapshot = None if commit is None else repo / "snapshots" / commit
    if snapshot is None or not snapshot.is_dir():
        raise ConfigError(
            f"{setting} = '{name}' is not a local directory, and revision '{wanted}' of the HuggingFace repo "
            f"'{name}' is not in the local cache {cache} (looked for {repo}/refs/{wanted} and its snapshot). "
            f"Tokenizers are never downloaded during training. {_download_hint(name, setting)}"
        )
    return _check_tokenizer_files(snapshot, setting, name)


def _check_tokenizer_files(directory: Path, setting: str, name: str) -> Path:
    found = sorted(p.name for p in directory.iterdir())
    has_vocab = any((directory / f).is_file() for f in VOCAB_FILES)
    has_config = (directory / "tokenizer.json").is_file() or any((directory / f).is_file() for f in CONFIG_FILES)
    if not (has_vocab and has_config):
        raise ConfigError(
            f"{setting} = '{name}' ({directory}) holds no tokenizer AutoTokenizer can load: found {found or 'nothing'}; "
            f"needed tokenizer.json, or one of {list(VOCAB_FILES[1:])} together with one of {list(CONFIG_FILES)} "
            f"naming the tokenizer class (e.g. {{\"tokenizer_class\": \"LlamaTokenizer\"}} beside a SentencePiece "
            f"tokenizer.model). Save a tokenizer there with tokenizer.save_pretrained(DIR)."
        )
    return directory


class TransformersTokenizer(BaseTokenizer):
    """A ``transformers`` tokenizer with the interface torchtitan's Trainer and our loaders use.

    ``encode`` tokenizes with ``add_special_tokens=False`` and adds ``bos_token_id``/``eos_token_id``
    itself when asked and when the tokenizer has them: a tokenizer whose template already adds BOS
    (Llama's) would otherwise get two. A missing BOS/EOS is left out, as torchtitan's
    ``HuggingFaceTokenizer`` does. ``get_vocab_size()`` is ``len(tokenizer)``, added tokens included, so
    the Trainer's check against the model's ``vocab_size`` covers every id ``encode`` can return.
    """

    def __init__(self, tokenizer: Any, name: str, source_dir: Path):
        super().__init__()
        self.tokenizer = tokenizer
        self.name = name
        """The configured name (hub repo or directory), for messages."""
        self.source_dir = Path(source_dir)
        """The resolved local directory (the cached snapshot for a hub name): what the MDS loader hashes."""
        self.bos_id: int | None = tokenizer.bos_token_id
        self.eos_id: int | None = tokenizer.eos_token_id
        self.pad_id: int | None = tokenizer.pad_token_id
        self.n_words: int = len(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.n_words

    def get_vocab_size(self) -> int:
        return self.n_words

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if add_eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = True, **_: Any) -> list[int]:
        """Token ids of ``text``, BOS first and EOS last (each at most once, when the tokenizer has it)."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False, verbose=False)
        return self._wrap(list(ids), add_bos, add_eos)

    def encode_batch(self, texts: Sequence[str], add_bos: bool = True, add_eos: bool = True) -> list[list[int]]:
        """``[encode(t, add_bos, add_eos) for t in texts]`` in one call of the tokenizer, which a fast
        tokenizer runs in parallel in Rust (the on-the-fly path of MDS text samples)."""
        texts = list(texts)
        if not texts:
            return []
        batch = self.tokenizer(
            texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
        )["input_ids"]
        return [self._wrap(list(ids), add_bos, add_eos) for ids in batch]

    def decode(self, ids: Any, **kwargs: Any) -> str:
        """Text of ``ids`` (a list, or anything with ``tolist()``); kwargs go to the tokenizer's ``decode``
        (e.g. ``skip_special_tokens=True``)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        return self.tokenizer.decode([int(i) for i in ids], **kwargs)


def build_auto_tokenizer(
    name: str, kwargs: Mapping[str, Any] | None = None, setting: str = "tokenizer name"
) -> TransformersTokenizer:
    """``transformers.AutoTokenizer.from_pretrained(name, local_files_only=True, **kwargs)`` with ``name``
    resolved first by :func:`resolve_tokenizer_dir` (``kwargs``' ``revision``/``cache_dir`` select the
    snapshot), so a hub name reads the cache of this job's environment and never the network. Every
    other key goes to ``from_pretrained`` as llm-foundry passes it (``model_max_length``,
    ``padding_side``, ``trust_remote_code``, ...)."""
    options = dict(kwargs or {})
    if options.pop("local_files_only", True) is not True:
        raise ConfigError(
            f"{setting}: kwargs.local_files_only must be true (or unset): tokenizers are never downloaded "
            f"during training. {_download_hint(name, setting)}"
        )
    directory = resolve_tokenizer_dir(name, setting, options.get("revision"), options.get("cache_dir"))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **options)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise ConfigError(
            f"transformers.AutoTokenizer could not load {setting} = '{name}' ({directory}, files "
            f"{sorted(p.name for p in directory.iterdir())}, kwargs {options}): {type(e).__name__}: {e}. Check "
            f"the directory's tokenizer_config.json and the kwargs."
        ) from e
    return TransformersTokenizer(tokenizer, name, directory)
