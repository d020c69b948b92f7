"""Gradient reductions for models that are not wrapped in megatron's DistributedDataParallel.

Megatron's `finalize_model_grads` expects DDP's `main_grad` buffers (a GPU path). On CPU ranks the
same reductions are done here on `.grad`: the partial gradients of replicated parameters that see
only this rank's heads or sequence shard (q/k norms, sequence-parallel norms) over the TP group,
the tied embedding/output weight across the first and last pipeline stages, then the
data-parallel mean (summing over context-parallel ranks), each over the model's own groups
(`model.pg_collection`).
"""

from __future__ import annotations

import torch.distributed as dist


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
    group = model.pg_collection.dp_cp
    divisor = num_units if num_units is not None else model.pg_collection.dp.size()
    reduce = group.size() > 1
    for param in model.parameters():
        if param.grad is not None:
            if reduce:
                dist.all_reduce(param.grad, group=group)
            if divisor != 1:
                param.grad.div_(divisor)


def finalize_grads(model, num_units: float | None = None) -> None:
    reduce_tensor_parallel_partial_grads(model)
    reduce_tied_embedding_grads(model)
    reduce_data_parallel_grads(model, num_units)
