"""The routers of a mixture-of-experts policy in training: the load-balancing loss's weight and
the `moe/*` metrics.

- Weight. megatron-core adds `moe_aux_loss_coeff x` each micro-batch's balancing loss through the
  router's activations. dtrpo_mega sums losses over micro-batches and divides every gradient by the
  global number of pairs (`parallel/grads.py`, megatron's per-token-loss mode on GPU), so during a
  step the coefficient megatron-core reads is `moe.aux_loss_coeff x pairs / (micro-batches x DP)`:
  the objective gets `aux_loss_coeff x` the mean balancing loss over micro-batches and DP ranks,
  whatever the batch split. The routers' own per-token rescaling (megatron's per-token mode) is off.
- Metrics, after each step, on every rank (one all-reduce over the world: layers live in every
  pipeline stage): `moe/aux_loss` (the coefficient-free balancing loss, mean over MoE layers and
  micro-batches; with `moe.aux_loss_coeff > 0`), `moe/expert_load_max` (over layers: the most
  loaded expert's tokens over the mean), `moe/layer{i}/expert_load_max` and
  `moe/layer{i}/expert_load_min` (the least loaded over the mean) for each MoE layer i.
  Routing is dropless, as in the families' own code, so no token is ever dropped and no
  `tokens_dropped` is logged; the reference routes the same rows by the same (dropless) rule.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

from megatron.core.transformer.moe import moe_utils
from megatron.core.transformer.moe.router import TopKRouter

from dtrpo_mega.parallel.runtime import comm_device

BALANCING_LOSS = "load_balancing_loss"  # megatron-core's tracker name for the aux loss


class RouterMonitor:
    """Counts the tokens every router of `model` sends each expert in training forwards."""

    def __init__(self, model, dp_size: int):
        self.model, self.dp = model, dp_size
        self.config = model.config
        self.coeff = self.config.moe_aux_loss_coeff
        self.routers = [m for m in model.modules() if isinstance(m, TopKRouter)]
        self.num_layers = self.config.num_layers
        device = next(model.parameters()).device  # counted where routed: no host sync per layer
        self.counts = torch.zeros(self.num_layers, self.config.num_moe_experts, dtype=torch.float64, device=device)
        for router in self.routers:
            router.calculate_per_token_loss = False  # dtrpo_mega scales the coefficient instead (above)
            router.register_forward_hook(self._count)
        self.micro_batches = 0

    def _count(self, router, inputs, output) -> None:
        if router.training and torch.is_grad_enabled():  # a training forward (or its recompute), not eval
            _, routing_map = output
            self.counts[router.layer_number - 1] += routing_map.sum(dim=0).to(self.counts)

    @contextlib.contextmanager
    def step(self, micro_batches: int, pairs: int):
        """Within the block, the coefficient megatron-core reads gives `coeff x` the mean balancing loss."""
        self.micro_batches = micro_batches
        self.config.moe_aux_loss_coeff = self.coeff * pairs / (micro_batches * self.dp)
        try:
            yield
        finally:
            self.config.moe_aux_loss_coeff = self.coeff

    def metrics(self) -> dict[str, float]:
        """The step's `moe/*` metrics (every rank calls it); the counts and the loss tracker restart."""
        tracker = moe_utils.get_moe_layer_wise_logging_tracker()
        loss = tracker[BALANCING_LOSS]["values"].detach().to(torch.float64).cpu() if BALANCING_LOSS in tracker else None
        losses = torch.zeros(self.num_layers, dtype=torch.float64) if loss is None else loss / self.micro_batches
        both = torch.cat([self.counts.cpu(), losses[:, None]], dim=1).to(comm_device())
        dist.all_reduce(both)  # each token is routed on one rank per layer; each loss part lives on one rank
        counts, losses = both[:, :-1].cpu(), both[:, -1].cpu() / self.dp
        moe_utils.clear_aux_losses_tracker()
        self.counts.zero_()
        layers = [i for i in range(self.num_layers) if counts[i].sum() > 0]
        out = {}
        for i in layers:
            mean = counts[i].mean()
            out[f"moe/layer{i}/expert_load_max"] = float(counts[i].max() / mean)
            out[f"moe/layer{i}/expert_load_min"] = float(counts[i].min() / mean)
        if layers:
            out["moe/expert_load_max"] = max(out[f"moe/layer{i}/expert_load_max"] for i in layers)
        if self.coeff and layers:
            out["moe/aux_loss"] = float(losses[layers].mean())
        return out
