"""Train the debug recipe's model on a plain ``torch.utils.data.DataLoader`` over your own Dataset.

    python examples/inject_plain_dataloader.py [--section.key value ...]
    torchrun --nproc_per_node 2 examples/inject_plain_dataloader.py

The Dataset here is fixed-length token windows of the embedded Tiny Shakespeare text, tokenized with the
committed BPE tokenizer; any map-style Dataset that yields ``({"input": ids}, labels)`` works the same.
Each data-parallel rank gets its share through a ``DistributedSampler``, and
``inject.ResumableLoader`` makes the plain DataLoader checkpointable: a run stopped at a checkpoint
resumes with the next batch. The loss is a function of your own too (cross-entropy + z-loss).
Everything else (model, optimizer, schedule, checkpointing) comes from recipes/debug/train.toml;
arguments override it (``--training.steps 6``). Run from the repository root.
"""

from __future__ import annotations

import sys
from pathlib import Path

from titan_recipes import inject  # first: prepares torchtitan (CPU fixes) before it is imported

import torch  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "debug" / "train.toml"
TEXT = REPO / "assets" / "data" / "tinyshakespeare.txt"
TOKENIZER = REPO / "assets" / "tokenizers" / "shakespeare-bpe-2048" / "tokenizer.json"


class TokenWindows(Dataset):
    """Non-overlapping windows of ``seq_len + 1`` tokens of one long token stream; item ``i`` is
    ``({"input": window[:-1]}, window[1:])``, the pair torchtitan's Trainer expects."""

    def __init__(self, tokens: torch.Tensor, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return (len(self.tokens) - 1) // self.seq_len

    def __getitem__(self, i: int):
        window = self.tokens[i * self.seq_len : (i + 1) * self.seq_len + 1]
        return {"input": window[:-1]}, window[1:]


def build_loader(dp_world_size: int, dp_rank: int, tokenizer, job_config) -> inject.ResumableLoader:
    """torchtitan's dataloader-builder signature: called once per rank with its data-parallel share."""
    ids = Tokenizer.from_file(str(TOKENIZER)).encode(TEXT.read_text(encoding="utf-8")).ids
    dataset = TokenWindows(torch.tensor(ids, dtype=torch.long), job_config.training.seq_len)
    sampler = DistributedSampler(dataset, num_replicas=dp_world_size, rank=dp_rank, shuffle=True, seed=1234,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=job_config.training.local_batch_size, sampler=sampler, drop_last=True)
    return inject.ResumableLoader(loader)  # counts batches; calls sampler.set_epoch each epoch


def z_loss_cross_entropy(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus PaLM's z-loss (1e-4 x log(Z)^2, keeps the logits' normaliser near 1), summed
    over tokens: torchtitan 0.2.2 divides the returned sum by the global number of tokens."""
    logits = pred.flatten(0, 1).float()
    ce = torch.nn.functional.cross_entropy(logits, labels.flatten(0, 1), reduction="sum")
    return ce + 1e-4 * torch.logsumexp(logits, dim=-1).pow(2).sum()


def main(argv: list[str]) -> None:
    inject.train(CONFIG, argv, dataloader=build_loader, loss_fn=z_loss_cross_entropy)


if __name__ == "__main__":
    main(sys.argv[1:])
