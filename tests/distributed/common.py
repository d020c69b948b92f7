"""Helpers for the torchrun test scripts: move weights and gradients between parallel layouts.

Gradients are compared across layouts by saving them as a megatron dist checkpoint (in place of
the weights) and loading that checkpoint, resharded, into a model of the other layout.
"""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron.core import dist_checkpointing

from dtrpo_mega.diffusion.mask import TokenLayout


@dataclass
class Batch:
    """Model inputs of a test micro-batch, with the tokens its loss scores."""

    tokens: torch.Tensor
    layout: TokenLayout
    labels: torch.Tensor
    scored: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.tokens.to(device), self.layout.to(device), self.labels.to(device), self.scored.to(device))


def save_weights(model, path) -> None:
    if dist.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(), str(path))


def save_grads(model, path) -> None:
    """Save the gradients as if they were the weights."""
    weights = {n: p.data for n, p in model.named_parameters()}
    for p in model.parameters():
        p.data = p.grad.clone()
    try:
        save_weights(model, path)
    finally:
        for n, p in model.named_parameters():
            p.data = weights[n]


def load_weights(model, path) -> None:
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), str(path)))


def assert_grads_match(model, expected_model, tag: str) -> int:
    """Compare every local gradient with the matching shard of `expected_model`'s weights."""
    expected = dict(expected_model.named_parameters())
    checked = 0
    for name, param in model.named_parameters():
        if param.grad is None:
            continue
        torch.testing.assert_close(param.grad, expected[name].data, rtol=1e-4, atol=5e-6,
                                   msg=lambda m: f"{tag} {name}: {m}")
        unrouted = ".mlp.experts." in name and not expected[name].data.any()  # an expert no token chose
        assert param.grad.abs().sum() > 0 or unrouted, f"{tag}: zero gradient for {name}"
        checked += 1
    assert checked > 0, f"{tag}: no gradients"
    return checked
