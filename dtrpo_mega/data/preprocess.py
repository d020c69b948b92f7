"""Offline preprocessing: JSONL records -> tokenized, fingerprinted indexed dataset.

A file holds preference pairs or prompt-completion examples, not both (the first record decides;
the metadata's `kind` says which). A completion is stored as the chosen response, with an empty
rejected one. Its prompts are all plain text or all chat messages, likewise: the first record
decides, a record of the other format is an error naming its file:line, and the metadata's
`prompt_format` ("plain" or "chat") says which, so generation and evaluation of a model trained
on the data render prompts the same way (`dtrpo generate`; datasets written before the field
have none).

Over-long examples: `max_length` bounds the prompt plus the longer response. `truncate` cuts both
responses to `max_length - len(prompt)` tokens (a cut response loses its end-of-turn token, and
its logged steps are cut with it); `drop` skips the example. A prompt that alone leaves no room for
a response is an error under `truncate` (naming file, line and lengths) and is dropped under
`drop`. Every truncated or dropped example is counted in the metadata and the log.

The fingerprint is the sha256 of the input file's bytes, the tokenizer's files and the settings
(chat template included), so it identifies the data a reference cache or a run was made from;
paths do not enter it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path

import numpy as np

from dtrpo_mega.data.chat import ChatEncoder
from dtrpo_mega.data.indexed import FORMAT, IndexedWriter, PreferencePair
from dtrpo_mega.data.records import RESPONSES, PreferenceRecord, check_jsonl_path, read_records
from dtrpo_mega.data.tokenizer import load_tokenizer
from dtrpo_mega.checkpoint.integrity import sha256_file
from dtrpo_mega.models.families import chat_template, family_names, get_family

log = logging.getLogger(__name__)
SHOWN_LOCATIONS = 5  # how many file:line examples the log gives per outcome
PROMPT_FORMS = {"plain": "a plain-text prompt", "chat": "a chat prompt (a list of messages)"}


class Overlong(str, Enum):
    TRUNCATE = "truncate"
    DROP = "drop"


@dataclass(frozen=True)
class PreprocessSettings:
    family: str
    max_length: int  # prompt + longer response, in tokens
    overlong: Overlong = Overlong.TRUNCATE
    block_size: int | None = None  # recorded for the trainer; None: the family's

    def __post_init__(self):
        if self.family not in family_names():
            raise ValueError(f"family={self.family!r} is unknown; supported: {family_names()}")
        if type(self.max_length) is not int or self.max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        try:
            object.__setattr__(self, "overlong", Overlong(self.overlong))
        except ValueError:
            raise ValueError(f"overlong={self.overlong!r}; choose from {[o.value for o in Overlong]}") from None
        if self.block_size is None:
            object.__setattr__(self, "block_size", get_family(self.family).traits["block_size"])
        if type(self.block_size) is not int or self.block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {self.block_size!r}")

    def to_dict(self) -> dict:
        return dict(family=self.family, max_length=self.max_length, overlong=self.overlong.value,
                    block_size=self.block_size, chat_template=chat_template(self.family).to_dict())


def fingerprint(data_sha256: str, tokenizer_sha256: str, settings: dict) -> str:
    payload = dict(format=FORMAT, data=data_sha256, tokenizer=tokenizer_sha256, settings=settings)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def tokenize_record(record: PreferenceRecord, encoder: ChatEncoder, index: int) -> PreferencePair:
    """Token ids of a record, a logged tail after end-of-turn included; logged steps must count
    them all (the tokenized response, end-of-turn included, then the tail).

    A prompt-completion record's completion is the chosen response; its rejected response is empty.
    """
    keys = ("chosen",) if record.is_completion else RESPONSES
    ids = {key: encoder.response(getattr(record, key), record.conversational) + list(getattr(record, f"{key}_tail", ()))
           for key in keys}
    steps = {}
    for key, response in ids.items():
        given = getattr(record, f"{key}_steps")
        if given is not None and len(given) != len(response):
            tail = len(getattr(record, f"{key}_tail"))
            raise ValueError(f"{record.where}: '{key}_steps' has {len(given)} values but the tokenized {key} response "
                             f"has {len(response) - tail} tokens (end-of-turn {encoder.template.end_of_turn!r} "
                             "included)"
                             + (f" and its tail {tail}" if tail else ""))
        steps[key] = None if given is None else np.asarray(given, dtype=np.int64)
    return PreferencePair(index, np.asarray(encoder.prompt(record.prompt), dtype=np.int64),
                          np.asarray(ids["chosen"], dtype=np.int64),
                          np.asarray(ids.get("rejected", ()), dtype=np.int64), steps["chosen"], steps.get("rejected"))


def fit(pair: PreferencePair, settings: PreprocessSettings, where: str) -> tuple[PreferencePair | None, str]:
    """Apply the over-long rule: (pair, "kept"), (truncated pair, "truncated") or (None, "dropped")."""
    limit, prompt_len = settings.max_length, len(pair.prompt)
    if prompt_len + max(len(pair.chosen), len(pair.rejected)) <= limit:
        return pair, "kept"
    if settings.overlong is Overlong.DROP:
        return None, "dropped"
    if prompt_len >= limit:
        raise ValueError(f"{where}: the prompt alone has {prompt_len} tokens, leaving no room for a response within "
                         f"max_length={limit}; raise max_length or use overlong=drop to skip such examples")
    room = limit - prompt_len

    def cut(ids: np.ndarray | None) -> np.ndarray | None:
        return None if ids is None else ids[:room]

    return replace(pair, chosen=cut(pair.chosen), rejected=cut(pair.rejected), chosen_steps=cut(pair.chosen_steps),
                   rejected_steps=cut(pair.rejected_steps)), "truncated"


def build_preference_dataset(input_jsonl: str | Path, tokenizer_path: str | Path, family: str,
                             output_prefix: str | Path, max_length: int, overlong: str = "truncate",
                             block_size: int | None = None) -> dict:
    """Tokenize `input_jsonl` into the indexed dataset at `output_prefix`; returns the counts.

    Counts: `read` (non-blank lines), `kept` (written, truncated ones included), `truncated`, `dropped`.
    The metadata's `kind` is "preference" or "completion" and its `prompt_format` "plain" or "chat",
    as the first record decides.
    """
    settings = PreprocessSettings(family, max_length, overlong, block_size)
    check_jsonl_path(input_jsonl)
    tokenizer = load_tokenizer(tokenizer_path)
    encoder = ChatEncoder(chat_template(family), tokenizer)
    data_sha256 = sha256_file(input_jsonl)
    counts = dict(read=0, kept=0, truncated=0, dropped=0)
    where_of = {"truncated": [], "dropped": []}
    first_where, first_kind, with_steps, first_format = None, None, False, None  # the first record decides these
    with IndexedWriter(output_prefix) as writer:
        for record in read_records(input_jsonl):
            counts["read"] += 1
            kind, has_steps = "completion" if record.is_completion else "preference", record.chosen_steps is not None
            prompt_format = "chat" if record.conversational else "plain"
            if first_where is None:
                first_where, first_kind, with_steps, first_format = record.where, kind, has_steps, prompt_format
            elif kind != first_kind:
                raise ValueError(f"{record.where}: a {kind} record but the first record ({first_where}) is a "
                                 f"{first_kind} record: a file holds preference pairs or prompt-completion examples, "
                                 "not both")
            elif has_steps != with_steps:
                raise ValueError(f"{record.where}: {'has' if has_steps else 'lacks'} logged reveal steps but the first "
                                 f"record ({first_where}) {'does not' if has_steps else 'does'}: give them for every "
                                 "record or none")
            elif prompt_format != first_format:
                raise ValueError(f"{record.where}: {PROMPT_FORMS[prompt_format]} but the first record ({first_where}) "
                                 f"has {PROMPT_FORMS[first_format]}: a file holds plain-text or chat prompts, not both")
            pair, outcome = fit(tokenize_record(record, encoder, counts["kept"]), settings, record.where)
            if outcome != "kept":
                counts[outcome] += 1
                if len(where_of[outcome]) < SHOWN_LOCATIONS:
                    where_of[outcome].append(record.where)
            if pair is not None:
                writer.add(pair)
                counts["kept"] += 1
        if not counts["kept"]:
            raise ValueError(f"{input_jsonl}: no examples to write ({counts['read']} records read, "
                             f"{counts['dropped']} dropped by max_length={max_length})")
        settings_dict = settings.to_dict()
        writer.commit(dict(
            fingerprint=fingerprint(data_sha256, tokenizer.identity, settings_dict),
            settings=settings_dict,
            kind=first_kind,
            prompt_format=first_format,
            tokenizer={**tokenizer.describe(), "end_of_turn_id": encoder.end_of_turn_id, "fill_id": encoder.fill_id},
            source=dict(path=str(input_jsonl), sha256=data_sha256),
            counts=counts,
        ))
    _log_counts(counts, where_of, settings, output_prefix)
    return counts


def _log_counts(counts: dict, where_of: dict, settings: PreprocessSettings, output_prefix) -> None:
    log.info("%s: %d records read, %d kept", output_prefix, counts["read"], counts["kept"])
    for outcome, wheres in where_of.items():
        if counts[outcome]:
            more = ", ..." if counts[outcome] > len(wheres) else ""
            log.warning("%s: %d of %d examples %s by max_length=%d (overlong=%s): %s%s", output_prefix, counts[outcome],
                        counts["read"], outcome, settings.max_length, settings.overlong.value, ", ".join(wheres), more)


USAGE = """Tokenize TRL-format preference or prompt-completion JSONL into the memory-mapped dataset that training reads.

  dtrpo preprocess --input pairs.jsonl --tokenizer TOKENIZER --family fast_dllm_v2 \\
      --output data/pairs --max-length 2048 [--overlong truncate|drop] [--block-size N]

