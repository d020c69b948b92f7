"""dTRPO training: pure re-masking, identical policy/reference inputs, layout invariance, resume, SIGTERM."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, patient, run_torchrun
from dtrpo_mega.parallel.runtime import free_port
from dtrpo_mega.config import load_config


def _config(data, *overrides):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", *overrides])


def test_remasking_is_a_pure_function_of_the_sample(world_of_one, counting_data):
    from dtrpo_mega.training.setup import setup_run

    run = setup_run(_config(counting_data, "train.global_batch_size=4"))
    ds = run.dataset
    alone = run.rows.micro_batch([ds[5]], epoch=1)
    among = run.rows.micro_batch([ds[2], ds[9], ds[5]], epoch=1)
    fresh = setup_run(_config(counting_data, "train.global_batch_size=4")).rows.micro_batch([ds[5]], epoch=1)
    other_epoch = run.rows.micro_batch([ds[5]], epoch=2)

    def rows_of(mb, pair):
        return [(mb.tokens[r][m], mb.layout.positions[r][m], mb.labels[r][m], mb.weights[r][m])
                for slot, _, r, m in mb.samples() if slot == pair]

    def same(a, b):
        return len(a) == len(b) and all(all(torch.equal(x, y) for x, y in zip(ra, rb)) for ra, rb in zip(a, b))

    assert same(rows_of(alone, 0), rows_of(among, 2)), "batch position changed the re-masking"
    assert same(rows_of(alone, 0), rows_of(fresh, 0)), "a fresh run (as after resume) re-masked differently"
    assert not same(rows_of(alone, 0), rows_of(other_epoch, 0)), "epochs should re-mask anew"


def test_data_must_match_the_model_family(world_of_one, counting_data):
    from dtrpo_mega.training.setup import setup_run

    with pytest.raises(ValueError, match="model.family='sdar' but the data .* was rendered for 'fast_dllm_v2'"):
        setup_run(_config(counting_data, "model.family=sdar"))


def test_policy_and_reference_receive_identical_inputs(world_of_one, counting_data):
    from dtrpo_mega.training.loop import micro_batches_of, step_loss
    from dtrpo_mega.training.setup import build_policy, build_reference, setup_run
    from dtrpo_mega.training.step import forward_backward

    cfg = _config(counting_data, "train.global_batch_size=4", "train.micro_batch_size=2")
    run = setup_run(cfg)
    policy = build_policy(run)
    reference = build_reference(run, policy)
    seen = {"policy": [], "reference": []}

    def recorder(name):
        def hook(module, args, kwargs):
            input_ids, layout = args[0], args[1]
            seen[name].append((input_ids.clone(), layout.positions.clone(), layout.noisy.clone(),
                               layout.segments.clone(), layout.allowed().clone(), kwargs["labels"].clone()))
        return hook

    policy.register_forward_pre_hook(recorder("policy"), with_kwargs=True)
    reference.model.register_forward_pre_hook(recorder("reference"), with_kwargs=True)
    micro = reference.with_reference(micro_batches_of(run, step=0))
    forward_backward(policy, micro, step_loss(run, micro))
    assert len(seen["policy"]) == len(seen["reference"]) == 2
    for p, r in zip(seen["policy"], seen["reference"]):
        for a, b in zip(p, r):
            assert torch.equal(a, b)
    assert seen["policy"][0][2].any(), "the noisy half must be present"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["fast_dllm_v2", "sdar"])
def test_one_step_is_invariant_to_tp_pp_dp_and_micro_batches(tmp_path, counting_datasets, family):
    output = run_torchrun("train_invariance.py", 4, counting_datasets(family), str(tmp_path), family)
    for layout in ("TP=1 PP=1 CP=1 micro_batch=1 shared DP=4", "TP=2 PP=1 CP=1 micro_batch=2 shared DP=2",
                   "TP=1 PP=2 CP=1 micro_batch=4 shared DP=2", "TP=2 PP=2 CP=1 micro_batch=1 shared DP=1",
                   "TP=2 PP=2 CP=1 micro_batch=8 shared DP=1", "TP=1 PP=1 CP=1 packed shared DP=4",
                   "TP=2 PP=2 CP=1 packed shared DP=1", "TP=2 PP=2 CP=1 packed DP=1",
                   "TP=1 PP=1 CP=2 micro_batch=2 shared DP=2", "TP=1 PP=1 CP=2 micro_batch=2 DP=2",
                   "TP=2 PP=1 CP=2 micro_batch=1 shared DP=1", "TP=1 PP=2 CP=2 micro_batch=4 shared DP=1",
                   "TP=1 PP=1 CP=4 micro_batch=8 shared DP=1", "TP=1 PP=1 CP=2 packed shared DP=2",
                   "TP=2 PP=1 CP=2 packed shared DP=1"):
        assert f"INVARIANT OK {layout}" in output, output[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llada2", "sdar_moe"])
def test_one_step_is_invariant_to_expert_parallelism(tmp_path, counting_datasets, family):
    output = run_torchrun("train_invariance.py", 4, counting_datasets(family), str(tmp_path), family)
    for layout in ("TP=1 PP=1 CP=1 EP=2 micro_batch=1 shared DP=4", "TP=2 PP=1 CP=1 EP=2 micro_batch=2 shared DP=2",
                   "TP=1 PP=2 CP=1 EP=2 micro_batch=4 shared DP=2", "TP=1 PP=1 CP=2 EP=2 micro_batch=2 shared DP=2",
                   "TP=1 PP=1 CP=1 EP=2 packed shared DP=4", "TP=1 PP=1 CP=1 EP=2 micro_batch=2 DP=4"):
        assert f"INVARIANT OK {layout}" in output, output[-3000:]


def _train(nproc, *overrides):
    return run_torchrun(str(REPO / "dtrpo_mega" / "train.py"), nproc, *overrides)


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def _train_overrides(data, run_dir, *extra):
    return [f"data.path={data}", "model.overrides={num_layers: 2}", "parallel.pipeline_model_parallel_size=2",
            "train.global_batch_size=4", "train.micro_batch_size=2", "optimizer.lr=1e-3", "optimizer.warmup_steps=2",
            f"checkpoint.dir={run_dir}/ckpt", f"logging.dir={run_dir}", "logging.progress_bar=false", *extra]


@pytest.mark.slow
def test_resume_reproduces_an_uninterrupted_run(tmp_path, counting_data):
    whole, split = tmp_path / "whole", tmp_path / "split"
    _train(2, *_train_overrides(counting_data, whole, "train.train_steps=6"))
    _train(2, *_train_overrides(counting_data, split, "train.train_steps=3"))
    assert (split / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "iter_0000003"
    output = _train(2, *_train_overrides(counting_data, split, "train.train_steps=6"))
    assert "resumed from" in output and "at step 3" in output
    # what a save and a resume print is dtrpo_mega's own (megatron-core 0.19.2 / torch 2.9.1 notices folded)
    noise = [line for line in output.splitlines() if re.search(r"\[Gloo\]|DEPRECATED|deprecated|No CUDA runtime|"
                                                                  r"Warning|argument order", line)]
    assert not noise, noise
    a, b = _losses(whole), _losses(split)
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), (step, a, b)

    # A different layout resumes the weights (resharded) and says the optimizer state is reset.
    moved = _train(2, *_train_overrides(counting_data, split, "train.train_steps=7",
                                        "parallel.pipeline_model_parallel_size=1"))
    assert "weights resharded, optimizer state reset" in moved
    assert 7 in _losses(split)


@pytest.mark.slow
def test_stop_flag_catches_sigterm_only_while_training():
    from dtrpo_mega.training.loop import StopFlag

    before = signal.getsignal(signal.SIGTERM)
    flag = StopFlag()
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert flag.requested
    flag.restore()  # a process that trains in-process (the reproduction) stays killable afterwards
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, counting_data):
    import psutil

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           str(REPO / "dtrpo_mega" / "train.py"), *_train_overrides(counting_data, run_dir, "train.train_steps=100000")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # pytest-timeout bounds a hang
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    for worker in psutil.Process(proc.pid).children():  # as Slurm does: every task gets SIGTERM
        worker.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=patient(240))
    assert proc.returncode == 0, output[-3000:]
    assert "SIGTERM: saved a checkpoint at step" in output
    step = int(output.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
    assert (run_dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == f"iter_{step:07d}"
    assert max(_losses(run_dir)) == step


@pytest.mark.slow
def test_wandb_logs_offline_without_an_api_key(world_of_one, counting_data, tmp_path, monkeypatch):
    from dtrpo_mega.training.loop import train

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    history = train(_config(counting_data, "train.global_batch_size=4", "train.train_steps=2",
                            f"logging.dir={tmp_path}", "logging.wandb_project=dtrpo-test",
                            "logging.progress_bar=false"))
    assert [r["step"] for r in history] == [1, 2]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline wandb run with its data file"
