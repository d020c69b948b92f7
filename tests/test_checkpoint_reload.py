"""Resuming at another parallel layout refreshes the optimizer's fp32 main copies of the weights."""

import json

import pytest
import torch

from dtrpo_mega.checkpoint.integrity import write_manifest
from dtrpo_mega.config import OptimizerSection
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.checkpoint.trainer import load_checkpoint, save_checkpoint
from dtrpo_mega.training.optim import CpuOptimizer


class MainParams:
    """Stand-in for megatron's mixed-precision optimizer: fp32 main copies of the weights, taken
    when it is built; a step updates them and writes them back into the model."""

    def __init__(self, model):
        self.params = list(model.parameters())
        self.main = [p.detach().float().clone() for p in self.params]

    def reload_model_params(self, state_dict=None):
        for main, param in zip(self.main, self.params):
            main.copy_(param.detach())

    def step(self):  # a zero-gradient update: main copies unchanged, then written back
        for main, param in zip(self.main, self.params):
            param.data.copy_(main)


class StandInOptimizer:
    """Shaped like optim.MegatronOptimizer: megatron's optimizer is `.optimizer`."""

    def __init__(self, model):
        self.optimizer = MainParams(model)

    def state_dict(self):
        return {}


def _model(seed):
    torch.manual_seed(seed)
    return build_model(model_config("sdar"))


def _checkpoint_from_another_layout(tmp_path, model, optimizer):
    path = save_checkpoint(tmp_path, 7, model, optimizer, config={})
    trainer = json.loads((path / "trainer.json").read_text())
    trainer["layout"]["tp"] = 2  # as if saved at TP=2: the optimizer state cannot be restored
    (path / "trainer.json").write_text(json.dumps(trainer))
    write_manifest(path)  # the checksums of a checkpoint really saved there
    return path


def test_first_step_after_a_layout_change_keeps_the_loaded_weights(world_of_one, tmp_path):
    saved = _model(0)
    path = _checkpoint_from_another_layout(tmp_path, saved, StandInOptimizer(saved))
    resumed_model = _model(1)
    optimizer = StandInOptimizer(resumed_model)  # built before loading, as in training.loop
    resumed = load_checkpoint(path, resumed_model, optimizer)
    assert (resumed.step, resumed.optimizer_restored) == (7, False)

    optimizer.optimizer.step()
    for (name, want), got in zip(saved.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("layout_changed", [False, True])
def test_cpu_optimizer_resumes_at_either_layout(world_of_one, tmp_path, layout_changed):
    saved = _model(0)
    save = (_checkpoint_from_another_layout if layout_changed
            else lambda root, m, o: save_checkpoint(root, 7, m, o, config={}))
    path = save(tmp_path, saved, CpuOptimizer(saved, OptimizerSection()))
    resumed_model = _model(1)
    resumed = load_checkpoint(path, resumed_model, CpuOptimizer(resumed_model, OptimizerSection()))
    assert resumed.optimizer_restored is not layout_changed
    for (name, want), got in zip(saved.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
