"""Reference modes: precomputed sums reproduce the resident reference; keys are enforced; confidence order."""

import numpy as np
import pytest

from dtrpo_mega.config import load_config
from dtrpo_mega.diffusion.trajectory import inference_aligned_steps
from dtrpo_mega.training.loop import train
from dtrpo_mega.training.precompute import precompute


def _cfg(data, tmp_path, *extra):
    return load_config(None, [
        f"data.path={data}", "model.overrides={num_layers: 2}", "train.global_batch_size=4", "train.micro_batch_size=2",
        "train.train_steps=3", "optimizer.lr=1e-3", f"logging.dir={tmp_path}/logs", "logging.progress_bar=false",
        *extra,
    ])


def test_precomputed_reference_reproduces_the_resident_one(world_of_one, counting_data, tmp_path):
    resident = [r["loss"] for r in train(_cfg(counting_data, tmp_path / "a"))]
    cache = tmp_path / "ref.safetensors"
    # 3 steps of 4 pairs stay in epoch 0 of a 48-pair dataset.
    precompute(_cfg(counting_data, tmp_path / "b"), "sums", cache, epochs=1)
    precomputed = [r["loss"] for r in train(_cfg(counting_data, tmp_path / "c", "reference.mode=precomputed",
                                                 f"reference.cache={cache}"))]
    assert precomputed == pytest.approx(resident, rel=1e-6, abs=1e-8)

    with pytest.raises(ValueError, match=r"made for a different run .*seed: file 1234 vs run 7"):
        train(_cfg(counting_data, tmp_path / "d", "reference.mode=precomputed", f"reference.cache={cache}",
                   "train.seed=7"))
    with pytest.raises(ValueError, match=r"covers epochs 0..0; training reached epoch 1"):
        train(_cfg(counting_data, tmp_path / "e", "reference.mode=precomputed", f"reference.cache={cache}",
                   "train.train_steps=13"))
    with pytest.raises(FileNotFoundError, match="tools/precompute_reference.py"):
        train(_cfg(counting_data, tmp_path / "f", "reference.mode=precomputed", f"reference.cache={tmp_path}/missing"))


def test_reference_confidence_order(world_of_one, counting_data, tmp_path):
    from dtrpo_mega.training.setup import setup_run

    table = tmp_path / "conf.safetensors"
    precompute(_cfg(counting_data, tmp_path), "confidence", table)
    cfg = _cfg(counting_data, tmp_path, "scheduler.order=ref_confidence", f"data.ref_confidence={table}")
    run = setup_run(cfg)
    seq = run.rows.sequences(run.dataset[3])[1]
    conf = seq.confidence[seq.prompt_len : seq.revealed_length]
    assert (conf.shape == (len(seq.tokens) - seq.masked_tail - seq.prompt_len,)
            and (conf < 0).all()), "log-probs of the response tokens"
    steps = inference_aligned_steps(seq.prompt_len, len(seq.tokens), 8, 4, 1, True, np.random.default_rng(0),
                                    seq.confidence)
    for block_start in range(0, len(seq.tokens), 4):  # sub-blocks of 4: steps follow descending confidence
        idx = [i for i in range(block_start, min(block_start + 4, len(seq.tokens))) if steps[i] >= 0 and i % 8 != 0]
        assert [steps[i] for i in sorted(idx, key=lambda i: -seq.confidence[i])] == sorted(steps[i] for i in idx)
    assert train(cfg), "training runs with the confidence order"

    with pytest.raises(ValueError, match="scheduler.order=ref_confidence needs data.ref_confidence"):
        train(_cfg(counting_data, tmp_path, "scheduler.order=ref_confidence"))
    with pytest.raises(ValueError, match=r"data.ref_confidence .* was made for a different run \(model"):
        setup_run(_cfg(counting_data, tmp_path, "scheduler.order=ref_confidence", f"data.ref_confidence={table}",
                       "model.overrides={num_layers: 3}"))
