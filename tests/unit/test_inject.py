"""titan_recipes.inject's adapters, without a Trainer: the checks on injected optimizers (unique FQNs,
each parameter in exactly one optimizer), the LR scheduler container's state round trip, the data-loader
wrapping (a non-Stateful loader is refused with a message that says what to do; ResumableLoader resumes
a shuffled DataLoader mid-epoch exactly), the model factory checks and the job-config loading.
The end-to-end runs are tests/integration/test_inject.py."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from titan_recipes import inject
from titan_recipes.errors import ConfigError
from titan_recipes.data import state as state_codec

REPO_CONFIG = "recipes/debug/train.toml"


def _named(model: nn.Module):
    return [(n, p) for n, p in model.named_parameters()]


# -- optimizers ----------------------------------------------------------------------------------------


def test_parameter_names_must_be_unique_across_model_parts():
    parts = [nn.Linear(2, 2), nn.Linear(2, 3)]  # both have "weight" and "bias"
    with pytest.raises(ValueError, match=r"not unique across the 2 model parts: \['weight \(parts 0 and 1\)', 'bias"):
        inject.InjectedOptimizers(parts, lambda named: torch.optim.SGD([p for _, p in named], lr=0.1))


def test_each_trainable_parameter_must_be_in_exactly_one_optimizer():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    only_first = lambda named: torch.optim.SGD(model[0].parameters(), lr=0.1)  # noqa: E731
    with pytest.raises(ValueError, match=r"missing \['1.weight', '1.bias'\]"):
        inject.InjectedOptimizers([model], only_first)
    foreign = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"2 parameters are not trainable parameters of this part"):
        inject.InjectedOptimizers([model], lambda named: torch.optim.SGD([*model.parameters(), *foreign.parameters()], lr=0.1))
    with pytest.raises(TypeError, match=r"must return a torch.optim.Optimizer or a list of them"):
        inject.InjectedOptimizers([model], lambda named: "sgd")


def test_several_optimizers_per_part_checkpoint_by_fqn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))

    def two(named):  # matrices with one optimizer, the rest with another, as Muon recipes do
        return [torch.optim.Adam([p for _, p in named if p.ndim == 2], lr=0.1),
                torch.optim.SGD([p for _, p in named if p.ndim < 2], lr=0.1, momentum=0.9)]

    optimizers = inject.InjectedOptimizers([model], two)
    model(torch.randn(3, 4)).sum().backward()
    optimizers.step()
    state = optimizers.state_dict()
    assert {"state.0.weight.exp_avg", "state.0.bias.momentum_buffer", "state.1.weight.momentum_buffer"} <= set(state)
    model.zero_grad(set_to_none=True)  # as at a resume: DCP initialises empty optimizer state only without grads
    fresh = inject.InjectedOptimizers([model], two)
    fresh.load_state_dict(state)
    for new, old in zip(fresh.optimizers, optimizers.optimizers):
        for p in old.state:
            assert old.state[p] and all(torch.equal(new.state[p][k], v) for k, v in old.state[p].items())


# -- LR schedulers ---------------------------------------------------------------------------------------


def _schedulers(factory):
    model = nn.Linear(2, 2)
    optimizers = inject.InjectedOptimizers([model], lambda named: torch.optim.SGD([p for _, p in named], lr=1.0))
    return inject.InjectedLRSchedulers(optimizers, factory)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")  # no training here
def test_any_lr_scheduler_round_trips_its_state():
    one_cycle = lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)  # noqa: E731
    first = _schedulers(one_cycle)
    for _ in range(4):
        first.step()
    second = _schedulers(one_cycle)
    assert second.schedulers[0].get_last_lr() != first.schedulers[0].get_last_lr()
    second.load_state_dict(first.state_dict())
    for _ in range(3):  # the restored schedule continues exactly like the original
        assert second.schedulers[0].get_last_lr() == first.schedulers[0].get_last_lr()
        first.step(), second.step()


def test_scheduler_class_mismatch_and_plateau_are_errors():
    cosine = _schedulers(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10))
    step = _schedulers(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2))
    with pytest.raises(ValueError, match=r"checkpoint's LR scheduler 0 is a CosineAnnealingLR, this run's is a StepLR"):
        step.load_state_dict(cosine.state_dict())
    with pytest.raises(TypeError, match=r"ReduceLROnPlateau cannot be injected: .* without a metric"):
        _schedulers(lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt))
    with pytest.raises(TypeError, match=r"returned SGD, not a torch.optim.lr_scheduler.LRScheduler"):
        _schedulers(lambda opt: opt)


# -- data loaders ----------------------------------------------------------------------------------------


def _batches(n: int = 3):
    return [({"input": torch.full((2, 4), i)}, torch.full((2, 4), i)) for i in range(n)]


def test_a_non_stateful_loader_is_refused_while_checkpointing(caplog):
    message = r"\(list\) is not Stateful .* would read the data again from the start\. Wrap it: titan_recipes.inject.ResumableLoader"
    with pytest.raises(ValueError, match=message):
        inject.wrap_loader(_batches(), dp_rank=0, dp_world_size=1, checkpointing=True)
    with caplog.at_level(logging.WARNING):
        loader = inject.wrap_loader(_batches(), dp_rank=0, dp_world_size=1, checkpointing=True, on_unstateful_loader="restart")
        loader.load_state_dict(loader.state_dict())
    assert "a resume restarts the data from its first batch" in caplog.text
    assert "reads its data again from the first batch" in caplog.text
    assert len(list(loader)) == 3
    assert len(list(inject.wrap_loader(_batches(), dp_rank=0, dp_world_size=1, checkpointing=False))) == 3
    with pytest.raises(ValueError, match=r"on_unstateful_loader must be one of \('error', 'restart'\), got 'skip'"):
        inject.wrap_loader(_batches(), dp_rank=0, dp_world_size=1, checkpointing=True, on_unstateful_loader="skip")


def test_a_stateful_loader_keeps_its_state_per_rank():
    inner = inject.ResumableLoader(_batches())
    wrapped = inject.wrap_loader(inner, dp_rank=1, dp_world_size=2, checkpointing=True)
    state = wrapped.state_dict()
    assert set(state) == {state_codec.rank_key(1), state_codec.WORLD_SIZE}
    other = inject.wrap_loader(inject.ResumableLoader(_batches()), dp_rank=1, dp_world_size=4, checkpointing=True)
    with pytest.raises(ValueError, match=r"written with data-parallel degree 2, this run has 4"):
        other.load_state_dict(state)


def _shuffled_loader(seed: int = 7) -> DataLoader:
    data = torch.arange(40).reshape(10, 4)
    return DataLoader(data, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(seed))


def test_resumable_loader_resumes_a_shuffled_dataloader_exactly():
    reference = inject.ResumableLoader(_shuffled_loader())
    it = iter(reference)
    head = [next(it) for _ in range(5)]  # an epoch has 4 batches: this is one batch into epoch 1
    state = reference.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 1)
    tail = [next(it) for _ in range(6)]
    resumed = inject.ResumableLoader(_shuffled_loader(seed=999))  # a fresh generator: the state replaces it
    resumed.load_state_dict(state)
    got = [b for _, b in zip(range(6), resumed)]
    assert all(torch.equal(a, b) for a, b in zip(got, tail))
    assert not torch.equal(head[0], tail[3])  # epochs 1 and 2 are shuffled differently from epoch 0


def test_resumable_loader_refuses_unseeded_shuffling():
    with pytest.raises(ValueError, match=r"shuffles with torch's global RNG .* generator=torch.Generator\(\).manual_seed\(seed\)"):
        inject.ResumableLoader(DataLoader(torch.arange(8), batch_size=2, shuffle=True))


# -- model factory -----------------------------------------------------------------------------------


class _NoInit(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)


def test_model_factory_checks():
    with torch.device("meta"):
        with pytest.raises(TypeError, match=r"has no init_weights\(buffer_device=None\) method"):
            inject._FactoryModel(_NoInit, with_args=False)(None)
        with pytest.raises(ValueError, match=r"created parameters on \['cpu'\]: it is called inside torch.device\('meta'\)"):
            inject._FactoryModel(lambda: nn.Linear(2, 2, device="cpu"), with_args=False)(None)


# -- job config ------------------------------------------------------------------------------------------


def test_job_config_from_toml_dict_and_cli_overrides():
    config = inject.load_job_config(REPO_CONFIG, {"training": {"steps": 7}, "launch.stop_at_step": 5})
    assert (config.training.steps, config.launch.stop_at_step, config.model.flavor) == (7, 5, "debugmodel")
    config = inject.load_job_config(REPO_CONFIG, ["--training.steps", "9"])
    assert config.training.steps == 9
    again = inject.load_job_config(config, {"optimizer.lr": 0.5})
    assert (again.training.steps, again.optimizer.lr, config.optimizer.lr) == (9, 0.5, 8e-4)
    assert inject.load_job_config({"training": {"seq_len": 64}}).training.seq_len == 64


def test_job_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"Unknown config key `training.stepz`: \[training\] has \["):
        inject.load_job_config(REPO_CONFIG, {"training.stepz": 3})
    with pytest.raises(ConfigError, match=r"`training.steps` has the wrong type: expected int, got str '10'"):
        inject.load_job_config(REPO_CONFIG, {"training": {"steps": "10"}})
    with pytest.raises(ConfigError, match=r"Job config file not found: 'no/such.toml'"):
        inject.load_job_config("no/such.toml")


def test_distributed_env_fills_only_absent_variables(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "recorded")  # so that monkeypatch restores (or removes) each one afterwards
        monkeypatch.delenv(key)
    added = inject.distributed_env()
    assert set(added) == {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    assert (added["RANK"], added["WORLD_SIZE"]) == ("0", "1") and int(added["MASTER_PORT"]) > 0
    monkeypatch.delenv("MASTER_PORT")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"\['MASTER_PORT'\] unset while RANK/WORLD_SIZE are set"):
        inject.distributed_env()


# -- the TrainSpec ---------------------------------------------------------------------------------------


def test_build_train_spec_replaces_only_the_given_slots():
    from torchtitan.protocols.train_spec import get_train_spec

    config = inject.load_job_config(REPO_CONFIG)
    base = get_train_spec(inject.register_recipe_spec(config.model.name))
    loss, validator, tokenizer = (lambda pred, labels: pred.sum()), (lambda **kwargs: None), object()
    spec = inject.build_train_spec(config, loss_fn=loss, validator=validator, tokenizer=tokenizer)
    assert spec.build_loss_fn(config, parallel_dims=None) is loss
    assert spec.build_validator_fn is validator and spec.build_tokenizer_fn(config) is tokenizer
    for kept in ("model_cls", "model_args", "parallelize_fn", "build_optimizers_fn", "build_lr_schedulers_fn",
                 "build_dataloader_fn", "build_metrics_processor_fn", "state_dict_adapter"):
        assert getattr(spec, kept) is getattr(base, kept), kept
    custom = inject.build_train_spec(config, model=nn.Linear)
    assert isinstance(custom.model_args["debugmodel"], inject.FactoryModelArgs)
    assert custom.state_dict_adapter is None and base.state_dict_adapter is not None  # llama3's HF adapter
    with pytest.raises(ValueError, match=r"model_args was given without a model factory"):
        inject.build_train_spec(config, model_args=base.model_args["debugmodel"])


def test_one_loader_object_for_several_data_parallel_ranks_is_an_error():
    config = inject.load_job_config(REPO_CONFIG)
    spec = inject.build_train_spec(config, dataloader=inject.ResumableLoader(_batches()))
    assert isinstance(spec.build_dataloader_fn(dp_world_size=1, dp_rank=0, tokenizer=None, job_config=config).loader,
                      inject.ResumableLoader)
    with pytest.raises(ValueError, match=r"one ResumableLoader object but the data-parallel degree is 2: every rank would read"):
        spec.build_dataloader_fn(dp_world_size=2, dp_rank=1, tokenizer=None, job_config=config)
