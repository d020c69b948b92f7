"""RMSNorm for the local (non-Transformer Engine) layer spec, with sequence parallelism.

megatron-core's local spec builds `WrappedTorchNorm`, which refuses `sequence_parallel` because it
cannot mark its weight for the TP gradient reduction. This is the same `torch.nn.RMSNorm` with
the weight marked as megatron-core's own norms mark theirs, so `parallel/grads.py` (CPU) and
megatron's `finalize_model_grads` (GPU) sum its partial gradients over the TP ranks. Mixture-of-
experts models need it: their MoE layer trains at TP > 1 only with sequence parallelism.
"""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.RMSNorm):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        super().__init__(normalized_shape=hidden_size, eps=eps)
        self.weight.sequence_parallel = config.sequence_parallel
