"""Gradient reductions for models that are not wrapped in megatron's DistributedDataParallel.

Megatron's `finalize_model_grads` expects DDP's `main_grad` buffers (a GPU path). On CPU ranks the
same reductions are done here on `.grad`: the partial gradients of replicated parameters that see
only this rank's heads or sequence shard (q/k norms, sequence-parallel norms) over the TP group,
the tied embedding/output weight across the first and last pipeline stages, then the
data-parallel mean (summing over context-parallel ranks), each over the model's own groups
(`model.pg_collection`). A routed expert's gradient already holds the tokens every rank of its
expert-parallel group sent it, so it is summed over the expert data-parallel group instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_expert_param(name: str) -> bool:
    """A routed expert's weight (megatron-core's `mlp.experts.`; shared experts are dense)."""
    return ".mlp.experts." in name


def _is_tensor_parallel_partial(name: str, param) -> bool:
    return getattr(param, "sequence_parallel", False) or name.endswith(("q_layernorm.weight", "k_layernorm.weight"))


def reduce_tensor_parallel_partial_grads(model) -> None:
    """Sum over TP the gradients of replicated parameters that each rank sees only part of."""
    group = model.pg_collection.tp
    if group.size() == 1:
        return
    for name, param in model.named_parameters():
        if param.grad is not None and _is_tensor_parallel_partial(name, param):
            dist.all_reduce(param.grad, group=group)


def reduce_tied_embedding_grads(model) -> None:
    """Sum the gradient of the weight shared by the first and last pipeline stages."""
    if model.pg_collection.pp.size() == 1 or not model.share_embeddings_and_output_weights:
        return
    if not (model.pre_process or model.post_process):
        return
    weight = model.shared_embedding_or_output_weight()
    if weight.grad is not None:
        dist.all_reduce(weight.grad, group=model.pg_collection.embd)


def reduce_data_parallel_grads(model, num_units: float | None = None) -> None:
    """Sum gradients over the data- and context-parallel ranks, then divide by `num_units`
    (default: the DP size).

    Losses are summed per micro-batch; dividing by the global number of units (pairs, tokens)
    makes the result independent of how the global batch was split across ranks. A CP rank's
    gradient is the part from its own tokens, so CP ranks add up and never average.
    """
    groups = model.pg_collection
    divisor = num_units if num_units is not None else groups.dp.size()
    for name, param in model.named_parameters():
        if param.grad is not None:
            group = groups.expt_dp if is_expert_param(name) else groups.dp_cp
            if group.size() > 1:
                dist.all_reduce(param.grad, group=group)
            if divisor != 1:
                param.grad.div_(divisor)


@torch.no_grad()
def update_expert_bias(model) -> None:
    """Aux-loss-free balancing, as megatron-core's `finalize_model_grads` does on GPU ranks: each
    router's expert bias moves by `moe.bias_update_rate` towards the experts that received fewer
    than the mean number of this global batch's tokens (counted over TP x DP x CP), then the counts
    restart. Only the policy is finalized, so a reference model's biases never move."""
    routers = [m for m in model.modules() if getattr(m, "expert_bias", None) is not None]
    if not routers:
        return
    counts = torch.stack([r.local_tokens_per_expert for r in routers])
    dist.all_reduce(counts, group=model.pg_collection.tp_dp_cp)
    rate = model.config.moe_router_bias_update_rate
    for router, count in zip(routers, counts):
        router.expert_bias.add_(torch.sign(count.mean() - count) * rate)
        router.local_tokens_per_expert.zero_()


def finalize_grads(model, num_units: float | None = None) -> None:
    reduce_tensor_parallel_partial_grads(model)
    reduce_tied_embedding_grads(model)
    reduce_data_parallel_grads(model, num_units)
    update_expert_bias(model)