TOKENIZER: a SentencePiece `.model` file, a Hugging Face `tokenizer.json`, or a model folder
holding one. Writes OUTPUT.bin, OUTPUT.idx.npy, OUTPUT.json (and OUTPUT.steps.bin for data with
logged reveal steps), then prints the counts, the prompt format (plain or chat, which generation
and evaluation follow) and the data fingerprint. Set `data.path=OUTPUT` in the training config.
Bad input (a missing or unreadable file, a malformed line, a file mixing plain and chat prompts,
bad settings) prints one `error: ...` line naming the file (and line) and exits with status 2.
"""


def main(argv: list[str] | None = None) -> int:
    """`dtrpo preprocess` (tools/preprocess_data.py)."""
    import argparse
    import sys

    from dtrpo_mega.data.indexed import PreferenceDataset

    parser = argparse.ArgumentParser(description=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True,
                        help="preference or prompt-completion records, one JSON object per line")
    parser.add_argument("--tokenizer", required=True,
                        help="SentencePiece .model, tokenizer.json, or a folder holding one")
    parser.add_argument("--family", required=True, choices=family_names(), help="model family (chat template)")
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--max-length", type=int, required=True, help="max tokens of prompt + longer response")
    parser.add_argument("--overlong", default=Overlong.TRUNCATE.value, choices=[o.value for o in Overlong],
                        help="what to do with examples over --max-length (default: truncate the responses)")
    parser.add_argument("--block-size", type=int, help="block size recorded for the trainer (default: the family's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        counts = build_preference_dataset(args.input, args.tokenizer, args.family, args.output, args.max_length,
                                          args.overlong, args.block_size)
    except (ValueError, OSError) as err:  # bad input (file:line named), a missing or unreadable file
        print(f"error: {err}", file=sys.stderr)
        return 2
    dataset = PreferenceDataset.open(args.output)
    print(" ".join(f"{name}={value}" for name, value in counts.items()))
    print(f"wrote {args.output}: {len(dataset)} {dataset.kind} examples with {dataset.prompt_format} prompts, "
          f"{dataset.metadata['num_tokens']} tokens, fingerprint {dataset.fingerprint}")
    return 0
