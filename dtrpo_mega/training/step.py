"""One forward/backward over a list of micro-batches with megatron-core's pipeline schedule.

The loss runs only in the last pipeline stage, Megatron's way: the forward step returns
`(output, partial(loss_func, micro_batch))` and `loss_func` returns `(loss_sum, count, report)`.
The schedule runs over the process groups the model was built with (`model.pg_collection`).
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Protocol

from torch import Tensor

from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from megatron.core.utils import get_attr_wrapped_model, get_model_config

from dtrpo_mega.diffusion.mask import TokenLayout


class ModelInputs(Protocol):
    """What the schedule feeds the model (`ScoredRows` is one)."""

    tokens: Tensor  # [b, s]
    layout: TokenLayout
    labels: Tensor | None  # [b, s] targets for the per-token cross-entropy

    def to(self, device) -> "ModelInputs": ...


LossFunc = Callable[[ModelInputs, Tensor], tuple[Tensor, Tensor, dict]]


def forward_backward(model, micro_batches: list[ModelInputs], loss_func: LossFunc,
                     forward_only: bool = False) -> list[dict]:
    """Run the schedule; returns the per-micro-batch reports (non-empty on the last stage only).

    With labels, the model returns the vocab-parallel per-token cross-entropy [b, s], so `-output`
    is the token log-prob and logits are never gathered across tensor-parallel ranks.
    """
    device = next(model.parameters()).device
    groups = get_attr_wrapped_model(model, "pg_collection", allow_none=False)  # through a DDP wrapper

    def forward_step(data_iterator, model_chunk):
        mb = next(data_iterator).to(device)
        output = model_chunk(mb.tokens, mb.layout, labels=mb.labels)
        return output, partial(loss_func, mb)

    return get_forward_backward_func(pp_size=groups.pp.size(), vp_size=None)(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches),
        model=[model],
        num_microbatches=len(micro_batches),
        seq_length=max(mb.tokens.shape[1] for mb in micro_batches),
        micro_batch_size=micro_batches[0].tokens.shape[0],
        forward_only=forward_only,
        p2p_communicator=P2PCommunicator(pp_group=groups.pp, config=get_model_config(model)),
        pg_collection=groups,
    )
