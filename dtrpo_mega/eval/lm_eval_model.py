"""lm-evaluation-harness model `dtrpo_mega`: generation tasks decoded with our Sampler (docs/lm_eval.md).

Importing this module imports lm_eval and registers the model; nothing in the package imports it but
`dtrpo lm-eval` (`dtrpo_mega.eval.lm_eval_cli`). model_args are `dtrpo generate`'s options and build the
same decoder (`dtrpo_mega.eval.cli.build_decoder`): pretrained (--ckpt), tokenizer, threshold, tokens_per_step,
max_new_tokens (default max_gen_toks), dtype, seed, plain / chat, kv_cache, mask_token_id; batch_size too.

A context that our `apply_chat_template` rendered (`--apply_chat_template`) is tokenized as it stands, its
`<|...|>` markers as their special ids; any other context is a text prompt, rendered as `dtrpo generate`
renders one (plain text, or one chat user turn: `choose_prompt_format`). Decoding stops at end-of-turn or
max_gen_toks; the `until` strings then cut the text at the first one found.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging

from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from dtrpo_mega.data import ChatEncoder
from dtrpo_mega.eval.cli import add_decoder_options, build_decoder
from dtrpo_mega.models.families.spec import SPECIAL, ChatTemplate

logger = logging.getLogger(__name__)
HANDLED_GEN_KWARGS = {"until", "max_gen_toks", "do_sample", "temperature"}
NO_LIKELIHOOD = ("dtrpo_mega: {method} is not supported: a masked-diffusion LM has no exact token log-likelihood "
                 "(only bounds such as the ELBO, which lm-eval would read as exact), so loglikelihood, "
                 "loglikelihood_rolling and multiple_choice tasks cannot be scored; generation tasks "
                 "(output_type: generate_until, e.g. gsm8k, humaneval, mbpp, ifeval, gpqa's generative variants) work")


def render_chat(template: ChatTemplate, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The text of a conversation in a family's template, as `ChatEncoder.prompt` renders it; without the
    generation prompt, the last message is left open (its end-of-turn omitted) for the model to continue."""
    messages = template.conversation([(m["role"], m["content"].strip() if template.strip_content else m["content"])
                                      for m in chat_history])
    turns = [template.turn.format(role=role, content=content) for role, content in messages]
    if add_generation_prompt:
        return template.bos + "".join(turns) + template.generation_prompt
    role, content = messages[-1]
    return template.bos + "".join(turns[:-1]) + template.turn.split("{content}")[0].format(role=role) + content


def encode_rendered(encoder: ChatEncoder, text: str) -> list[int]:
    """Token ids of rendered text: the template's `<|...|>` markers by id, each text run between them tokenized
    whole (as `ChatEncoder` tokenizes its template strings)."""
    ids = []
    for k, piece in enumerate(SPECIAL.split(text)):  # text, marker, text, ...
        if k % 2 and piece in encoder.special_ids:
            ids.append(encoder.special_ids[piece])
        elif piece:
            ids += encoder.tokenizer.encode(piece)
    return ids


@register_model("dtrpo_mega")
class DtrpoLM(LM):
    """A dtrpo or Hugging Face dLLM checkpoint, one process, decoded in batches by our Sampler."""

    def __init__(self, pretrained: str, tokenizer: str | None = None, batch_size: int | str = 8,
                 max_new_tokens: int = 256, threshold: float | None = None, tokens_per_step: int | None = None,
                 dtype: str = "fp32", seed: int = 0, plain: bool = False, chat: bool = False, kv_cache: bool = True,
                 mask_token_id: int | None = None, max_batch_size: int | None = None,
                 device: str | None = None) -> None:
        """`max_batch_size` and `device` are lm-eval's and not used: the model runs where dtrpo's runtime puts
        it (the current CUDA device, else the CPU), in batches of `batch_size` (a number; not `auto`)."""
        super().__init__()
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"dtrpo_mega: batch_size must be a positive number, got {batch_size!r}")
        argv = ["--ckpt", str(pretrained), *(["--tokenizer", str(tokenizer)] if tokenizer else []), "--batch-size",
                str(batch_size), "--max-new-tokens", str(max_new_tokens), "--dtype", dtype, "--seed", str(seed)]
        options = {"--threshold": threshold, "--tokens-per-step": tokens_per_step, "--mask-token-id": mask_token_id}
        argv += [item for flag, value in options.items() if value is not None for item in (flag, str(value))]
        argv += [flag for flag, on in (("--plain", plain), ("--chat", chat), ("--no-kv-cache", not kv_cache)) if on]
        parser = argparse.ArgumentParser(prog="dtrpo_mega model_args")
        add_decoder_options(parser)
        self.decoder = build_decoder(parser.parse_args(argv))
        self.max_new_tokens, self._decode = max_new_tokens, self.decoder.sampler.decode
        encoder = self.decoder.renderer.encoder
        self.template, self._identity = encoder.template, encoder.tokenizer.identity
        self._chat_opening = self.template.bos + self.template.turn.split("{role}")[0]

    def context_ids(self, context: str) -> list[int]:
        """A request's context as token ids (see the module docstring)."""
        if context.startswith(self._chat_opening):
            return encode_rendered(self.decoder.renderer.encoder, context)
        return self.decoder.renderer.ids(context)

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """One response per request, in request order; batches of the same gen_kwargs, longest context first."""
        arr = [(*request.args, self.context_ids(request.args[0])) for request in requests]
        collator = Collator(arr, sort_fn=lambda x: (-len(x[2]), x[0]), group_by="gen_kwargs", group_fn=lambda x: x[1])
        pbar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="Running generate_until requests")
        sampler, renderer, results = self.decoder.sampler, self.decoder.renderer, []
        for chunk in collator.get_batched(n=self.decoder.batch_size):
            contexts, all_gen_kwargs, ids = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_gen_kwargs[0], self.max_new_tokens)
            if ignored := sorted(set(kwargs) - HANDLED_GEN_KWARGS):
                logger.warning("dtrpo_mega: generation kwargs %s are not used by the diffusion sampler", ignored)
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0
            sampler.decode = dataclasses.replace(self._decode, max_new_tokens=kwargs["max_gen_toks"],
                                                 temperature=temperature)
            generations, _ = sampler.generate(list(ids), self.decoder.generator)
            for context, gen_kwargs, generation in zip(contexts, all_gen_kwargs, generations):
                text = postprocess_generated_text(renderer.text(generation.tokens), kwargs["until"], None)
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            pbar.update(len(chunk))
        pbar.close()
        return collator.get_original(results)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(NO_LIKELIHOOD.format(method="loglikelihood"))

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        raise NotImplementedError(NO_LIKELIHOOD.format(method="loglikelihood_rolling"))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return render_chat(self.template, chat_history, add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        """The chat template and tokenizer, for lm-eval's request-cache keys."""
        return f"{self.template.name}-{self._identity[:16]}"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The family's template (its strings as JSON), which lm-eval logs with the results."""
        return json.dumps(self.template.to_dict()) if chat_template else None
