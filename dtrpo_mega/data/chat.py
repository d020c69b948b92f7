"""Chat templates per model family, as data, and the encoder that renders a record into token ids.

A template is a handful of strings; every `<|...|>` in them is one special token, looked up in
the tokenizer and inserted by id (never produced by tokenizing text). The text between special
tokens is tokenized as one run, as Hugging Face's `apply_chat_template` does. A prompt ends with
the assistant header; a response is its content followed by the family's end-of-turn token
(plain-string responses get it too).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from dtrpo_mega.data.records import Message, Prompt
from dtrpo_mega.data.tokenizer import Tokenizer

SPECIAL = re.compile(r"(<\|[^|<>\s]+\|>)")


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    turn: str  # one message; `{role}` and `{content}` are filled in
    generation_prompt: str  # opens the assistant's answer; every prompt ends with it
    end_of_turn: str  # closes every response
    bos: str = ""  # starts every prompt, plain or conversational
    default_system: str | None = None  # the system message of a conversation that has none
    strip_content: bool = False  # trim whitespace around message contents

    @property
    def special_tokens(self) -> list[str]:
        return sorted(set(SPECIAL.findall(self.turn + self.generation_prompt + self.end_of_turn + self.bos)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Qwen2.5 Instruct's ChatML (Fast-dLLM v2 keeps its tokenizer), with its default system message.
QWEN2_5 = ChatTemplate(
    name="qwen2.5_chatml",
    turn="<|im_start|>{role}\n{content}<|im_end|>\n",
    generation_prompt="<|im_start|>assistant\n",
    end_of_turn="<|im_end|>",
    default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
)
DREAM = dataclasses.replace(QWEN2_5, name="dream_chatml", default_system="You are a helpful assistant.")
QWEN3 = dataclasses.replace(QWEN2_5, name="qwen3_chatml", default_system=None)
LLAMA3 = ChatTemplate(
    name="llama3",
    turn="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
    generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
    end_of_turn="<|eot_id|>",
    bos="<|begin_of_text|>",
    strip_content=True,
)

FAMILY_CHAT_TEMPLATES: dict[str, ChatTemplate] = {"fast_dllm_v2": QWEN2_5, "dream": DREAM, "sdar": QWEN3, "llada": LLAMA3}


def chat_template(family: str) -> ChatTemplate:
    if family not in FAMILY_CHAT_TEMPLATES:
        raise ValueError(f"family={family!r} has no chat template; supported: {sorted(FAMILY_CHAT_TEMPLATES)}")
    return FAMILY_CHAT_TEMPLATES[family]


class ChatEncoder:
    """Renders prompts and responses with one template and tokenizes them with one tokenizer."""

    def __init__(self, template: ChatTemplate, tokenizer: Tokenizer):
        self.template, self.tokenizer = template, tokenizer
        self.special_ids = {}
        for token in template.special_tokens:
            i = tokenizer.token_to_id(token)
            if i is None:
                raise ValueError(f"tokenizer {tokenizer.path} has no {token!r} token, which the {template.name} "
                                 "chat template needs: is it the tokenizer of this model family?")
            self.special_ids[token] = i
        if tokenizer.chat_template is not None and template.end_of_turn not in tokenizer.chat_template:
            raise ValueError(f"tokenizer {tokenizer.path}: its chat_template never uses {template.end_of_turn!r}, the "
                             f"end-of-turn token of the {template.name} template: is it the tokenizer of this model family?")
        self.end_of_turn_id = self.special_ids[template.end_of_turn]

    def prompt(self, prompt: Prompt) -> list[int]:
        """Plain text after BOS, or the conversation rendered up to and including the assistant header."""
        t = self.template
        if isinstance(prompt, str):
            return self._encode(t.bos + "{content}", content=prompt)
        if t.default_system is not None and prompt[0].role != "system":
            prompt = (Message("system", t.default_system), *prompt)
        ids = self._encode(t.bos)
        for message in prompt:
            ids += self._encode(t.turn, role=message.role, content=self._content(message.content))
        return ids + self._encode(t.generation_prompt)

    def response(self, text: str, conversational: bool) -> list[int]:
        content = self._content(text) if conversational else text
        return self._encode("{content}" + self.template.end_of_turn, content=content)

    def _content(self, text: str) -> str:
        return text.strip() if self.template.strip_content else text

    def _encode(self, pattern: str, **fields: str) -> list[int]:
        """Token ids of a template string: special tokens by id, each text run tokenized whole.

        Fields are substituted into the text pieces only, so message content is always text.
        """
        ids = []
        for k, piece in enumerate(SPECIAL.split(pattern)):  # text, special, text, ...
            if k % 2:
                ids.append(self.special_ids[piece])
            elif text := piece.format_map(fields):
                ids += self.tokenizer.encode(text)
        return ids
