"""lm-evaluation-harness's `dtrpo_mega` model: a local generate_until task end to end (Python API and
`dtrpo lm-eval`), its responses against `dtrpo generate`'s, `until` cutting, request order, chat
templates, and the refusal of log-likelihoods."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, patient
from dtrpo_mega import cli
from dtrpo_mega.data import ChatEncoder, Message
from dtrpo_mega.data.synthetic import write_tokenizer
from dtrpo_mega.models.families import chat_template, family_names

TASK = "dtrpo_local_count"
MAX_GEN_TOKS = 6
QUESTIONS = ["count up from 3 :", "sort 5 3 9 1 7 2 :", "count up from 41 : 41 42", "up :", "sort 2 8 :",
             "count up from 7 : 7 8 9 10 11 12 13"]  # lengths differ: the harness reorders them by length


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory) -> dict[str, str]:
    """No hub access, and the datasets cache in a temporary folder; the variables, for subprocesses."""
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("hf"))}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield env


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, world_of_one) -> tuple[Path, Path]:
    """A random 1-layer fast_dllm_v2 model folder (weights large enough that prompts get different responses)
    and the synthetic tokenizer."""
    from dtrpo_mega.checkpoint.model import save_model
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config

    root = tmp_path_factory.mktemp("lm_eval_model")
    torch.manual_seed(0)
    config = model_config("fast_dllm_v2", vocab_size=128, num_layers=1, init_method_std=0.2)
    save_model(build_model(config).eval(), root / "model")
    return root / "model", write_tokenizer(root / "tokenizer.json")


@pytest.fixture(scope="module")
def generated(tiny, tmp_path_factory) -> list[str]:
    """`dtrpo generate`'s response to each question (one prompt per batch), before any stop string."""
    model, tokenizer = tiny
    root = tmp_path_factory.mktemp("generate")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    assert cli.main(["generate", "--ckpt", str(model), "--tokenizer", str(tokenizer), "--prompts",
                     str(root / "prompts.jsonl"), "--max-new-tokens", str(MAX_GEN_TOKS), "--batch-size", "1",
                     "--record-trajectory", str(root / "out.jsonl")]) == 0
    return [json.loads(line)["response"] for line in (root / "out.jsonl").read_text().splitlines()]


def _cut(text: str, until: list[str]) -> str:
    found = [text.find(stop) for stop in until if stop in text]
    return text[: min(found)] if found else text


@pytest.fixture(scope="module")
def stop(generated) -> str:
    """A stop string that cuts at least one response short: the second word of the first response with three."""
    words = next((g.split() for g in generated if len(g.split()) >= 3), None)
    assert words is not None, f"the random model gave no response of three words: {generated}"
    return words[1]


@pytest.fixture(scope="module")
def task(generated, stop, tmp_path_factory) -> tuple[Path, list[str], float]:
    """A local task folder; the expected responses (cut at `stop`) and exact-match rate: every other
    doc's target is the expected response, the others' can never match."""
    root = tmp_path_factory.mktemp("tasks")
    expected = [_cut(g, [stop]) for g in generated]
    assert expected != generated, "the stop string cuts nothing"
    answers = [e if i % 2 == 0 else "no such answer" for i, e in enumerate(expected)]
    docs = [{"question": q, "answer": a} for q, a in zip(QUESTIONS, answers)]
    (root / "docs.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    (root / f"{TASK}.yaml").write_text(f"""task: {TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(root / "docs.jsonl"))}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: [{json.dumps(stop)}]
  max_gen_toks: {MAX_GEN_TOKS}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
    rate = sum(e == a for e, a in zip(expected, answers)) / len(QUESTIONS)
    return root, expected, rate


@pytest.fixture(scope="module")
def lm(tiny):
    from dtrpo_mega.eval.lm_eval_model import DtrpoLM

    model, tokenizer = tiny
    return DtrpoLM(pretrained=str(model), tokenizer=str(tokenizer), batch_size=2, max_new_tokens=MAX_GEN_TOKS)


def _requests(contexts: list[str], gen_kwargs: list[dict], kind: str = "generate_until") -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, (c, g), i) for i, (c, g) in enumerate(zip(contexts, gen_kwargs))]


def test_simple_evaluate_runs_a_local_task_with_our_responses(tiny, task):
    import lm_eval
    from lm_eval.tasks import TaskManager

    import dtrpo_mega.eval.lm_eval_model  # noqa: F401  (registers "dtrpo_mega")

    (model, tokenizer), (root, expected, rate) = tiny, task
    model_args = f"pretrained={model},tokenizer={tokenizer},max_new_tokens=16"  # the task's max_gen_toks wins
    tasks = TaskManager(include_path=str(root), include_defaults=False)  # ours only: no index of lm-eval's own
    results = lm_eval.simple_evaluate(model="dtrpo_mega", model_args=model_args, tasks=[TASK], batch_size=4,
                                      task_manager=tasks, log_samples=True)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == QUESTIONS  # (context, gen_kwargs) of its one request
    assert [s["filtered_resps"][0] for s in samples] == expected
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(rate) == 0.5


