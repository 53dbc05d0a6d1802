"""The per-domain loss (titan_recipes/domain_loss.py): its training loss equals torchtitan's summed
cross-entropy, its per-domain sums and counts equal a hand computation, the logged metrics, and the
parallelisms it refuses."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from configs import job_config
from mixture_corpus import C4, GITHUB, WIKI, registered_corpus
from torchtitan.components.loss import cross_entropy_loss
from torchtitan.distributed.parallel_dims import ParallelDims

from titan_recipes.errors import ConfigError
from titan_recipes.data.mixture import SampleIndex, StaticMixture
from titan_recipes.data.mixture.loader import MixtureLoader
from titan_recipes.domain_loss import DomainLoss, build_domain_loss

WEIGHTS = {C4: 0.5, GITHUB: 0.3, WIKI: 0.2}


@pytest.fixture(scope="module")
def loader(tmp_path_factory, tokenizer):
    index = SampleIndex(registered_corpus(tmp_path_factory).index_dir, read_only=True)
    yield MixtureLoader(
        index=index, mixture=StaticMixture(WEIGHTS, "redpajama_set_name"), tokenizer=tokenizer, seq_len=16,
        local_batch_size=4, dp_rank=0, dp_world_size=1, chunk_size=10, seed=3, emit_domain_ids=True,
    )
    index.close()


class Recorder:
    """Stands in for torchtitan's metric logger: keeps what was logged."""

    def __init__(self):
        self.rows = []

    def log(self, metrics, step):
        self.rows.append((step, metrics))


def test_loss_and_per_domain_sums_match_a_hand_computation(loader):
    metrics = SimpleNamespace(should_log=lambda step: step % 2 == 0, logger=Recorder())
    dl = DomainLoss(loader, torch.device("cpu"), None, metrics)
    torch.manual_seed(0)
    want_sums, want_counts = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for step in (1, 2):  # two steps, the second logged: metrics cover both
        inputs, labels = next(iter(loader))
        labels[0, :3] = -100  # ignored tokens count for no domain
        ids = inputs["domain_ids"].clone()
        dl.take(inputs)
        assert "domain_ids" not in inputs  # the model never sees them
        pred = torch.randn(*labels.shape, 2048, requires_grad=True)
        loss = dl.loss(pred, labels)
        assert loss.item() == pytest.approx(cross_entropy_loss(pred, labels).item(), rel=1e-6)
        loss.backward()
        assert pred.grad is not None
        per_token = F.cross_entropy(pred.detach().flatten(0, 1), labels.flatten(), reduction="none")
        for d in range(3):
            mask = (ids.flatten() == d) & (labels.flatten() != -100)
            want_sums[d] += per_token[mask].double().sum()
            want_counts[d] += mask.sum()
        dl.end_step(step)
    assert metrics.logger.rows and [s for s, _ in metrics.logger.rows] == [2]
    torch.testing.assert_close(torch.from_numpy(dl.last["loss_sums"]), want_sums)
    assert dl.last["token_counts"].tolist() == want_counts.tolist()
    assert want_counts.sum() == 2 * 4 * 16 - 6
    _, logged = metrics.logger.rows[0]
    for d, name in enumerate(loader.domains):
        assert logged[f"loss_domain/{name}"] == pytest.approx((want_sums[d] / want_counts[d]).item())
        assert logged[f"mixture_weight/{name}"] == WEIGHTS[name]
    with pytest.raises(RuntimeError, match="without the batch's domain ids"):
        dl.loss(pred, labels)


@pytest.mark.parametrize(
    "dims, match",
    [
        (dict(dp_shard=1, cp=2, tp=1, pp=1), "pipeline or context parallelism"),
        (dict(dp_shard=1, cp=1, tp=1, pp=2), "pipeline or context parallelism"),
        (dict(dp_shard=1, cp=1, tp=2, pp=1), "disable_loss_parallel = true"),
    ],
)
def test_unsupported_parallelisms_are_config_errors(loader, dims, match):
    parallel_dims = ParallelDims(dp_replicate=1, ep=1, etp=1, world_size=2, **dims)
    cfg = job_config(training={"dataset": "mixture"}, parallelism={
        "pipeline_parallel_degree": dims["pp"], "context_parallel_degree": dims["cp"], "disable_loss_parallel": False})
    trainer = SimpleNamespace(dataloader=loader, parallel_dims=parallel_dims, job_config=cfg)
    with pytest.raises(ConfigError, match=match):
        build_domain_loss(trainer)
