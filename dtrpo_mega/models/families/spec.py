"""What a model family is, as data: the one type every family module fills in.

A family module (`fast_dllm_v2.py`, `sdar.py`, `llada.py`, `dream.py`) holds everything that
differs between families, each fact with its public source: the model config traits, the sizes,
the chat template, the Hugging Face format (detection, config reading, weight names), and the
training and decoding conventions. Nothing here imports megatron-core, so preprocessing can know a
family's chat template without it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from dtrpo_mega.diffusion.spec import LastBlock, ScoringLayout, SFTConvention

SPECIAL = re.compile(r"(<\|[^|<>\s]+\|>)")


@dataclass(frozen=True)
class ChatTemplate:
    """A family's chat format as a handful of strings; every `<|...|>` in them is one special token."""

    name: str
    turn: str  # one message; `{role}` and `{content}` are filled in
    generation_prompt: str  # opens the assistant's answer; every prompt ends with it
    end_of_turn: str  # closes every response
    bos: str = ""  # starts every prompt, plain or conversational
    default_system: str | None = None  # the system message of a conversation that has none
    strip_content: bool = False  # trim whitespace around message contents
    response_prefix: str = ""  # opens every conversational response, scored with it (SDAR: an empty think block)
    block_fill: str = ""  # the token that fills a last block after end-of-turn (`data.last_block=fill`)
    role_names: dict = field(default_factory=dict, hash=False)  # a role as the template writes it (Ling: user -> HUMAN)
    system_suffix: str = ""  # closes every system message, on its own line; with no system message, is one (Ling)

    @property
    def special_tokens(self) -> list[str]:
        text = self.turn + self.generation_prompt + self.end_of_turn + self.bos + self.response_prefix + self.block_fill
        return sorted(set(SPECIAL.findall(text)))

    def conversation(self, messages: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """(role, content) of every turn as the template writes them: the default system message
        where none is given, the system suffix, the template's role names."""
        if self.default_system is not None and (not messages or messages[0][0] != "system"):
            messages = [("system", self.default_system), *messages]
        if self.system_suffix:
            first, rest = (messages[0], messages[1:]) if messages and messages[0][0] == "system" else (("system", ""),
                                                                                                       messages)
            messages = [("system", "\n".join(filter(None, (first[1], self.system_suffix)))), *rest]
        return [(self.role_names.get(role, role), content) for role, content in messages]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def chatml(name: str, **fields) -> ChatTemplate:
    """ChatML, as Qwen2.5 and Qwen3 (and the dLLMs built on them) render it; `<|endoftext|>` is
    their pad / EOS token."""
    return ChatTemplate(name=name, turn="<|im_start|>{role}\n{content}<|im_end|>\n",
                        generation_prompt="<|im_start|>assistant\n", end_of_turn="<|im_end|>",
                        block_fill="<|endoftext|>", **fields)




@dataclass(frozen=True)
class Size:
    fields: dict  # DLLMConfig fields
    source: str  # the public config.json the numbers come from


@dataclass(frozen=True)
class SourceFormat:
    """A Hugging Face architecture we read: how to detect it and how its config and weights are named."""

    name: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]  # lowercase
    family: str  # the dLLM family it becomes unless told otherwise
    weight_names: dict = field(hash=False, compare=False)  # megatron tensor name -> HF name(s)
    qkv_bias: bool = False  # Qwen2 attention always has q/k/v biases
    qk_norm: bool = False  # Qwen3 attention: per-head RMSNorm of q and k
    block_size_key: str | None = None  # config.json field holding the block size
    # None: transformers fields
    read_structure: Callable[[dict], dict] | None = field(default=None, hash=False, compare=False)
    # its inverse, DLLMConfig -> fields
    write_structure: Callable | None = field(default=None, hash=False, compare=False)


@dataclass(frozen=True)
class Decoding:
    """A family's default reveal rule: every position above `threshold` (at least one), or a fixed
    `tokens_per_step`."""

    threshold: float = 0.9
    tokens_per_step: int | None = None


@dataclass(frozen=True)
class Family:
    name: str
    traits: dict  # DLLMConfig fields every size shares (layout, attention, mask token, blocks, shift, rope)
    sizes: dict[str, Size]
    tiny_blocks: dict  # block_size / sub_block_size of the `tiny` debug model
    chat: ChatTemplate
    formats: tuple[SourceFormat, ...]  # the family's own Hugging Face architectures
    sft: SFTConvention
    scoring: ScoringLayout = ScoringLayout.ONE_PASS  # default layout of trajectory rows
    last_block: LastBlock = LastBlock.CUT  # default for data without logged trajectories
    stops_at_end_of_turn: bool = True  # the decoder stops after the block holding end-of-turn
    decoding: Decoding = Decoding()
    sources: tuple[str, ...] = ()  # the public code the conventions above come from


# The `transformers` weight naming that Llama, Qwen2, Qwen3 and the dLLMs built on them share.
_QKV_W = "decoder.layers.*.self_attention.linear_qkv.weight"
TRANSFORMERS_NAMES: dict[str, tuple[str, ...]] = {
    "embedding.word_embeddings.weight": ("model.embed_tokens.weight",),
    "decoder.layers.*.self_attention.linear_qkv.layer_norm_weight": ("model.layers.*.input_layernorm.weight",),
    _QKV_W: tuple(f"model.layers.*.self_attn.{p}_proj.weight" for p in "qkv"),
    "decoder.layers.*.self_attention.linear_qkv.bias": tuple(f"model.layers.*.self_attn.{p}_proj.bias" for p in "qkv"),
    "decoder.layers.*.self_attention.q_layernorm.weight": ("model.layers.*.self_attn.q_norm.weight",),
    "decoder.layers.*.self_attention.k_layernorm.weight": ("model.layers.*.self_attn.k_norm.weight",),
    "decoder.layers.*.self_attention.linear_proj.weight": ("model.layers.*.self_attn.o_proj.weight",),
    "decoder.layers.*.mlp.linear_fc1.layer_norm_weight": ("model.layers.*.post_attention_layernorm.weight",),
    "decoder.layers.*.mlp.linear_fc1.weight": ("model.layers.*.mlp.gate_proj.weight",
                                               "model.layers.*.mlp.up_proj.weight"),
    "decoder.layers.*.mlp.linear_fc2.weight": ("model.layers.*.mlp.down_proj.weight",),
    "decoder.final_layernorm.weight": ("model.norm.weight",),
    "output_layer.weight": ("lm_head.weight",),
}


# Qwen2/Qwen3-MoE's routed experts in transformers' (hub) naming; `#` is the expert index.
TRANSFORMERS_MOE_NAMES: dict[str, tuple[str, ...]] = {
    **{k: v for k, v in TRANSFORMERS_NAMES.items() if ".mlp.linear_fc" not in k or "layer_norm" in k},
    "decoder.layers.*.mlp.router.weight": ("model.layers.*.mlp.gate.weight",),
    "decoder.layers.*.mlp.experts.experts.linear_fc1.weight": ("model.layers.*.mlp.experts.#.gate_proj.weight",
                                                              "model.layers.*.mlp.experts.#.up_proj.weight"),
    "decoder.layers.*.mlp.experts.experts.linear_fc2.weight": ("model.layers.*.mlp.experts.#.down_proj.weight",),
}


def reject_features(problems: list[str], where: str) -> None:
    """Refuse a source config that uses features the dLLM model does not have, naming each."""
    if problems:
        raise ValueError(f"{where} uses features the dLLM model does not have: " + "; ".join(problems))
