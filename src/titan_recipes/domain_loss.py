"""Per-domain loss for mixture runs, and the feedback that lets a dynamic mixture (ADO) adapt.

With ``training.dataset = "mixture"`` and ``mixture.per_domain_loss = true`` (the default) the mixture
loader puts each label token's domain id into the batch (``input_dict["domain_ids"]``, LongTensor[B, L],
ids index ``loader.domains``). The trainer (:mod:`titan_recipes.trainer`, through :meth:`DomainLoss.on_batch`) pops it before the forward
pass (:meth:`DomainLoss.take`) and uses :meth:`DomainLoss.loss` as its loss function: one cross-entropy
with ``reduction="none"`` whose sum is the training loss (what torchtitan's summed loss is, up to the
order of the float additions) and whose per-token values are added up per domain. The ids travel
with their batch, so gradient accumulation and reader workers cannot mix them up.

After each step (:meth:`DomainLoss.end_step`):

- the per-domain loss sums and token counts are summed over the data-parallel ranks (one all-reduce
  over torchtitan's "batch" mesh; tensor-parallel peers of a DP rank hold the same data and are not
  counted twice);
- a dynamic mixture gets them every step (:meth:`~titan_recipes.data.mixture.ado.AdoMixture.observe`);
  its new weights are broadcast from the first DP rank and applied from the first chunk that no rank
  has planned yet (an all-reduce MAX of the planners' positions), so every rank keeps planning the
  same chunks. That costs one host sync per step; static and scheduled mixtures reduce only on
  logged steps (the logged means then cover the steps since the last log);
- on logged steps, ``loss_domain/<d>`` (mean loss per token), ``tokens_domain/<d>`` and
  ``mixture_weight/<d>`` (the weights of the chunk being read) go to torchtitan's metric logger
  (console line, TensorBoard/W&B, ``metrics.jsonl``).

Not supported (ConfigError): pipeline parallelism (the loss runs inside the pipeline schedule),
context parallelism (labels are re-sharded after loading) and loss parallelism (the logits are
vocabulary-sharded DTensors; set ``parallelism.disable_loss_parallel = true``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .errors import ConfigError
from .extensions import TrainerExtension
from .run_files import LOSS_DOMAIN_PREFIX, MIXTURE_WEIGHT_PREFIX, TOKENS_DOMAIN_PREFIX

logger = logging.getLogger(__name__)

DOMAIN_IDS_KEY = "domain_ids"
IGNORE_INDEX = -100  # torchtitan.components.loss.IGNORE_INDEX


class DomainLoss(TrainerExtension):
    """Per-domain loss sums and token counts of the current step (see the module docstring).

    Args:
        loader: the mixture loader (``domains``, ``mixture``, ``planned_chunks``, ``apply_weights``).
        device: where the loss runs.
        group: the process group of the data-parallel ranks (None: one DP rank).
        metrics_processor: torchtitan's; its ``should_log`` and ``logger`` are used.
    """

    def __init__(self, loader: Any, device: torch.device, group: Any, metrics_processor: Any):
        self.loader = loader
        self.domains = list(loader.domains)
        self.device = device
        self.group = group
        self.metrics_processor = metrics_processor
        k = len(self.domains)
        self.sums = torch.zeros(k, dtype=torch.float64, device=device)
        self.counts = torch.zeros(k, dtype=torch.float64, device=device)
        self._pending: torch.Tensor | None = None
        self.last: dict[str, np.ndarray] | None = None
        """The last reduced statistics: ``{"loss_sums", "token_counts"}`` in the order of ``domains``."""

    # -- per micro-batch ---------------------------------------------------------------------------
    def take(self, input_dict: dict[str, torch.Tensor]) -> None:
        """Pop the batch's domain ids, which the next :meth:`loss` call uses."""
        ids = input_dict.pop(DOMAIN_IDS_KEY, None)
        if ids is None:
            raise RuntimeError(
                f"per-domain loss: the batch has no '{DOMAIN_IDS_KEY}'; the mixture loader adds them when "
                f"mixture.per_domain_loss = true."
            )
        self._pending = ids

    def loss(self, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy (as torchtitan's loss) that also adds each token's loss to its domain."""
        ids, self._pending = self._pending, None
        if ids is None:
            raise RuntimeError("per-domain loss: called without the batch's domain ids (DomainLoss.take).")
        flat_labels = labels.flatten(0, 1)
        per_token = F.cross_entropy(
            pred.flatten(0, 1).float(), flat_labels, reduction="none", ignore_index=IGNORE_INDEX
        )
        with torch.no_grad():
            flat_ids = ids.flatten().to(per_token.device)
            if flat_ids.shape != per_token.shape:
                raise RuntimeError(
                    f"per-domain loss: {tuple(ids.shape)} domain ids for labels of shape {tuple(labels.shape)}"
                )
            valid = flat_labels != IGNORE_INDEX
            self.sums.index_add_(0, flat_ids[valid], per_token.detach()[valid].to(torch.float64))
            self.counts += torch.bincount(flat_ids[valid], minlength=len(self.domains)).to(torch.float64)
        return per_token.sum()

    def on_batch(self, input_dict: dict[str, torch.Tensor], labels: torch.Tensor) -> None:
        self.take(input_dict)

    def on_step_end(self, step: int) -> None:
        self.end_step(step)

    # -- per step ----------------------------------------------------------------------------------
    def end_step(self, step: int) -> None:
        """Reduce over DP, feed a dynamic mixture, log on logged steps (every rank calls it)."""
        dynamic = self.loader.mixture.dynamic
        should_log = self.metrics_processor.should_log(step)
        if not (dynamic or should_log):
            return  # keep accumulating on the device: no host sync on this step
        stats = torch.cat([self.sums, self.counts])
        if self.group is not None:
            dist.all_reduce(stats, group=self.group)
        stats = stats.cpu().numpy()
        k = len(self.domains)
        sums, counts = stats[:k], stats[k:]
        self.sums.zero_()
        self.counts.zero_()
        self.last = {"loss_sums": sums, "token_counts": counts}
        if dynamic:
            self._adapt(sums, counts, step)
        if should_log:
            self._log(sums, counts, step)

    def _adapt(self, sums: np.ndarray, counts: np.ndarray, step: int) -> None:
        planned = torch.tensor([self.loader.planned_chunks], dtype=torch.int64, device=self.device)
        if self.group is not None:
            dist.all_reduce(planned, op=dist.ReduceOp.MAX, group=self.group)
        weights = self.loader.mixture.observe(sums, counts)
        if weights is None:
            return
        if self.group is not None:  # identical inputs give identical weights; rank 0's are authoritative
            w = torch.tensor(weights, dtype=torch.float64, device=self.device)
            dist.broadcast(w, src=dist.get_global_rank(self.group, 0), group=self.group)
            weights = w.cpu().numpy()
        self.loader.apply_weights(weights, int(planned.item()))
        if self.metrics_processor.should_log(step):
            logger.info("ADO step %d: weights %s from chunk %d", step,
                        {str(d): round(float(w), 4) for d, w in zip(self.domains, weights)}, int(planned.item()))

    def _log(self, sums: np.ndarray, counts: np.ndarray, step: int) -> None:
        chunk = max(self.loader.planned_chunks - 1, 0)
        weights = self.loader.mixture.weights_for_chunk(chunk, step)
        metrics: dict[str, float] = {}
        parts = []
        for d, s, c in zip(self.domains, sums, counts):
            name = str(d)
            w = float(weights.get(d, 0.0))
            metrics[f"{MIXTURE_WEIGHT_PREFIX}{name}"] = w
            metrics[f"{TOKENS_DOMAIN_PREFIX}{name}"] = float(c)
            if c > 0:
                metrics[f"{LOSS_DOMAIN_PREFIX}{name}"] = float(s / c)
            parts.append(f"{name} {s / c:.4f} ({int(c):,} tok, w {w:.3f})" if c > 0 else f"{name} - (0 tok, w {w:.3f})")
        self.metrics_processor.logger.log(metrics, step)
        logger.info("step %d per-domain loss: %s", step, " | ".join(parts))


def build_domain_loss(trainer: Any) -> DomainLoss | None:
    """The trainer's DomainLoss when its data source has domains (descriptor ``has_domains``) and the
    loader emits them (``mixture.per_domain_loss`` for the mixture source); else None."""
    from .data.registry import find_source
    from .data.source import DomainLoader

    dataset = getattr(getattr(trainer.job_config, "training", None), "dataset", None)
    source = find_source(dataset) if dataset else None
    if source is not None and not source.has_domains:
        return None
    loader = trainer.dataloader
    if not isinstance(loader, DomainLoader) or not loader.emit_domain_ids:
        return None
    dims, cfg = trainer.parallel_dims, trainer.job_config
    if dims.pp_enabled or dims.cp_enabled:
        raise ConfigError(
            "mixture.per_domain_loss (needed by ADO) does not work with pipeline or context parallelism "
            f"(pipeline_parallel_degree = {cfg.parallelism.pipeline_parallel_degree}, context_parallel_degree = "
            f"{cfg.parallelism.context_parallel_degree}); set mixture.per_domain_loss = false."
        )
    if dims.tp_enabled and not cfg.parallelism.disable_loss_parallel:
        raise ConfigError(
            "mixture.per_domain_loss with tensor parallelism needs parallelism.disable_loss_parallel = true "
            "(the per-token losses of vocabulary-sharded logits are not computed here)."
        )
    group = dims.get_mesh("batch").get_group() if dims.dp_enabled else None
    logger.info("Per-domain loss over %d domains %s%s", len(loader.domains), loader.domains,
                f"; {loader.mixture!r} adapts every step" if loader.mixture.dynamic else "")
    return DomainLoss(loader, trainer.device, group, trainer.metrics_processor)
