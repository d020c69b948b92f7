"""Core attention for dLLMs: the `core_attention` submodule of megatron-core's layer spec.

It receives the per-partition query/key/value `[s, b, heads, head_dim]` after q/k norm, applies
rotary embeddings from the micro-batch's `TokenLayout` positions, and runs one of three backends,
each deriving its mask from `dtrpo_mega.diffusion.mask.may_attend`:

- `local`: dense boolean mask with torch scaled_dot_product_attention (any device; CPU tests).
- `te`: Transformer Engine DotProductAttention with `no_mask` and the mask as an additive
  `post_scale_bias` (11ss when the micro-batch shares one mask, else b1ss), which TE can run on
  its fused cuDNN kernel; an `arbitrary` boolean mask would drop TE to its unfused path.
- `flex`: torch flex_attention with a block-sparse mask built from the same predicate
  (`flex.py`: compiled once per bucketed length on CUDA; eager, unfused reference on CPU).
`auto` is `flex` on CUDA: it computes only the mask's non-empty 128 x 128 tiles and reads no
s x s bias (`tools/attention_cost.py`, docs/benchmarks.md).
A decoder call with a block KV cache (`layout.kv_cache`) attends to the cached keys plus its
span's own, through torch scaled_dot_product_attention whatever the backend.
Under context parallelism (`layout.query_index` set) a rank ropes its own tokens' q/k, then
all-gathers K and V over the CP group (`dtrpo_mega/parallel/context.py`) and attends to the row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.module import MegatronModule

from dtrpo_mega.diffusion.mask import PAD_SEGMENT, TokenLayout
from dtrpo_mega.models.config import AttentionBackend
from dtrpo_mega.models.flex import flex_attention, flex_available
from dtrpo_mega.models.rotary import apply_rotary, rotary_tables
from dtrpo_mega.parallel.context import gather_sequence


def te_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: AttentionBackend | str) -> AttentionBackend:
    """`auto` is `flex` where CUDA and flex_attention are present, else `local`."""
    backend = AttentionBackend(backend)
    if backend == AttentionBackend.AUTO:
        return AttentionBackend.FLEX if torch.cuda.is_available() and flex_available() else AttentionBackend.LOCAL
    if backend == AttentionBackend.TE and not te_available():
        raise RuntimeError("attention backend 'te' needs CUDA and transformer_engine; use 'local' or 'flex'")
    if backend == AttentionBackend.FLEX and not flex_available():
        raise RuntimeError("attention backend 'flex' needs torch.nn.attention.flex_attention (torch "
                           f"{torch.__version__} lacks it)")
    return backend


def additive_bias(layout: TokenLayout, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0 where allowed, -inf elsewhere: [1, 1, s, s] if the batch shares one mask, else [b, 1, s, s]."""

    def build():
        allowed = layout.allowed().to(device)
        if layout.shares_one_mask():
            allowed = allowed[:1]
        return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))

    return layout.cached(("bias", dtype, str(device)), build)


class DLLMCoreAttention(MegatronModule):
    """Drop-in for megatron-core's DotProductAttention; `attention_mask` is a `TokenLayout`."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
        backend: AttentionBackend | str = AttentionBackend.AUTO,
        rope_theta: float = 10000.0,
        rotary_dim: int | None = None,
    ):
        super().__init__(config=config)
        if (attention_dropout if attention_dropout is not None else config.attention_dropout) != 0:
            raise ValueError("dLLM core attention supports attention_dropout = 0 only")
        self.backend = resolve_backend(backend)
        self.layer_number = layer_number
        self.rope_theta = rope_theta
        self.head_dim = config.kv_channels
        self.rotary_dim = rotary_dim or self.head_dim  # partial rope: the leading channels of each head
        self.softmax_scale = softmax_scale if softmax_scale is not None else self.head_dim**-0.5
        self.te_attention = self._build_te(config, layer_number) if self.backend == AttentionBackend.TE else None
        if pg_collection is None:  # megatron's SelfAttention passes its own; this default is megatron's too
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        self.tp_group, self.cp_group = pg_collection.tp, pg_collection.cp  # tp_group: for sharded_state_dict

    def _build_te(self, config, layer_number):
        from transformer_engine.pytorch import DotProductAttention

        tp = config.tensor_model_parallel_size
        return DotProductAttention(
            num_attention_heads=config.num_attention_heads // tp,
            kv_channels=self.head_dim,
            num_gqa_groups=config.num_query_groups // tp,
            attention_dropout=0.0,
            qkv_format="sbhd",
            attn_mask_type="no_mask",
            softmax_scale=self.softmax_scale,
            layer_number=layer_number,
        )

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: TokenLayout, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None) -> Tensor:
        if not isinstance(attention_mask, TokenLayout):
            raise TypeError("DLLM attention expects a TokenLayout as attention_mask, got "
                            f"{type(attention_mask).__name__}")
        if attention_bias is not None or packed_seq_params is not None:
            raise ValueError("attention_bias / packed_seq_params are expressed through the TokenLayout")
        layout = attention_mask
        cos, sin = layout.cached(
            ("rope", self.rotary_dim, self.rope_theta, str(query.device)),
            lambda: rotary_tables(layout.query_positions().to(query.device), self.rotary_dim, self.rope_theta),
        )
        query, key = apply_rotary(query, cos, sin), apply_rotary(key, cos, sin)
        if layout.query_index is not None:  # context parallel: attend to the keys of the whole row
            key, value = gather_sequence(key, self.cp_group), gather_sequence(value, self.cp_group)
            if key.shape[0] != layout.key_index.numel():
                raise ValueError(
                    f"{key.shape[0]} gathered keys but the layout names {layout.key_index.numel()}: shard the layout "
                    "with parallel.context_parallel_size (dtrpo_mega.parallel.context.shard_layout)"
                )
        s, b = query.shape[:2]
        if self.backend == AttentionBackend.TE:
            bias = additive_bias(layout, query.dtype, query.device)
            return self.te_attention(
                query, key, value, attn_mask_type="no_mask",
                core_attention_bias_type="post_scale_bias", core_attention_bias=bias,
            )
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, d]
        if layout.kv_cache is not None:
            out = self._cached_attention(q, k, v, layout)
        elif self.backend == AttentionBackend.FLEX:
            out = flex_attention(q, k, v, layout, self.softmax_scale)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=layout.allowed().to(q.device), scale=self.softmax_scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )
        return out.permute(2, 0, 1, 3).reshape(s, b, -1)

    def _cached_attention(self, q: Tensor, k: Tensor, v: Tensor, layout: TokenLayout) -> Tensor:
        """The span attends to every cached key of its row (all earlier, finished blocks) and to
        its own keys by the predicate; padding queries see only padding."""
        k, v, cached = layout.kv_cache.extend(self.layer_number, k, v)
        real = (layout.segments != PAD_SEGMENT).to(q.device)
        mask = torch.cat([cached[:, None, None, :] & real[:, None, :, None], layout.allowed().to(q.device)], dim=-1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.softmax_scale,
                                              enable_gqa=k.shape[1] != q.shape[1])
