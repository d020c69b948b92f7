"""The dLLM: megatron-core GPTModel with the dLLM core attention in its layer spec.

Only the `core_attention` submodule of megatron-core's spec changes; embeddings, norms, q/k/v,
MLP or mixture of experts (router, all-to-all token dispatcher, experts), pipeline stages and the
vocab-parallel output layer are megatron-core's own. Rope lives in
the core attention (see `rotary.py`), so the GPTModel is built without position embeddings.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from dtrpo_mega.compat import check_megatron_core_version, define_missing_te_names, forget_moe_loss_tracker
from dtrpo_mega.diffusion.mask import TokenLayout
from dtrpo_mega.models.attention import DLLMCoreAttention, resolve_backend, te_available
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.init import init_weights
from dtrpo_mega.models.norm import RMSNorm
from dtrpo_mega.models.recompute import RecomputeConfig, apply_recompute
from dtrpo_mega.parallel.cpu_shims import tensor_cuda_stays_on_cpu


def layer_spec(cfg: DLLMConfig, transformer_impl: str = "auto", experts: bool = False) -> ModuleSpec:
    """megatron-core's layer spec (TE modules on GPU, local otherwise) with our core attention;
    `experts`: its MLP is megatron-core's MoE layer (grouped GEMM where TE is, on CUDA)."""
    transformer_impl = _impl(transformer_impl)
    num_experts = cfg.moe.num_experts if experts else None
    if transformer_impl == "transformer_engine":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = copy.deepcopy(get_gpt_layer_with_transformer_engine_spec(
            num_experts=num_experts, moe_grouped_gemm=experts, qk_layernorm=cfg.qk_norm))
        if experts:  # its separate pre-MLP norm keeps the key of the local spec and of dense layers
            spec.submodules.sharded_state_dict_keys_map = {
                **spec.submodules.sharded_state_dict_keys_map, "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}
    else:
        spec = copy.deepcopy(get_gpt_layer_local_spec(num_experts=num_experts, qk_layernorm=cfg.qk_norm,
                                                      normalization="RMSNorm"))
        spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = RMSNorm
        if cfg.qk_norm:
            spec.submodules.self_attention.submodules.q_layernorm = RMSNorm
            spec.submodules.self_attention.submodules.k_layernorm = RMSNorm
    attention = spec.submodules.self_attention
    attention.params = {**attention.params, "attn_mask_type": AttnMaskType.arbitrary}
    attention.submodules.core_attention = ModuleSpec(
        module=DLLMCoreAttention,
        params={"backend": resolve_backend(cfg.attention_backend), "rope_theta": cfg.rope_theta,
                "rotary_dim": cfg.rotary_dim},
    )
    return spec


def _impl(transformer_impl: str) -> str:
    if transformer_impl == "auto":
        return "transformer_engine" if te_available() else "local"
    if transformer_impl not in ("local", "transformer_engine"):
        raise ValueError(f"transformer_impl must be auto, local or transformer_engine; got {transformer_impl!r}")
    return transformer_impl


def decoder_spec(cfg: DLLMConfig, transformer_config, transformer_impl: str, pp_rank: int):
    """One layer spec for a dense model; for a mixture of experts, this pipeline stage's layers
    (dense for the first `moe.first_dense_layers`, MoE after)."""
    if cfg.moe is None:
        return layer_spec(cfg, transformer_impl)
    impl = _impl(transformer_impl)
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TENorm
    offset = get_transformer_layer_offset(transformer_config, pp_rank=pp_rank)
    count = get_num_layers_to_build(transformer_config, pp_rank=pp_rank)
    specs = {moe: layer_spec(cfg, impl, experts=moe) for moe in (False, True)}
    return TransformerBlockSubmodules(
        layer_specs=[specs[cfg.moe.is_moe_layer(i)] for i in range(offset, offset + count)],
        layer_norm=TENorm if impl == "transformer_engine" else RMSNorm)


class DLLM(GPTModel):
    """GPTModel whose `attention_mask` is a `TokenLayout` and whose padded vocabulary is masked.

    Padded vocabulary rows are set to -inf in the logits, so log-probs (and the vocab-parallel
    cross-entropy) are over the real vocabulary exactly as in the Hugging Face model.
    """

    def __init__(self, cfg: DLLMConfig, transformer_config, transformer_layer_spec, pre_process: bool,
                 post_process: bool, padded_vocab_size: int, pg_collection: ProcessGroupCollection):
        super().__init__(
            config=transformer_config,
            transformer_layer_spec=transformer_layer_spec,
            vocab_size=padded_vocab_size,
            max_sequence_length=cfg.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=cfg.tie_embeddings,
            position_embedding_type="none",
            pg_collection=pg_collection,
        )
        self.dllm_config = cfg
        if post_process and padded_vocab_size > cfg.vocab_size:
            self.output_layer.register_forward_hook(self._mask_padded_vocab)

    def setup_embeddings_and_output_layer(self) -> None:
        """megatron-core's tied-embedding setup, which calls `Tensor.cuda()`, made CPU-safe."""
        with tensor_cuda_stays_on_cpu():
            super().setup_embeddings_and_output_layer()

    def _mask_padded_vocab(self, module, inputs, output):
        logits, bias = output
        local = logits.shape[-1]
        start = self.pg_collection.tp.rank() * local
        first_pad = self.dllm_config.vocab_size - start
        if first_pad >= local:
            return output
        is_pad = torch.arange(local, device=logits.device) >= max(first_pad, 0)
        return logits.masked_fill(is_pad, float("-inf")), bias

    def forward(self, input_ids: Tensor, layout: TokenLayout, labels: Tensor | None = None, **kwargs):
        """Logits [b, s, vocab/TP] (vocab-parallel), or per-token cross-entropy [b, s] with labels."""
        return super().forward(input_ids=input_ids, position_ids=None, attention_mask=layout, labels=labels, **kwargs)


def build_model(cfg: DLLMConfig, params_dtype: torch.dtype = torch.float32, transformer_impl: str = "auto",
                recompute: RecomputeConfig | None = None, seed: int | None = None,
                pg_collection: ProcessGroupCollection | None = None) -> DLLM:
    """This rank's pipeline stage of the model, on the current device, in the process groups of
    `pg_collection` (a `Runtime`'s; None: megatron's global groups), recomputing activations in
    training mode as `recompute` says (None: keep them all). With a `seed`, the weights are drawn
    from it alone, the same at every TP/PP (`models/init.py`); without, megatron-core's per-rank
    initialization."""
    check_megatron_core_version()
    if cfg.moe is not None:
        define_missing_te_names()
        forget_moe_loss_tracker()  # its per-layer values are sized by the first model that records
    groups = pg_collection if pg_collection is not None else ProcessGroupCollection.use_mpu_process_groups()
    tp, pp = groups.tp.size(), groups.pp.size()
    on_gpu = torch.cuda.is_available()
    impl = _impl(transformer_impl)
    transformer_config = cfg.transformer_config(tp, pp, params_dtype, use_cpu_initialization=not on_gpu,
                                                cp=groups.cp.size(), ep=groups.ep.size(), etp=groups.expt_tp.size(),
                                                te_experts=impl == "transformer_engine")
    model = DLLM(
        cfg,
        transformer_config,
        decoder_spec(cfg, transformer_config, impl, groups.pp.rank()),
        pre_process=groups.pp.rank() == 0,
        post_process=groups.pp.rank() == pp - 1,
        padded_vocab_size=cfg.padded_vocab(tp),
        pg_collection=groups,
    )
    if recompute is not None:
        apply_recompute(model, recompute)
    if seed is not None:
        init_weights(model, cfg, seed)
    return model.cuda() if on_gpu else model
