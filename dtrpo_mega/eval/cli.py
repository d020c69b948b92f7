"""Command-line options shared by `dtrpo generate` and `dtrpo evaluate`: model, prompt format and decoding."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from dtrpo_mega.generation.sampler import DecodeConfig, Sampler
from dtrpo_mega.data import load_tokenizer
from dtrpo_mega.generation.model import (PromptRenderer, check_tokenizer_fits, choose_prompt_format, choose_tokenizer,
                                         family_sampler, load_for_decoding)
from dtrpo_mega.models.families import get_family


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True,
                        help="dtrpo checkpoint (model folder / iter_* / training root) or Hugging Face folder")
    parser.add_argument("--tokenizer",
                        help="tokenizer.json, tokenizer.model, or a folder holding one (default: the one "
                        "in a Hugging Face --ckpt, else the one a training checkpoint's data was made with)")
    parser.add_argument("--threshold", type=float,
                        help="reveal every position above this confidence (default: the family's rule)")
    parser.add_argument("--tokens-per-step", type=int,
                        help="fixed reveals per step instead of the threshold (default: the family's rule)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    prompt_format = parser.add_mutually_exclusive_group()
    prompt_format.add_argument("--plain", action="store_true",
                               help="render text prompts as plain text after BOS, without the chat "
                               "template's turns (default: as the training data's prompts, found through a training "
                               "checkpoint's trainer.json; else chat)")
    prompt_format.add_argument("--chat", action="store_true",
                               help="render text prompts as one user turn of the chat template")
    parser.add_argument("--no-kv-cache", action="store_true",
                        help="block diffusion: recompute finished blocks instead of caching them")
    parser.add_argument("--mask-token-id", type=int,
                        help="Hugging Face source only: mask token id when config.json has none")


@dataclass
class Decoder:
    sampler: Sampler
    renderer: PromptRenderer
    generator: torch.Generator
    batch_size: int
    prompt_format: str  # how text prompts are rendered: "plain" or "chat"


def build_decoder(args: argparse.Namespace) -> Decoder:
    """The model, its sampler and prompt renderer. A tokenizer with more tokens than the model's
    vocab_size is refused here, before any generation (see `check_tokenizer_fits`); every prompt id
    is checked against vocab_size again when rendered. Prints two lines: the tokenizer and the prompt
    format, and why."""
    tokenizer_path, found = choose_tokenizer(args.ckpt, args.tokenizer)
    if args.tokenizer is None:
        print(found, flush=True)
    tokenizer = load_tokenizer(tokenizer_path)
    options = {} if args.mask_token_id is None else {"mask_token_id": args.mask_token_id}
    model = load_for_decoding(args.ckpt, args.dtype, **options)
    cfg = model.dllm_config
    check_tokenizer_fits(tokenizer, cfg.vocab_size, args.ckpt)
    prompt_format, why = choose_prompt_format(args.ckpt, args.plain, args.chat)
    print(why, flush=True)
    renderer = PromptRenderer.for_family(cfg.family, tokenizer, plain=prompt_format == "plain",
                                         vocab_size=cfg.vocab_size)
    rule = get_family(cfg.family).decoding  # unless either option is given
    per_step = rule.tokens_per_step if args.threshold is None and args.tokens_per_step is None else args.tokens_per_step
    decode = DecodeConfig(args.max_new_tokens, rule.threshold if args.threshold is None else args.threshold, per_step,
                          args.temperature, renderer.end_of_turn_id, kv_cache=not args.no_kv_cache)
    sampler = family_sampler(model, decode)
    return Decoder(sampler, renderer, torch.Generator().manual_seed(args.seed), args.batch_size, prompt_format)
