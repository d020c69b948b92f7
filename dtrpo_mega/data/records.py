"""Preference and prompt-completion records in TRL's JSONL formats, parsed and checked line by line.

One JSON object per line, a preference pair:
- standard: `{"prompt": str, "chosen": str, "rejected": str}`;
- conversational: `prompt` is a list of `{"role", "content"}` messages (system / user /
  assistant), `chosen` and `rejected` are lists holding one assistant message;
- implicit prompt (conversational, no `prompt` key): `chosen` and `rejected` hold the whole
  conversation; the messages before their final assistant turn must agree and are the prompt.
Optional `chosen_steps` / `rejected_steps` (both or neither) carry the `logged` trajectory: the
reveal step of every response token, as non-negative integers; with them, optional
`chosen_tail` / `rejected_tail` hold the token ids the decoder revealed after end-of-turn (the
rest of its last block, `dtrpo generate --record-trajectory`), the steps then covering them too.
Or a prompt-completion example (SFT): `{"prompt": str, "completion": str}`, or `prompt` a list of
messages and `completion` a list holding one assistant message; it parses as a record whose
`chosen` is the completion and whose `rejected` is None, and carries no logged steps.
Other keys are ignored; blank lines are skipped. Every error starts with `file:line:`.

`read_prompts` reads the prompts of a generation run: a `prompt` (text or messages) per line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROLES = ("system", "user", "assistant")
RESPONSES = ("chosen", "rejected")
FORMS = ("a preference record holds 'prompt', 'chosen' and 'rejected', a prompt-completion record 'prompt' and "
         "'completion'")
MAX_STEP = 2**31  # steps are stored as int32


@dataclass(frozen=True)
class Message:
    role: str
    content: str


Prompt = str | tuple[Message, ...]


@dataclass(frozen=True)
class PreferenceRecord:
    where: str  # "file:line", the prefix of every error about this record
    prompt: Prompt
    chosen: str  # response text (the assistant message's content in the conversational form), or the completion
    rejected: str | None  # None for a prompt-completion record
    chosen_steps: tuple[int, ...] | None = None
    rejected_steps: tuple[int, ...] | None = None
    chosen_tail: tuple[int, ...] = ()  # token ids decoded after end-of-turn (logged trajectories)
    rejected_tail: tuple[int, ...] = ()

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def is_completion(self) -> bool:
        return self.rejected is None


def check_jsonl_path(path: str | Path) -> None:
    """A missing file or a directory given for a JSONL file, named."""
    if not Path(path).exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if Path(path).is_dir():
        raise ValueError(f"input {path} is a directory, not a JSONL file")


def _lines(path: str | Path) -> Iterator[tuple[str, str]]:
    """("file:line", text) of every non-blank line."""
    check_jsonl_path(path)
    with open(path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})") from None
            if line.strip():
                yield where, line


def _json_object(line: str, where: str, forms: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: malformed JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ValueError(f"{where}: malformed JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__} ({forms})")
    return obj


def read_records(path: str | Path) -> Iterator[PreferenceRecord]:
    for where, line in _lines(path):
        yield parse_record(line, where)


def read_prompts(path: str | Path) -> list[tuple[str, Prompt]]:
    """("file:line", prompt) of every line: `{"prompt": str}` or `{"prompt": [messages]}`; other keys are ignored."""
    prompts = []
    for where, line in _lines(path):
        obj = _json_object(line, where, "a line holds {'prompt': text or a list of messages}")
        if "prompt" not in obj:
            raise ValueError(f"{where}: missing key 'prompt'")
        prompt = obj["prompt"]
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError(f"{where}: 'prompt' is an empty list of messages")
            prompt = tuple(_message(m, f"prompt[{i}]", where) for i, m in enumerate(prompt))
        elif not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
        prompts.append((where, prompt))
    return prompts


def parse_record(line: str, where: str) -> PreferenceRecord:
    obj = _json_object(line, where, FORMS)
    keys = _response_keys(obj, where)
    if "prompt" in obj:
        prompt, values = obj["prompt"], [obj[key] for key in keys]
    elif keys == RESPONSES and isinstance(obj["chosen"], list) and isinstance(obj["rejected"], list):
        prompt, *values = _split_implicit_prompt(obj["chosen"], obj["rejected"], where)
    else:
        raise ValueError(f"{where}: missing key 'prompt' ({FORMS})")
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is empty")
        responses = [_plain_response(value, key, where) for key, value in zip(keys, values, strict=True)]
    elif isinstance(prompt, list):
        if not prompt:
            raise ValueError(f"{where}: 'prompt' is an empty list of messages")
        prompt = tuple(_message(m, f"prompt[{i}]", where) for i, m in enumerate(prompt))
        responses = [_chat_response(value, key, where) for key, value in zip(keys, values, strict=True)]
    else:
        raise ValueError(f"{where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    if keys == RESPONSES:
        steps = _steps(obj, where)
        return PreferenceRecord(where, prompt, *responses, *steps, *_tails(obj, where, steps[0] is not None))
    for key in ("completion_steps", "chosen_steps", "rejected_steps", "chosen_tail", "rejected_tail"):
        if obj.get(key) is not None:
            raise ValueError(f"{where}: {key!r} is given, but a prompt-completion record carries no logged "
                             "reveal steps")
    return PreferenceRecord(where, prompt, responses[0], None)


def _response_keys(obj: dict, where: str) -> tuple[str, ...]:
    """("completion",) for a prompt-completion record, ("chosen", "rejected") for a preference pair."""
    if "completion" in obj:
        if any(key in obj for key in RESPONSES):
            raise ValueError(f"{where}: a record holds either 'completion' (prompt-completion) or 'chosen' and "
                             "'rejected' (preference), not both")
        return ("completion",)
    for key in RESPONSES:
        if key not in obj:
            raise ValueError(f"{where}: missing key {key!r} ({FORMS})")
    return RESPONSES


def _split_implicit_prompt(chosen: list, rejected: list, where: str) -> tuple[list, list, list]:
    if min(len(chosen), len(rejected)) < 2 or chosen[:-1] != rejected[:-1]:
        raise ValueError(f"{where}: no 'prompt' key, and 'chosen' and 'rejected' do not share the messages before "
                         "their final assistant turn (implicit-prompt form)")
    return chosen[:-1], chosen[-1:], rejected[-1:]


def _message(value, name: str, where: str) -> Message:
    if not (isinstance(value, dict) and isinstance(value.get("role"), str) and isinstance(value.get("content"), str)):
        raise ValueError(f"{where}: {name} must be a message {{'role': str, 'content': str}}, got {value!r:.80}")
    if value["role"] not in ROLES:
        raise ValueError(f"{where}: {name} has role {value['role']!r}; supported roles: {list(ROLES)}")
    return Message(value["role"], value["content"])


def _plain_response(value, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: '{key}' must be a string when 'prompt' is a string, got {type(value).__name__}")
    return _nonempty(value, key, where)


def _chat_response(value, key: str, where: str) -> str:
    if not (isinstance(value, list) and len(value) == 1):
        raise ValueError(f"{where}: '{key}' must be a list holding one assistant message when 'prompt' is a list of "
                         "messages")
    message = _message(value[0], f"{key}[0]", where)
    if message.role != "assistant":
        raise ValueError(f"{where}: {key}[0] must have role 'assistant', got {message.role!r}")
    return _nonempty(message.content, key, where)


def _nonempty(text: str, key: str, where: str) -> str:
    if not text.strip():
        raise ValueError(f"{where}: '{key}' is an empty response")
    return text


def _steps(obj: dict, where: str) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    keys = [f"{key}_steps" for key in RESPONSES]
    given = [obj.get(key) is not None for key in keys]
    if any(given) and not all(given):
        have, lack = (keys[0], keys[1]) if given[0] else (keys[1], keys[0])
        raise ValueError(f"{where}: {have!r} is given but {lack!r} is not; logged reveal steps need both")
    if not all(given):
        return None, None
    out = []
    for key in keys:
        value = obj[key]
        if not (isinstance(value, list) and all(type(s) is int and 0 <= s < MAX_STEP for s in value)):
            raise ValueError(f"{where}: {key!r} must be a list of non-negative integers below {MAX_STEP}, "
                             "one reveal step per response token")
        out.append(tuple(value))
    return out[0], out[1]


def _tails(obj: dict, where: str, logged: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    out = []
    for key in (f"{r}_tail" for r in RESPONSES):
        value = obj.get(key)
        if value is None:
            out.append(())
            continue
        if not logged:
            raise ValueError(f"{where}: {key!r} is given without logged reveal steps (chosen_steps / rejected_steps)")
        if not (isinstance(value, list) and all(type(t) is int and 0 <= t < MAX_STEP for t in value)):
            raise ValueError(f"{where}: {key!r} must be a list of token ids (non-negative integers)")
        out.append(tuple(value))
    return out[0], out[1]