def test_requests_come_back_in_order_cut_at_their_stop_strings(lm, generated, stop, monkeypatch):
    batches = []
    generate = lm.decoder.sampler.generate
    monkeypatch.setattr(lm.decoder.sampler, "generate", lambda ids, gen: batches.append(len(ids)) or generate(ids, gen))
    # two groups of gen_kwargs, each answered in batches of at most 2, longest context first
    untils = [[stop] if stop in g or i % 2 else ["never said", "nor this"] for i, g in enumerate(generated)]
    expected = [_cut(g, u) for g, u in zip(generated, untils)]
    assert expected != generated
    responses = lm.generate_until(_requests(QUESTIONS, [{"until": u, "max_gen_toks": MAX_GEN_TOKS} for u in untils]))
    assert responses == expected
    assert max(batches) <= 2 and sum(batches) == len(QUESTIONS)


def test_max_gen_toks_bounds_the_response(lm, generated):
    longer = [q for q, g in zip(QUESTIONS, generated) if len(g.split()) > 2]  # one word per token here
    assert longer, generated
    short = lm.generate_until(_requests(longer, [{"until": [], "max_gen_toks": 2}] * len(longer)))
    assert all(len(s.split()) <= 2 for s in short)


def test_apply_chat_template_renders_what_our_chat_prompts_are(lm):
    question = QUESTIONS[0]
    rendered = lm.apply_chat_template([{"role": "user", "content": question}])
    assert rendered.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert lm.context_ids(rendered) == lm.decoder.renderer.ids(question)  # chat-rendered once, not wrapped again
    assert lm.tokenizer_name.startswith("fast_dllm_v2_chatml")


@pytest.mark.parametrize("family", family_names())
def test_render_chat_tokenizes_as_the_chat_encoder(family, tiny):
    from dtrpo_mega.data import load_tokenizer
    from dtrpo_mega.eval.lm_eval_model import encode_rendered, render_chat

    template, encoder = chat_template(family), ChatEncoder(chat_template(family), load_tokenizer(tiny[1]))
    for history in ([{"role": "user", "content": "count up from 3 :"}],
                    [{"role": "system", "content": "sort"}, {"role": "user", "content": " up 4 "},
                     {"role": "assistant", "content": "4 5"}, {"role": "user", "content": "count"}]):
        expected = encoder.prompt(tuple(Message(m["role"], m["content"]) for m in history))
        assert encode_rendered(encoder, render_chat(template, history)) == expected
        # an open assistant turn continues exactly where the generation prompt leaves off
        opened = render_chat(template, [*history, {"role": "assistant", "content": "7 8"}], add_generation_prompt=False)
        assert opened == render_chat(template, history) + "7 8"


def test_tokenizer_defaults_to_the_checkpoints_own_and_batch_size_is_a_number(tiny, tmp_path):
    from dtrpo_mega.eval.lm_eval_model import DtrpoLM

    model, tokenizer = tiny
    with pytest.raises(ValueError,
                       match="holds no tokenizer.json or tokenizer.model, .*give one \\(--tokenizer, or tokenizer= in "
                             "lm-eval's model_args\\)"):
        DtrpoLM(pretrained=str(model))
    with pytest.raises(ValueError, match="batch_size must be a positive number, got 'auto'"):
        DtrpoLM(pretrained=str(model), tokenizer=str(tokenizer), batch_size="auto")
    shutil.copytree(model, tmp_path / "model")
    shutil.copy(tokenizer, tmp_path / "model" / "tokenizer.json")  # as a Hugging Face folder holds it
    found = DtrpoLM(pretrained=str(tmp_path / "model")).decoder.renderer.encoder.tokenizer
    assert found.path == tmp_path / "model" / "tokenizer.json"


def test_loglikelihood_is_refused_with_what_works(lm):
    for method in ("loglikelihood", "loglikelihood_rolling"):
        with pytest.raises(NotImplementedError, match=rf"{method} is not supported: a masked-diffusion LM has no "
                                                      r"exact token log-likelihood.*generate_until.* work"):
            getattr(lm, method)(_requests(["count up"], [" 1"], kind=method))


def test_lm_eval_is_imported_only_by_its_command():
    code = ("import sys, dtrpo_mega, dtrpo_mega.cli, dtrpo_mega.eval, dtrpo_mega.eval.lm_eval_cli; "
            "assert 'lm_eval' not in sys.modules, sorted(m for m in sys.modules if m.startswith('lm_eval'))")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=patient(120))


@pytest.mark.slow  # 15-25 s: a fresh process imports torch, megatron-core and lm-eval
def test_dtrpo_lm_eval_command_runs_the_task_with_the_chat_template(tiny, task, offline, tmp_path):
    """The shell entry, with --apply_chat_template: the model's prompts are chat by default, so the
    harness's rendering of the template must give the same responses as the plain-string run."""
    (model, tokenizer), (root, expected, rate) = tiny, task
    script = Path(sys.executable).parent / "dtrpo"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "dtrpo_mega.cli"]
    proc = subprocess.run([*command, "lm-eval", "--model", "dtrpo_mega", "--model_args",
                           f"pretrained={model},tokenizer={tokenizer}", "--tasks", TASK, "--include_path", str(root),
                           "--batch_size", "3", "--apply_chat_template", "--log_samples",
                           "--output_path", str(tmp_path / "out")],
                          cwd=REPO, env={**os.environ, **offline, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=patient(300))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    (results,), (samples,) = out.rglob("results_*.json"), out.rglob(f"samples_{TASK}_*.jsonl")
    assert json.loads(results.read_text())["results"][TASK]["exact_match,none"] == pytest.approx(rate)
    samples = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert all(s["arguments"]["gen_args_0"]["arg_0"].startswith("<|im_start|>system\n") for s in samples)
    assert [s["filtered_resps"][0] for s in samples] == expected
