"""The optimizer and activation monitors on a tiny model, against values computed here independently
(numpy, by hand), and their reduction across 2 real gloo processes with FSDP2."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from titan_recipes.errors import ConfigError
from titan_recipes.config import validate_monitor
from titan_recipes.monitor import ActivationMonitor, OptimizerMonitor

LR, BETAS, EPS = 0.01, (0.9, 0.999), 1e-8
W1 = [[0.5, -0.2, 0.1, 0.3], [-0.4, 0.6, 0.2, -0.1], [0.05, 0.15, -0.3, 0.7]]
B1 = [0.1, -0.2, 0.05]
W2 = [[0.3, -0.5, 0.2]]
B2 = [0.4]


def tiny_model() -> nn.Sequential:
    """Linear(4, 3) -> Linear(3, 1) with fixed weights (float64 copies in the numpy reference)."""
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
    with torch.no_grad():
        for layer, (w, b) in zip(model, [(W1, B1), (W2, B2)]):
            layer.weight.copy_(torch.tensor(w))
            layer.bias.copy_(torch.tensor(b))
    return model


def batch(n: int = 8) -> torch.Tensor:
    return torch.linspace(-2.0, 3.0, n * 4).reshape(n, 4) ** 2 - 1.5  # skewed, fixed values


def loss_fn(y: torch.Tensor) -> torch.Tensor:
    return (y**2).mean()


def collect(model, optimizer, interval: int, **kwargs):
    """Both monitors on ``model``, reporting into a list of (step, metrics); returns them and a step box."""
    step, reports = [0], []
    common = dict(interval=interval, step_fn=lambda: step[0], report=lambda m, s: reports.append((s, m)))
    opt_mon = OptimizerMonitor([model], optimizer, only_global=False, **common)
    act_mon = ActivationMonitor([model], optimizer, **common, **kwargs)
    return step, reports, opt_mon, act_mon


def train_step(model, optimizer, step, inputs) -> None:
    step[0] += 1
    optimizer.zero_grad()
    for x in inputs:  # micro-batches: the loss of each is its share of the mean over all
        (loss_fn(model(x)) * len(x) / sum(len(i) for i in inputs)).backward()
    optimizer.step()


# -- the numpy reference ------------------------------------------------------------------------------


def moments(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=np.float64).ravel()
    m = x.mean()
    var = ((x - m) ** 2).mean()
    return {"l2_norm": np.sqrt((x**2).sum()), "max": x.max(), "min": x.min(), "mean": m, "var": var,
            "skew": ((x - m) ** 3).mean() / var**1.5, "kurtosis": ((x - m) ** 4).mean() / var**2 - 3}


def reference(x: np.ndarray) -> tuple[dict[str, np.ndarray], ...]:
    """Forward, hand-derived backward of mean(y^2) and one Adam step, in float64 numpy.
    Returns activations, gradients, parameters before and after the step, keyed like the model."""
    w1, b1, w2, b2 = (np.array(v, dtype=np.float64) for v in (W1, B1, W2, B2))
    h = x @ w1.T + b1
    y = h @ w2.T + b2
    dy = 2 * y / y.size
    dh = dy @ w2
    grads = {"0.weight": dh.T @ x, "0.bias": dh.sum(0), "1.weight": dy.T @ h, "1.bias": dy.sum(0)}
    params = {"0.weight": w1, "0.bias": b1, "1.weight": w2, "1.bias": b2}
    # Adam, step 1: m = (1-b1) g, v = (1-b2) g^2; bias correction gives m_hat = g, v_hat = g^2.
    new = {k: params[k] - LR * g / (np.abs(g) + EPS) for k, g in grads.items()}
    acts = {"model/input": x, "0/input": x, "0/output": h, "1/input": h, "1/output": y, "model/output": y}
    return acts, grads, params, new


def assert_close(got: float, want: float, what: str) -> None:
    assert math.isclose(got, float(want), rel_tol=2e-5, abs_tol=1e-6), f"{what}: monitor {got}, reference {want}"


# -- values on one process ----------------------------------------------------------------------------


def test_values_match_hand_computed_ones():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    step, reports, opt_mon, act_mon = collect(model, optimizer, interval=1)
    x = batch()
    train_step(model, optimizer, step, [x])
    acts, grads, params, new = reference(x.double().numpy())
    (s1, optim), (s2, act) = reports
    assert s1 == s2 == 1

    def check_tensor(name: str, *, g, p, p_new):
        upd = p_new - p
        m, v = (1 - BETAS[0]) * g, (1 - BETAS[1]) * g**2
        assert_close(optim[f"optim/grad_norm/{name}"], np.sqrt((g**2).sum()), f"grad_norm/{name}")
        assert_close(optim[f"optim/param_norm/{name}"], np.sqrt((p**2).sum()), f"param_norm/{name}")
        assert_close(optim[f"optim/update_norm/{name}"], np.sqrt((upd**2).sum()), f"update_norm/{name}")
        assert_close(optim[f"optim/update_ratio/{name}"], np.sqrt((upd**2).sum() / (p**2).sum()), name)
        for key, s in (("exp_avg", m), ("exp_avg_sq", v)):
            assert_close(optim[f"optim/{key}_norm/{name}"], np.sqrt((s**2).sum()), f"{key}_norm/{name}")
            assert_close(optim[f"optim/{key}_max/{name}"], s.max(), f"{key}_max/{name}")
            assert_close(optim[f"optim/{key}_min/{name}"], s.min(), f"{key}_min/{name}")
            assert_close(optim[f"optim/{key}_mean/{name}"], s.mean(), f"{key}_mean/{name}")

    for name in grads:
        check_tensor(name, g=grads[name], p=params[name], p_new=new[name])
    flat = {k: np.concatenate([d[n].ravel() for n in grads]) for k, d in
            (("g", grads), ("p", params), ("p_new", new))}
    check_tensor("global", **flat)
    assert len(optim) == 12 * 5  # 12 metrics for each of the 4 parameters and the global values

    for key, x_np in acts.items():
        for stat, want in moments(x_np).items():
            assert_close(act[f"act/{key}/{stat}"], want, f"act/{key}/{stat}")
    assert len(act) == len(acts) * 7
    assert act_mon.last == act and opt_mon.last == optim


def test_monitors_do_not_change_training_and_skip_off_interval_steps():
    torch.manual_seed(0)
    plain, monitored = tiny_model(), tiny_model()
    opt_a = torch.optim.AdamW(plain.parameters(), lr=LR, weight_decay=0.1)
    opt_b = torch.optim.AdamW(monitored.parameters(), lr=LR, weight_decay=0.1)
    step, reports, _, _ = collect(monitored, opt_b, interval=3)
    box = [0]
    for _ in range(7):
        x = torch.randn(6, 4)
        train_step(plain, opt_a, box, [x, x[:2]])
        train_step(monitored, opt_b, step, [x, x[:2]])
    for a, b in zip(plain.parameters(), monitored.parameters()):
        assert torch.equal(a, b)
    assert [s for s, _ in reports] == [3, 3, 6, 6]
    # Between monitored steps no per-module hook is left on the model.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in monitored[:2])


def test_micro_batches_add_up_and_eval_forwards_are_not_collected():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    step, reports, _, _ = collect(model, optimizer, interval=1)
    x = batch(10)
    step[0] += 1
    optimizer.zero_grad()
    for part in (x[:3], x[3:]):
        (loss_fn(model(part)) * len(part) / len(x)).backward()
    model.eval()
    model(torch.full((2, 4), 100.0))  # a validation forward during the monitored step
    model.train()
    optimizer.step()
    act = reports[1][1]
    for stat, want in moments(x.double().numpy()).items():
        assert_close(act[f"act/0/input/{stat}"], want, f"act/0/input/{stat}")


def test_ignore_module_types():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    optimizer = torch.optim.Adam(model.parameters())
    step, reports, _, act_mon = collect(model, optimizer, interval=1, ignore_module_types=["ReLU"])
    train_step(model, optimizer, step, [batch()])
    assert [n for n, _ in act_mon.modules] == ["model", "0", "2"]
    assert not any(k.startswith("act/1/") for k in reports[1][1])
    act_mon.remove()
    with pytest.raises(ConfigError, match=r"activation_monitor_ignore_module_types: \['Dropout'\] match no module"):
        ActivationMonitor([model], optimizer, interval=1, step_fn=lambda: 1, report=print,
                          ignore_module_types=["Dropout"])


def test_gradient_norms_only():
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    step, reports = [0], []
    OptimizerMonitor([model], optimizer, interval=1, step_fn=lambda: step[0], log_metrics=False,
                     report=lambda m, s: reports.append(m))
    train_step(model, optimizer, step, [batch()])
    _, grads, _, _ = reference(batch().double().numpy())
    assert list(reports[0]) == ["optim/grad_norm/global"]
    want = np.sqrt(sum((g**2).sum() for g in grads.values()))
    assert_close(reports[0]["optim/grad_norm/global"], want, "grad_norm/global")


# -- config -------------------------------------------------------------------------------------------


def parse(*args: str):
    from torchtitan.config import ConfigManager  # here: the 2-process test's workers need only torch

    return ConfigManager().parse_args(["--job.custom_config_module", "titan_recipes.config", *args])


@pytest.mark.parametrize("args, match", [
    (["--monitor.optimizer_monitor_interval", "-1"], r"monitor.optimizer_monitor_interval must be >= 0 .* got -1"),
    (["--monitor.activation_monitor_interval", "-5"], r"monitor.activation_monitor_interval must be >= 0"),
    (["--monitor.activation_monitor_enabled", "--monitor.activation_monitor_interval", "0"],
     r"activation_monitor_enabled = true with monitor.activation_monitor_interval = 0"),
    (["--monitor.activation_monitor_ignore_module_types", "RMSNorm,"], r"ignore_module_types has empty entries"),
    (["--monitor.optimizer_monitor_interval", "5", "--optimizer.early_step_in_backward"],
     r"needs optimizer.early_step_in_backward = false"),
    (["--monitor.activation_monitor_enabled", "--parallelism.pipeline_parallel_degree", "2"],
     r"does not support pipeline parallelism"),
])
def test_bad_monitor_config_is_a_config_error(args, match):
    config = parse(*args)
    with pytest.raises(ConfigError, match=match):
        validate_monitor(config)


def test_monitor_section_defaults_and_toml(tmp_path):
    validate_monitor(parse())
    assert parse().monitor.optimizer_monitor_interval == 0
    toml = tmp_path / "m.toml"
    toml.write_text('[monitor]\noptimizer_monitor_interval = 10\noptimizer_monitor_only_global = false\n'
                    'activation_monitor_enabled = true\nactivation_monitor_ignore_module_types = ["RMSNorm"]\n')
    config = parse("--job.config_file", str(toml))
    validate_monitor(config)
    assert (config.monitor.optimizer_monitor_interval, config.monitor.optimizer_monitor_only_global) == (10, False)
    assert config.monitor.activation_monitor_ignore_module_types == ["RMSNorm"]


# -- 2 gloo processes, FSDP2 --------------------------------------------------------------------------


def _fsdp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)  # a forked child must not reuse the parent's intra-op thread pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        model = tiny_model()
        for layer in model:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        step, reports = [0], {}
        common = dict(interval=1, step_fn=lambda: step[0], report=lambda m, s: reports.update(m))
        OptimizerMonitor([model], optimizer, only_global=False, **common)
        ActivationMonitor([model], optimizer, group=mesh.get_group(), **common)
        x = batch().chunk(world)[rank]  # each rank its own half of the global batch
        # FSDP averages gradients over the ranks: the mean of the local means is the global mean.
        train_step(model, optimizer, step, [x])
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(reports, f)
    finally:
        dist.destroy_process_group()


def test_two_process_fsdp_reduction_equals_one_process(tmp_path):
    """Weights sharded over 2 ranks (the last layer's weight leaves rank 1 an empty shard), each rank
    with half of the batch: the reduced values equal one process training on the whole batch."""
    # fork, not spawn: a spawned child re-imports torch (10 s on a loaded 2-core machine).
    procs = mp.start_processes(_fsdp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2,
                               join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not procs.join(timeout=5):  # raises with the worker's traceback if one fails
        if time.monotonic() > deadline:
            for proc in procs.processes:
                proc.kill()
            pytest.fail("the 2 FSDP worker processes did not finish within 120 s")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # every rank holds the reduced values
        assert_close(ranks[1][key], ranks[0][key], key)

    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
    step, reports, _, _ = collect(model, optimizer, interval=1)
    train_step(model, optimizer, step, [batch()])
    single = {**reports[0][1], **reports[1][1]}
    assert single.keys() == ranks[0].keys()
    for key, value in single.items():
        assert_close(ranks[0][key], value, key)
    acts, *_ = reference(batch().double().numpy())
    for stat, want in moments(acts["0/output"]).items():  # and the numpy values of the whole batch
        assert_close(ranks[0][f"act/0/output/{stat}"], want, stat)
