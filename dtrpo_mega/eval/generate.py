"""Generate with a trained dLLM: block diffusion or semi-autoregressive decoding (method doc section 5).

  dtrpo generate --ckpt CKPT --tokenizer TOK (--prompt TEXT ... | --prompts FILE.jsonl)
                 [--threshold 0.9] [--tokens-per-step K] [--temperature 0] [--max-new-tokens 256]
                 [--batch-size 8] [--seed 0] [--plain | --chat] [--no-kv-cache] [--record-trajectory OUT.jsonl]

(`python tools/generate.py` takes the same options.) CKPT: a model folder, a training checkpoint
(iter_*), a training root, or a Hugging Face folder (imported to a temporary folder first;
--mask-token-id when its config.json has none). A JSONL line holds `prompt` (text, or chat
messages). A text prompt is rendered as the model's training data rendered its prompts: after
BOS only if they were plain text, as one user turn if they were chat (the dataset's
`prompt_format`, found through the training checkpoint's trainer.json; chat when it cannot be
found); --plain or --chat forces either, and one line says which was chosen and why. Chat
messages are always rendered with the chat template. Block-diffusion families cache the keys
and values of finished blocks; --no-kv-cache recomputes them each step instead (the same logits,
slower).
--record-trajectory writes one line per generation: prompt, response text, `response_ids`,
`tail` (the slots decoded after end-of-turn: a `chosen_tail` / `rejected_tail` list), `steps`
(the reveal step of each response token, end-of-turn included, then of each tail slot: a
`chosen_steps` / `rejected_steps` list), `ended`, and `retokenizes` (the response text tokenizes
back to exactly `response_ids`; only then do the steps line up with a preprocessed copy of the text).
Bad input prints one `error: ...` line and exits with status 2, before any generation: a prompts
line that is not `{"prompt": ...}` (named FILE:LINE), a prompt that renders to no tokens (an empty
plain prompt without a BOS in the template; named `--prompt N`), a tokenizer with more tokens
than the model's vocab_size.
"""

from __future__ import annotations

import argparse
import json
import sys


def _prompts(args) -> list[tuple[str, object]]:
    """(where, prompt) of every prompt: `--prompt N`, or `FILE:LINE` of --prompts."""
    from dtrpo_mega.data.records import read_prompts

    if args.prompts:
        return read_prompts(args.prompts)
    return [(f"--prompt {i}", p) for i, p in enumerate(args.prompt, start=1)]


def _render(decoder, labelled: list) -> tuple[list, list[list[int]]]:
    """The prompts and their token ids, each problem naming its prompt."""
    prompts, ids = [], []
    for where, prompt in labelled:
        try:
            ids.append(decoder.renderer.ids(prompt))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        prompts.append(prompt)
    return prompts, ids


def main(argv: list[str] | None = None) -> int:
    from dtrpo_mega.eval.cli import add_decoder_options, build_decoder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_decoder_options(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    source.add_argument("--prompts", help="JSONL file with a `prompt` per line")
    parser.add_argument("--record-trajectory", help="JSONL file for generations with their reveal steps")
    args = parser.parse_args(argv)
    try:
        labelled = _prompts(args)
        decoder = build_decoder(args)
        prompts, prompt_ids = _render(decoder, labelled)
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    renderer, records, tokens, passes, seconds = decoder.renderer, [], 0, 0, 0.0
    for start in range(0, len(prompts), decoder.batch_size):
        batch = prompts[start : start + decoder.batch_size]
        generations, stats = decoder.sampler.generate(prompt_ids[start : start + decoder.batch_size], decoder.generator)
        tokens, passes, seconds = tokens + stats.new_tokens, passes + stats.forward_passes, seconds + stats.seconds
        for prompt, gen in zip(batch, generations):
            text = renderer.text(gen.tokens)
            print(f"=== {prompt if isinstance(prompt, str) else prompt[-1].content}\n{text}\n")
            conversational = not (isinstance(prompt, str) and renderer.plain)
            records.append(dict(prompt=prompt if isinstance(prompt, str) else [vars(m) for m in prompt], response=text,
                                response_ids=gen.tokens, tail=gen.tail, steps=gen.reveal_steps, ended=gen.ended,
                                retokenizes=renderer.encoder.response(text, conversational) == gen.tokens))
    print(f"{tokens} tokens, {passes} forward passes: {tokens / max(passes, 1):.2f} tokens/forward, "
          f"{tokens / max(seconds, 1e-9):.1f} tokens/s")
    if args.record_trajectory:
        with open(args.record_trajectory, "w", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\n" for r in records)
    return 0
