"""Nothing lost, nothing executed, every bad input named: checkpoints, resumes, locks, settings."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest
import torch

from conftest import REPO, free_port, patient, run_torchrun
from dtrpo_mega.checkpoint.model import load_model, save_model
from dtrpo_mega.config import load_config
from dtrpo_mega.checkpoint.integrity import MANIFEST
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import model_config
from dtrpo_mega.checkpoint.trainer import TRACKER, load_checkpoint, save_checkpoint


class StandInOptimizer:
    def __init__(self, model):
        self.module = model

    def state_dict(self):
        return {"step": 1}

    def load_state_dict(self, state):
        assert state == {"step": 1}


def _saved(tmp_path, name="ckpt"):
    torch.manual_seed(0)
    model = build_model(model_config("sdar", num_layers=2))
    save_model(model, tmp_path / name)
    return model, tmp_path / name


def _config(data, run_dir, *extra):
    return load_config(None, [f"data.path={data}", "model.overrides={num_layers: 2}", "train.global_batch_size=2",
                              "train.micro_batch_size=1", f"checkpoint.dir={run_dir}/ckpt", f"logging.dir={run_dir}",
                              "logging.progress_bar=false", *extra])


# -- correctness ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_initialization_is_the_same_at_every_layout(tmp_path):
    output = run_torchrun("init_layouts.py", 4, str(tmp_path))
    assert output.count("SAME WEIGHTS") == 4, output[-3000:]


def test_a_resume_against_another_reference_is_refused(world_of_one, tmp_path):
    model, _ = _saved(tmp_path)
    path = save_checkpoint(tmp_path / "run", 3, model, StandInOptimizer(model), config={},
                           reference="random-init(seed=1)")
    with pytest.raises(ValueError,
                       match=r"trained against the reference random-init\(seed=1\), but this run's reference is "
                             r"sha256:ab"):
        load_checkpoint(path, model, StandInOptimizer(model), reference="sha256:ab")
    assert load_checkpoint(path, model, StandInOptimizer(model), reference="random-init(seed=1)").step == 3


@pytest.mark.slow
def test_metrics_of_steps_past_the_resume_point_are_dropped(world_of_one, counting_data, tmp_path):
    from dtrpo_mega.training.loop import train

    train(_config(counting_data, tmp_path, "train.train_steps=4", "checkpoint.save_interval=2"))
    (tmp_path / "ckpt" / TRACKER).write_text("iter_0000002\n")  # as if killed after logging steps 3 and 4
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.0')  # and mid-line
    train(_config(counting_data, tmp_path, "train.train_steps=4"))
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_second_job_in_the_same_checkpoint_dir_is_refused(world_of_one, counting_data, tmp_path):
    from dtrpo_mega.training.loop import train

    (tmp_path / "ckpt").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); fcntl.lockf(f, fcntl.LOCK_EX); "
        "f.write(f'pid {os.getpid()} on testhost\\n'); f.flush(); print('locked', flush=True); sys.stdin.read()"),
                               str(tmp_path / "ckpt" / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # holds the lock until killed
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ValueError, match=rf"checkpoint.dir .*ckpt is in use by pid {holder.pid} on testhost"):
            train(_config(counting_data, tmp_path, "train.train_steps=1"))
    finally:
        holder.kill()
        holder.wait()
    assert train(_config(counting_data, tmp_path, "train.train_steps=1")), "the lock dies with its holder"


# -- security -----------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_planted_in_checkpoint_metadata_never_runs(world_of_one, tmp_path):
    from dtrpo_mega.convert import export_hf

    model, path = _saved(tmp_path)
    marker = tmp_path / "PWNED"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    for load in (lambda: load_model(model, path, verify=False),
                 lambda: export_hf(path, tmp_path / "hf", log=lambda *_: None, verify=False)):
        with pytest.raises(Exception, match=r"\.metadata: refusing to load posix\.system"):
            load()
    assert not marker.exists()


# -- integrity ----------------------------------------------------------------------------------------


def test_a_flipped_byte_is_detected_and_named(world_of_one, tmp_path):
    model, path = _saved(tmp_path)
    assert MANIFEST in os.listdir(path)
    shard = sorted(path.glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard.name}: sha256 .* when saved"):
        load_model(model, path)
    load_model(model, path, verify=False)  # checkpoint.verify=false: loaded as it is


def test_truncated_files_are_named(world_of_one, tmp_path):
    model, _ = _saved(tmp_path)
    path = save_checkpoint(tmp_path / "run", 2, model, StandInOptimizer(model), config={})
    rank_file = path / "rank_00000.pt"
    rank_file.write_bytes(rank_file.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"rank_00000.pt: sha256"):
        load_checkpoint(path, model, StandInOptimizer(model))
    with pytest.raises(ValueError, match=r"reading checkpoint .*rank_00000.pt failed"):
        load_checkpoint(path, model, StandInOptimizer(model), verify=False)


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(world_of_one, tmp_path, monkeypatch):
    import shutil

    import dtrpo_mega.checkpoint.trainer as checkpoint

    model, _ = _saved(tmp_path)
    save_checkpoint(tmp_path / "run", 1, model, StandInOptimizer(model), config={})

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0; basic_ios::clear: "
                           "iostream error")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(OSError, match=r"writing .*iter_0000002/\S+ failed: no space left on the device \(ENOSPC"):
        save_checkpoint(tmp_path / "run", 2, model, StandInOptimizer(model), config={})
    assert (tmp_path / "run" / TRACKER).read_text().strip() == "iter_0000001"


def _marked(marker: str) -> list:
    """Live processes whose environment carries DTRPO_TEST_MARKER=marker."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.environ().get("DTRPO_TEST_MARKER") == marker:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_no_process_outlives_a_rank_killed_mid_save(tmp_path):
    """megatron's checkpoint writer forks writers and serves a results queue from a spawned manager;
    SIGKILLed mid-save, a rank must leave none of them behind."""
    marker = uuid.uuid4().hex
    script = tmp_path / "kill_mid_save.py"
    script.write_text(f"""
import os, signal, threading


def main():
    from dtrpo_mega.checkpoint.model import save_model
    from dtrpo_mega.models.dllm import build_model
    from dtrpo_mega.models.families import model_config
    from dtrpo_mega.parallel.runtime import ParallelConfig, initialize

    initialize(ParallelConfig(), seed=1)
    model = build_model(model_config("sdar", hidden_size=256, ffn_hidden_size=1024, num_layers=4))
    save_model(model, "{tmp_path}/warm")
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    for i in range(1000):
        save_model(model, f"{tmp_path}/c{{i}}")


if __name__ == "__main__":
    main()
""")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DTRPO_TEST_MARKER": marker}
    proc = subprocess.run([sys.executable, str(script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=patient(120))
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + patient(10)  # orphans of a killed parent take a moment to notice
    while (left := _marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in left:
        p.kill()
    assert not left, [" ".join(p.info["cmdline"] or []) for p in left]


# -- bad settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=-1e-3", r"optimizer.lr=-0.001: must be >= 0"),
    ("optimizer.min_lr=-1", r"optimizer.min_lr=-1.0: must be in \[0, optimizer.lr"),
    ("optimizer.adam_beta1=1.0", r"optimizer.adam_beta1=1.0: must be in \[0, 1\)"),
    ("optimizer.adam_beta2=-0.1", r"optimizer.adam_beta2=-0.1: must be in \[0, 1\)"),
    ("optimizer.adam_eps=-1e-8", r"optimizer.adam_eps=-1e-08: must be > 0"),
    ("optimizer.warmup_steps=-1", r"optimizer.warmup_steps=-1: must be >= 0"),
    ("train.global_batch_size=-4", r"train.global_batch_size=-4: must be >= 1"),
    ("train.micro_batch_size=0", r"train.micro_batch_size=0: must be >= 1"),
    ("train.train_steps=-1", r"train.train_steps=-1: must be >= 0"),
    ("checkpoint.save_interval=-1", r"checkpoint.save_interval=-1: must be >= 0"),
    ("logging.log_interval=0", r"logging.log_interval=0: must be >= 1"),
    ("parallel.tensor_model_parallel_size=0", r"parallel.tensor_model_parallel_size=0: must be >= 1"),
    ("model.overrides={hiden_size: 8}", r"unknown model.overrides \['model.overrides.hiden_size'\]"),
    ("model.family=gpt2", r"model.family='gpt2'; choose from"),
    ("optimizer.lr=[1,", r"override 'optimizer.lr=\[1,': the value of optimizer.lr is not valid YAML"),
])
def test_every_bad_setting_is_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


@pytest.mark.slow
def test_training_errors_print_one_line_before_any_process_group(counting_data, tmp_path):
    """A bad setting on 2 ranks: one `error:` line, exit status 2, no traceback."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}", "-m",
           "dtrpo_mega.train", f"data.path={counting_data}", "train.global_batch_size=3", f"logging.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=patient(300))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert out.count("error: train.global_batch_size=3 must be a multiple") == 1, out[-3000:]
    assert f'File "{REPO / "dtrpo_mega"}' not in out, "no traceback through dtrpo_mega"


@pytest.mark.slow
def test_train_sh_forwards_sigterm_and_exits_0(counting_data, tmp_path):
    """SIGTERM to examples/train.sh reaches the ranks, which save; torchrun and the script exit 0."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data:\n  path: {counting_data}\nmodel:\n  overrides: {{num_layers: 2}}\n"
                   "train:\n  global_batch_size: 4\n  micro_batch_size: 2\n  train_steps: 100000\n"
                   "logging:\n  progress_bar: false\n")
    env = {**os.environ, "CONFIG": str(cfg), "GPUS_PER_NODE": "2", "TP": "1", "PP": "2",
           "MASTER_PORT": str(free_port()), "CKPT_DIR": str(tmp_path / "ckpt"), "LOG_DIR": str(tmp_path),
           "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(REPO / "examples" / "train.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # pytest-timeout bounds a hang
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=patient(300))
    assert proc.returncode == 0, output[-3000:]
    step = int(output.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
    assert (tmp_path / "ckpt" / TRACKER).read_text().strip() == f"iter_{step:07d}"


def test_fallback_warnings_are_one_line_from_rank_0(tmp_path):
    code = ("import warnings, dtrpo_mega.quiet as q; "
            "warnings.warn('Apex is not installed. Falling back to Torch Norm'); "
            "warnings.warn('Transformer Engine and Apex are not installed. Falling back to Torch optimizers.'); "
            "warnings.warn('something else'); q.report(); q.report()")
    run = lambda rank: subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,  # noqa: E731
                                      text=True, env={**os.environ, "RANK": rank, "PYTHONPATH": str(REPO)}).stderr
    zero, one = run("0"), run("1")
    assert (zero.count("note: no Transformer Engine / apex here") == 1 and "2 warnings hidden" in zero
            and "something else" in zero)
    assert "Falling back" not in zero.split("note:")[0] and one == ""
