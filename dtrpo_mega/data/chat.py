"""The encoder that renders a record into token ids with a family's chat template.

A template (`models/families/`, one per family) is a handful of strings; every `<|...|>` in them
is one special token, looked up in the tokenizer and inserted by id (never produced by tokenizing
text). The text between special tokens is tokenized as one run, as Hugging Face's
`apply_chat_template` does. A prompt ends with
the assistant header; a response is its content followed by the family's end-of-turn token
(plain-string responses get it too).
"""

from __future__ import annotations

from dtrpo_mega.data.records import Prompt
from dtrpo_mega.data.tokenizer import Tokenizer
from dtrpo_mega.models.families.spec import SPECIAL, ChatTemplate


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
                             f"end-of-turn token of the {template.name} template: is it the tokenizer of this model "
                             "family?")
        self.end_of_turn_id = self.special_ids[template.end_of_turn]
        self.fill_id = self.special_ids.get(template.block_fill)  # None: the template names no fill token

    def prompt(self, prompt: Prompt) -> list[int]:
        """Plain text after BOS, or the conversation rendered up to and including the assistant header."""
        t = self.template
        if isinstance(prompt, str):
            return self._encode(t.bos + "{content}", content=prompt)
        ids = self._encode(t.bos)
        for role, content in t.conversation([(m.role, self._content(m.content)) for m in prompt]):
            ids += self._encode(t.turn, role=role, content=content)
        return ids + self._encode(t.generation_prompt)

    def response(self, text: str, conversational: bool) -> list[int]:
        """The response's ids, end-of-turn included; a conversational one opens with the template's
        response prefix unless it already does."""
        if not conversational:
            return self._encode("{content}" + self.template.end_of_turn, content=text)
        content, prefix = self._content(text), self.template.response_prefix
        if prefix and content.startswith(prefix.split("\n")[0]):
            prefix = ""
        return self._encode(prefix + "{content}" + self.template.end_of_turn, content=content)

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
