"""Per-GPU memory of a training run, term by term (docs/training.md, "Planning memory").

Static: weights, gradients and optimizer state of this rank's shard (megatron DDP with fp32
gradient buffers and the distributed optimizer, sharded over DP x CP; a mixture of experts' routed
experts split over EP x ETP, their optimizer state sharded over the expert-DP group), plus a
resident reference's weights. Per micro-batch: what autograd keeps for the backward pass
(`saved_bytes`; checked against `perf.activations.SavedActivations` on CPU by
tests/test_plan_memory.py) and the layout's caches (mask or bias, rotary tables), times the
micro-batches in flight on a pipeline stage (1F1B: `min(PP - stage, micro-batches)`), plus the
largest short-lived buffer (logits, a recomputed span, TE's dBias, the experts' all-to-all). A
resident reference runs forward-only before the step, so a stage needs
`static + max(step, reference forward)`.

Units: bytes; "per token" means per token this rank holds (a row's tokens / CP). MoE models at
TP > 1 run sequence parallel: the norms, the MoE layer's router and experts and the layers'
checkpointed inputs hold a TP-th of those tokens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from dtrpo_mega.config import ReferenceMode, TrainConfig
from dtrpo_mega.diffusion.mask import noisy_start
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.spec import ScoringLayout
from dtrpo_mega.diffusion.trajectory import SchedulerMode
from dtrpo_mega.models.attention import AttentionBackend
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, checkpoint_spans
from dtrpo_mega.rows.samples import shared_prompt_length

IMPLS = ("transformer_engine", "local")
FLEX_BLOCK = 128  # flex_attention's default block size


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1
    ep: int = 1  # each MoE layer's experts split over EP ranks
    etp: int = 1  # each expert's matrices split over ETP ranks

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def expert_dp(self) -> int:
        """Ranks holding the same experts (megatron's expert data-parallel group): world / (ETP x EP x PP)."""
        return self.world // (self.etp * self.ep * self.pp)

    def check(self, model: DLLMConfig) -> None:
        bad = [f"{name}={value}" for name, value in dataclasses.asdict(self).items() if value < 1]
        if bad:
            raise ValueError(f"parallel sizes must be >= 1: {', '.join(bad)}")
        model.check_parallel(self.tp, self.pp, self.ep, self.etp)
        if self.world % (self.ep * self.etp * self.pp):
            raise ValueError(f"EP={self.ep} x ETP={self.etp} x PP={self.pp} does not divide the world of {self.world} "
                             "ranks (TP x PP x CP x DP): the experts' ranks must fill it")


@dataclass(frozen=True)
class Shape:
    """One micro-batch: `rows` rows of `tokens` tokens each (whole rows, before the CP split)."""

    rows: int
    tokens: int


@dataclass(frozen=True)
class Workload:
    """What the rows look like: every sequence has this prompt and response length."""

    prompt_length: int
    response_length: int
    rows_per_pair: int = 2  # sequences per pair x rows per sequence (dtrpo: 2 x 1)
    pairs_per_micro_batch: int = 1  # unpacked
    pad_to_multiple: int = 8  # unpacked rows
    packed_tokens: int = 0  # > 0: packing, one row of this many tokens per micro-batch
    pairs_per_step: int = 1  # per data-parallel rank; bounds the micro-batches in flight
    plain: bool = False  # objective.scoring=per_block: plain rows of prompt + response (no noisy copy)
    block_origin: int = 0  # where blocks start (`DiffusionSpec.origin` of the prompt length)
    shared_prompt: int = 0  # data.share_prompt: prompt positions a pair's rows hold once (`shared_prompt_length`)

    def sample_tokens(self, block_size: int) -> int:
        """One sample: a plain row, or `[z~ ; y0]` whose noisy copy starts at the block of the first response token."""
        p, n = self.prompt_length, self.prompt_length + self.response_length
        return n if self.plain else 2 * n - noisy_start(p, block_size, self.block_origin)

    def pair_tokens(self, block_size: int) -> int:
        """Tokens of a pair's samples, their shared prompt once."""
        return self.rows_per_pair * self.sample_tokens(block_size) - (self.rows_per_pair - 1) * self.shared_prompt

    def shape(self, block_size: int, cp: int = 1) -> Shape:
        """Unpacked: a row per sample, or per pair when its samples share their prompt."""
        if self.packed_tokens:
            return Shape(1, self.packed_tokens)
        pad = math.lcm(self.pad_to_multiple, 2 * cp) if cp > 1 else self.pad_to_multiple
        if self.shared_prompt:
            return Shape(self.pairs_per_micro_batch, -(-self.pair_tokens(block_size) // pad) * pad)
        return Shape(self.rows_per_pair * self.pairs_per_micro_batch, -(-self.sample_tokens(block_size) // pad) * pad)

    def micro_batches(self, block_size: int) -> int:
        """Micro-batches of one step on one data-parallel rank."""
        if self.packed_tokens:
            per_row = max(1, self.packed_tokens // self.pair_tokens(block_size))
            return -(-self.pairs_per_step // per_row)
        return max(1, self.pairs_per_step // self.pairs_per_micro_batch)


@dataclass(frozen=True)
class Settings:
    """How the model runs: layout, precision, layer implementation, attention, recompute, reference."""

    model: DLLMConfig
    layout: ParallelLayout = field(default_factory=ParallelLayout)
    bf16: bool = True
    backend: AttentionBackend = AttentionBackend.FLEX  # `auto` plans for GPUs: flex, the CUDA default
    transformer_impl: str = "transformer_engine"  # megatron-core layer spec: transformer_engine | local
    recompute: RecomputeConfig = field(default_factory=RecomputeConfig)
    resident_reference: bool = False

    def __post_init__(self):
        try:
            backend = AttentionBackend(self.backend)
        except ValueError:
            raise ValueError(f"unknown attention backend {self.backend!r}; choose from "
                             f"{[b.value for b in AttentionBackend]}") from None
        object.__setattr__(self, "backend", AttentionBackend.FLEX if backend == AttentionBackend.AUTO else backend)
        if self.transformer_impl not in IMPLS:
            raise ValueError(f"unknown transformer_impl {self.transformer_impl!r}; choose from {list(IMPLS)}")
        self.layout.check(self.model)
        if self.recompute.granularity == RecomputeGranularity.FULL:
            checkpoint_spans(self.recompute, self.stage_layers)  # raises on a bad recompute_num_layers

    @property
    def act(self) -> int:
        """Bytes of one activation element."""
        return 2 if self.bf16 else 4

    @property
    def stage_layers(self) -> int:
        return self.model.num_layers // self.layout.pp

    @property
    def sequence_shards(self) -> int:
        """How many ways sequence parallelism splits the tokens outside attention and MLP (1: off)."""
        return self.layout.tp if self.model.sequence_parallel(self.layout.tp) else 1

    def stage_moe(self, stage: int) -> list[bool]:
        """Whether each layer of pipeline stage `stage` has experts."""
        moe = self.model.moe_layers
        return [i in moe for i in _layers(self.model, self.layout.pp, stage)]

    @property
    def vocab_shard(self) -> int:
        return self.model.padded_vocab(self.layout.tp) // self.layout.tp


def _layers(model: DLLMConfig, pp: int, stage: int) -> range:
    """Global indices of pipeline stage `stage`'s layers."""
    n = model.num_layers // pp
    return range(stage * n, (stage + 1) * n)


def expert_parameters(model: DLLMConfig, pp: int, stage: int, ep: int = 1, etp: int = 1) -> int:
    """Routed experts' parameters held by one rank of stage `stage`: per MoE layer num_experts / EP
    experts (fc1 gate and up, fc2), each split over ETP."""
    m = model.moe
    if m is None:
        return 0
    layers = len(set(model.moe_layers) & set(_layers(model, pp, stage)))
    return layers * m.num_experts // ep * 3 * m.ffn_hidden_size // etp * model.hidden_size


def stage_parameters(model: DLLMConfig, tp: int, pp: int, stage: int, ep: int = 1, etp: int = 1) -> int:
    """Parameters held by one rank of pipeline stage `stage` (megatron-core's GPT layer, TP shards;
    routed experts over EP x ETP, the router replicated)."""
    h, d, m = model.hidden_size, model.head_dim, model.moe
    qkv = (model.num_attention_heads + 2 * model.num_query_groups) * d // tp
    layer = (
        2 * h  # input and pre-MLP RMSNorm weights (fused into TE's linears, same count)
        + qkv * h + (qkv if model.qkv_bias else 0)
        + (2 * d if model.qk_norm else 0)  # q/k RMSNorm over head_dim
        + model.num_attention_heads * d // tp * h  # linear_proj
    )
    dense = 3 * model.ffn_hidden_size // tp * h  # fc1 (gate and up), fc2
    moe = 0 if m is None else m.num_experts * h + 3 * m.shared_expert_ffn_hidden_size // tp * h  # router, shared
    layers, moe_layers = _layers(model, pp, stage), model.moe_layers
    mlps = sum(moe if i in moe_layers else dense for i in layers) + expert_parameters(model, pp, stage, ep, etp)
    vocab = model.padded_vocab(tp) // tp * h
    first, last = stage == 0, stage == pp - 1
    output = vocab if last and not (model.tie_embeddings and pp == 1) else 0  # tied at PP > 1: a copy on the last stage
    return (vocab if first else 0) + len(layers) * layer + mlps + (h if last else 0) + output


def _norm(s: Settings, width: int) -> float:
    """An RMSNorm feeding a linear: TE keeps its input, output and fp32 rsigma; torch's norm keeps an
    fp32 copy of its input, the fp32 normalized input, fp32 rsqrt, and the linear its output."""
    if s.transformer_impl == "transformer_engine":
        return 2 * width * s.act + 4
    return (2 * width + 1) * 4 + width * s.act


def layer_bytes(s: Settings, key_tokens: int, granularity: RecomputeGranularity,
                moe: bool = False) -> dict[str, float]:
    """Bytes autograd keeps per token for one transformer layer, with experts if `moe` (`full` is
    handled per span). Sequence parallelism splits the norms' tokens over TP."""
    m, tp, cp, a = s.model, s.layout.tp, s.layout.cp, s.act
    h, d, f = m.hidden_size, m.head_dim, m.ffn_hidden_size // tp
    heads, groups = m.num_attention_heads // tp, m.num_query_groups // tp
    q, kv = heads * d, groups * d
    q_copy = q if heads > groups > 1 else 0  # megatron's reshape of the grouped query out of linear_qkv's output copies
    terms = {"norms": 2 * _norm(s, h) / s.sequence_shards}
    terms.update(_moe_bytes(s) if moe else {"mlp": 5 * f * a})  # dense: fc1 out (2f), silu, gate, fc2 input
    if m.qk_norm:
        terms["qk_norm"] = _qk_norm(s, q, kv, q_copy, heads, groups)
    if granularity == RecomputeGranularity.SELECTIVE:  # the checkpoint keeps its inputs and output only
        query, key = (q, kv) if m.qk_norm else (q_copy, 0)  # normed (or reshaped) q and k; else views
        terms["attention"] = (query + key + q + 2 * kv + q) * a  # + linear_qkv's output (views), output
        return terms
    # all-gathered K and V; else roped k + linear_qkv's output (v is a view)
    kept_kv = 2 * kv * cp if cp > 1 else kv + q + 2 * kv
    terms["attention"] = (2 * q + kept_kv) * a + 4 * heads  # roped q, output, fp32 log-sum-exp
    if s.act != 4:
        terms["rope"] = 4 * d * a  # cos/sin cast to the activation dtype, for q and for k
    if s.backend == AttentionBackend.LOCAL:
        terms["mask"] = key_tokens * a  # SDPA's additive copy of the boolean mask, [b, 1, s_q, s_k]
    return terms


def _moe_bytes(s: Settings) -> dict[str, float]:
    """megatron-core's MoE layer per token, routing balanced (each rank's experts get `topk` rows
    per token it holds, x ETP as the expert-TP ranks gather them): the router's fp32 scores of
    every expert and its top-k (int64 indices, fp32 weights); the dispatcher's routing map (bool)
    and fp32 probabilities per expert and int64 permutation per row; per routed row the permuted
    input (fc1's), fc1's output (2f), SiLU, the up half (+ megatron's GLU offset, a copy), their
    product, its probability-weighted copy (fc2's input) and the row's fp32 probability; fc2's
    output is not kept (the combine saves no values); the shared experts as a dense MLP."""
    m, lay, a, h = s.model.moe, s.layout, s.act, s.model.hidden_size
    e, k, f = m.num_experts, m.topk, m.ffn_hidden_size // lay.etp
    terms = {"router": (4 * e + 12 * k) / s.sequence_shards, "dispatch": (5 * e + 8 * k) / s.sequence_shards,
             "experts": k * lay.etp * ((h + 6 * f) * a + 4) / s.sequence_shards}
    if m.shared_expert_ffn_hidden_size:
        terms["shared_expert"] = 5 * m.shared_expert_ffn_hidden_size // lay.tp * a
    return terms


def dispatch_bytes(s: Settings) -> float:
    """The all-to-all's send and receive buffers per token (receive gathered over ETP), or on the
    combine side fc2's output and the received rows: short-lived, each `topk` rows of `h`."""
    m = s.model.moe
    return (1 + s.layout.etp) * m.topk * s.model.hidden_size * s.act / s.sequence_shards


def _qk_norm(s: Settings, q: int, kv: int, q_copy: int, heads: int, groups: int) -> float:
    """RMSNorm over each head of q and k; its output only feeds rope, which keeps cos/sin.

    Its input is a view of linear_qkv's output except for a reshaped query. TE keeps the input and
    fp32 rsigma per head; torch's norm keeps an fp32 input (a new copy unless already fp32), the
    fp32 normalized input and fp32 rsqrt per head."""
    if s.transformer_impl == "transformer_engine":
        return q_copy * s.act + 4 * (heads + groups)
    inputs = q_copy if s.act == 4 else q + kv
    return (inputs + q + kv + heads + groups) * 4


def _per_layer(s: Settings, key_tokens: int, granularity: RecomputeGranularity, stage: int) -> list[float]:
    """Bytes per token of each of the stage's layers."""
    return [sum(layer_bytes(s, key_tokens, granularity, moe).values()) for moe in s.stage_moe(stage)]


def stage_layer_bytes(s: Settings, key_tokens: int, stage: int = 0) -> float:
    """Bytes per token of the stage's transformer layers."""
    g = s.recompute.granularity
    if g != RecomputeGranularity.FULL:
        return sum(_per_layer(s, key_tokens, g, stage))
    full = _per_layer(s, key_tokens, RecomputeGranularity.NONE, stage)
    spans = checkpoint_spans(s.recompute, s.stage_layers)
    kept = s.model.hidden_size * s.act / s.sequence_shards  # a checkpointed span's input
    return sum(kept if recomputed else sum(full[start:end]) for start, end, recomputed in spans)


def saved_bytes(s: Settings, shape: Shape, stage: int = 0) -> dict[str, float]:
    """What autograd keeps after the forward of one micro-batch on `stage`, by part."""
    tokens, key_tokens = shape.rows * shape.tokens // s.layout.cp, shape.tokens
    last = stage == s.layout.pp - 1
    out = {"layers": stage_layer_bytes(s, key_tokens, stage) * tokens}
    if stage == 0:
        out["embedding"] = (8 + (s.layout.tp > 1)) * tokens  # int64 ids (TP: shifted ids and the out-of-shard mask)
    if last:
        v, h = s.vocab_shard, s.model.hidden_size
        padded = s.model.padded_vocab(s.layout.tp) > s.model.vocab_size
        # final norm, fp32 softmax of the vocab-parallel cross-entropy, its target mask and ids
        out["head"] = (_norm(s, h) / s.sequence_shards + 4 * v + 1 + 8) * tokens + padded * v
    return out


def cache_bytes(s: Settings, shape: Shape) -> dict[str, float]:
    """The layout's per-micro-batch caches, shared by all layers: mask or bias, rotary tables."""
    b, q_tokens, k_tokens = shape.rows, shape.tokens // s.layout.cp, shape.tokens
    out = {"rope": 2 * s.model.head_dim * 4 * b * q_tokens}  # fp32 cos and sin
    if s.backend == AttentionBackend.FLEX:
        blocks = b * -(-q_tokens // FLEX_BLOCK) * -(-k_tokens // FLEX_BLOCK)
        out["mask"] = 4 * 4 * blocks  # int32 kv/q block indices, partial and full
    else:
        out["mask"] = b * q_tokens * k_tokens  # boolean [b, 1, s_q, s_k]
        if s.backend == AttentionBackend.TE:
            out["mask"] += b * q_tokens * k_tokens * s.act  # additive bias (b1ss; 11ss when all rows share a mask)
    return out


def transient_bytes(s: Settings, shape: Shape, stage: int) -> float:
    """The largest short-lived buffer of the policy's step (an estimate, not measured)."""
    tokens, k_tokens = shape.rows * shape.tokens // s.layout.cp, shape.tokens
    candidates = [0.0]
    if stage == s.layout.pp - 1:
        padded = s.model.padded_vocab(s.layout.tp) > s.model.vocab_size
        # beside the fp32 softmax (saved): bf16 logits, and their masked copy when the vocabulary is padded
        candidates.append((padded + (s.act != 4)) * s.vocab_shard * s.act * tokens)
    g = s.recompute.granularity
    none = max(_per_layer(s, k_tokens, RecomputeGranularity.NONE, stage))
    if g == RecomputeGranularity.FULL:
        candidates.append(s.recompute.num_layers * none * tokens)  # one recomputed span's activations (at most)
    elif g == RecomputeGranularity.SELECTIVE:
        # one layer's attention internals
        candidates.append((none - max(_per_layer(s, k_tokens, g, stage))) * tokens)
    if any(s.stage_moe(stage)):
        candidates.append(dispatch_bytes(s) * tokens)
    if s.backend == AttentionBackend.TE:
        candidates.append(tokens * k_tokens * s.act)  # TE's unused dBias, the size of the bias
    return max(candidates)


def reference_forward_bytes(s: Settings, shape: Shape, stage: int) -> float:
    """The resident reference's forward (no grad, before the policy's step): one layer's
    activations or the logits with their fp32 copy, plus the layout's caches."""
    tokens, k_tokens = shape.rows * shape.tokens // s.layout.cp, shape.tokens
    layer = max(_per_layer(s, k_tokens, RecomputeGranularity.NONE, stage)) * tokens
    logits = (2 * s.act + 4) * s.vocab_shard * tokens if stage == s.layout.pp - 1 else 0
    return max(layer, logits) + sum(cache_bytes(s, shape).values())


@dataclass(frozen=True)
class StageMemory:
    stage: int
    parameters: int
    in_flight: int  # micro-batches whose activations the stage holds at once
    weights: float
    gradients: float
    optimizer: float
    reference: float  # resident reference weights
    caches: float  # masks/biases and rotary tables of the micro-batches in flight
    activations: float  # saved for backward, micro-batches in flight
    transient: float  # the step's largest short-lived buffer
    reference_forward: float  # the resident reference's forward, which runs before the step

    @property
    def static(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.reference

    @property
    def step(self) -> float:
        return self.caches + self.activations + self.transient

    @property
    def total(self) -> float:
        return self.static + max(self.step, self.reference_forward)


def stage_memory(s: Settings, work: Workload, stage: int) -> StageMemory:
    lay = s.layout
    params = stage_parameters(s.model, lay.tp, lay.pp, stage, lay.ep, lay.etp)
    experts = expert_parameters(s.model, lay.pp, stage, lay.ep, lay.etp)
    shape = work.shape(s.model.block_size, lay.cp)
    in_flight = min(lay.pp - stage, work.micro_batches(s.model.block_size))
    # megatron's distributed optimizer shards over the DP x CP group, routed experts over the expert-DP group
    optimized = (params - experts) / (lay.dp * lay.cp) + experts / lay.expert_dp
    return StageMemory(
        stage, params, in_flight,
        weights=s.act * params,
        gradients=4 * params,  # fp32 gradient buffer (grad_reduce_in_fp32)
        optimizer=(12 if s.bf16 else 8) * optimized,  # fp32 main params (bf16 only) + Adam moments
        reference=s.act * params if s.resident_reference else 0,
        caches=in_flight * sum(cache_bytes(s, shape).values()),
        activations=in_flight * sum(saved_bytes(s, shape, stage).values()),
        transient=transient_bytes(s, shape, stage),
        reference_forward=reference_forward_bytes(s, shape, stage) if s.resident_reference else 0,
    )


def plan(s: Settings, work: Workload) -> list[StageMemory]:
    """Memory of every pipeline stage (a rank of each)."""
    return [stage_memory(s, work, stage) for stage in range(s.layout.pp)]


def peak(s: Settings, work: Workload) -> StageMemory:
    return max(plan(s, work), key=lambda m: m.total)


def _last(fits, low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), given fits(low) and fits monotone decreasing."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def max_response_length(s: Settings, work: Workload, capacity: float) -> int | None:
    """Largest response length whose step fits `capacity` bytes on every stage (None: not even 1).

    Packed, memory depends on the row budget only: the answer is the longest response whose pair
    fits one packed row, if that row fits at all. Capped by the model's position limit."""
    limit = s.model.max_position_embeddings - work.prompt_length
    with_length = lambda n: dataclasses.replace(work, response_length=n)  # noqa: E731
    memory_fits = lambda n: peak(s, with_length(n)).total <= capacity  # noqa: E731
    fits = memory_fits
    if work.packed_tokens:
        fits = lambda n: with_length(n).pair_tokens(s.model.block_size) <= work.packed_tokens  # noqa: E731
    if limit < 1 or not memory_fits(1) or not fits(1):
        return None
    return _last(fits, 1, limit)


def max_packed_tokens(s: Settings, work: Workload, capacity: float) -> int:
    """Largest packed row budget (a multiple of 2 x CP) that fits `capacity`; 0 if none."""
    step = 2 * s.layout.cp
    fits = lambda n: peak(s, dataclasses.replace(work, packed_tokens=n * step)).total <= capacity  # noqa: E731
    if not fits(1):
        return 0
    low = 1
    while fits(2 * low):  # activations grow with the row, so this ends
        low *= 2
    return _last(fits, low, 2 * low - 1) * step


def from_train_config(cfg: TrainConfig, model: DLLMConfig, dp: int, prompt_length: int, response_length: int,
                      backend: str | None = None,
                      transformer_impl: str = "transformer_engine") -> tuple[Settings, Workload]:
    """The planner's inputs for a training config at data-parallel size `dp` (bf16 unless train.bf16=false)."""
    par, obj = cfg.parallel, cfg.objective.name
    layout = ParallelLayout(par.tensor_model_parallel_size, par.pipeline_model_parallel_size, par.context_parallel_size,
                            dp, par.expert_model_parallel_size, par.expert_tensor_parallel_size)
    layout.check(model)  # the model's own limits (e.g. EP dividing the experts) first
    cfg.validate(layout.world)
    if obj == Objective.EXACT_TRAJECTORY:
        raise ValueError("objective.name=exact_trajectory has one row per decoding step; plan dtrpo and scale its "
                         "activations by the steps")
    if prompt_length < 1 or response_length < 1:
        raise ValueError(f"prompt and response lengths must be >= 1, got {prompt_length} and {response_length}")
    settings = Settings(
        model, layout, bf16=cfg.train.bf16 is not False, backend=backend or model.attention_backend,
        transformer_impl=transformer_impl, recompute=cfg.train.recompute,
        resident_reference=obj.is_preference and cfg.reference.mode == ReferenceMode.RESIDENT,
    )
    plain = cfg.objective.layout(model.family) == ScoringLayout.PER_BLOCK
    per_sequence = cfg.objective.vrpo_samples if obj == Objective.VRPO else 1
    if plain and obj == Objective.DTRPO and cfg.scheduler.mode != SchedulerMode.RANDOM_MASK:
        per_sequence = -(-response_length // model.block_size)  # one row per block
    share = not plain and cfg.data.share_prompt is not False  # per-block rows cannot share (the trainer refuses)
    work = Workload(
        prompt_length, response_length, plain=plain, block_origin=model.diffusion.origin(prompt_length),
        shared_prompt=int(shared_prompt_length(prompt_length, model.diffusion)) if share else 0,
        rows_per_pair=(2 if obj.is_preference else 1) * per_sequence,
        pairs_per_micro_batch=cfg.train.micro_batch_size, pad_to_multiple=cfg.data.pad_to_multiple,
        packed_tokens=cfg.train.micro_batch_tokens if cfg.data.packing else 0,
        pairs_per_step=cfg.train.global_batch_size // dp,
    )
    return settings, work
