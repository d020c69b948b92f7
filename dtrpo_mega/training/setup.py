"""What a run is made of: the model config, the data, the row builder, the reference and its key.

Shared by training and `tools/precompute_reference.py`, so both build rows the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from dtrpo_mega.checkpoint.model import load_model, read_model_config
from dtrpo_mega.config import ReferenceMode, TrainConfig
from dtrpo_mega.data import PreferenceDataset
from dtrpo_mega.checkpoint.integrity import folder_digest
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.mask import noisy_start
from dtrpo_mega.diffusion.spec import LastBlock, ScoringLayout
from dtrpo_mega.diffusion.trajectory import RevealOrder
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.models.dllm import build_model
from dtrpo_mega.models.families import get_family, model_config
from dtrpo_mega.parallel.runtime import Runtime, initialize
from dtrpo_mega.rows import ConfidenceTable, RowBuilder, ScoredRows
from dtrpo_mega.rows.samples import shared_prompt_length
from dtrpo_mega.training.batches import DataOrder
from dtrpo_mega.training.reference import PrecomputedReference, ResidentReference


@dataclass
class Run:
    cfg: TrainConfig
    runtime: Runtime
    model_config: DLLMConfig
    dataset: PreferenceDataset
    rows: RowBuilder
    order: DataOrder
    dtype: torch.dtype

    def context_shards(self, micro: list[ScoredRows]) -> list[ScoredRows]:
        """This rank's context-parallel share of every row (the rows themselves at CP=1)."""
        if self.runtime.cp == 1:
            return micro
        return [mb.context_shard(self.runtime.cp_rank, self.runtime.cp) for mb in micro]


def row_multiple(pad_to_multiple: int, cp: int, sequence_parallel_tp: int) -> int:
    """Row lengths split evenly: 2 x CP chunks (load-balanced CP), each over the TP ranks under
    sequence parallelism."""
    return math.lcm(pad_to_multiple, (2 * cp if cp > 1 else 1) * sequence_parallel_tp)


def resolve_model_config(cfg: TrainConfig) -> DLLMConfig:
    if cfg.model.load:
        base = read_model_config(cfg.model.load)
        return base.with_overrides(**cfg.model.overrides) if cfg.model.overrides else base
    return model_config(cfg.model.family, cfg.model.size, **cfg.model.overrides)


def setup_run(cfg: TrainConfig) -> Run:
    """Check the settings, the model config and the data, then create the process groups."""
    par = cfg.parallel
    world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))
    cfg.validate(world)  # before any side effect
    model_cfg = resolve_model_config(cfg)
    model_cfg.check_parallel(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                             par.expert_model_parallel_size, par.expert_tensor_parallel_size)
    dataset = cfg.data.open(model_cfg)
    runtime = initialize(par, seed=cfg.train.seed)
    if cfg.objective.name.is_preference and dataset.kind != "preference":
        raise ValueError(f"data.path={cfg.data.path} holds {dataset.kind} examples, but "
                         f"objective.name={cfg.objective.name.value} needs preference pairs (objective.name=sft trains "
                         "on prompt-completion data)")
    bf16 = cfg.train.bf16 if cfg.train.bf16 is not None else torch.cuda.is_available()
    sequence_parallel_tp = runtime.tp if model_cfg.sequence_parallel(runtime.tp) else 1
    pad = row_multiple(cfg.data.pad_to_multiple, runtime.cp, sequence_parallel_tp)
    tokenizer = dataset.metadata["tokenizer"]
    rows = RowBuilder(model_cfg, cfg.scheduler, cfg.objective.name, cfg.train.seed, cfg.objective.vrpo_samples, pad,
                      layout=cfg.objective.layout(model_cfg.family), sft=cfg.objective.sft(model_cfg.family),
                      last_block=cfg.data.last_block_rule(get_family(model_cfg.family).last_block),
                      end_of_turn_id=tokenizer.get("end_of_turn_id"), fill_id=tokenizer.get("fill_id"),
                      share_prompt=cfg.data.share_prompt)
    if cfg.data.packing:
        check_pairs_fit(dataset, rows, cfg)
    order = DataOrder(len(dataset), cfg.train.global_batch_size, cfg.train.seed)
    run = Run(cfg, runtime, model_cfg, dataset, rows, order, torch.bfloat16 if bf16 else torch.float32)
    if cfg.scheduler.order == RevealOrder.REF_CONFIDENCE:
        run.rows = dataclasses.replace(rows, confidence=ConfidenceTable(cfg.data.ref_confidence, confidence_key(run)))
    return run


def check_pairs_fit(dataset: PreferenceDataset, rows: RowBuilder, cfg: TrainConfig) -> None:
    """Refuse before training a packing budget below the longest pair's rows (objectives with a
    fixed number of one-pass rows per sequence; exact_trajectory's and per-block rows' count depends
    on the trajectory and is checked when a pair is packed)."""
    per_sequence = {Objective.VRPO: cfg.objective.vrpo_samples,
                    Objective.EXACT_TRAJECTORY: None}.get(cfg.objective.name, 1)
    if per_sequence is None or rows.layout == ScoringLayout.PER_BLOCK or len(dataset) == 0:
        return
    spec = rows.model.diffusion
    a, b, c, d = (dataset.bounds[:, i].astype(np.int64) for i in range(4))
    prompt = b - a
    start = noisy_start(prompt, spec.block_size, spec.origin(prompt))

    def sample(first: np.ndarray, end: np.ndarray) -> np.ndarray:  # [z~ ; y0] of one sequence, its last block completed
        length = end - first
        completes = (rows.last_block != LastBlock.CUT) & (dataset.steps is None) & (length > 0)
        completes &= np.asarray(dataset.tokens[np.maximum(end - 1, 0)]) == rows.end_of_turn_id
        n = prompt + length + np.where(completes, spec.to_block_end(prompt, prompt + length), 0)
        return 2 * n - start

    tokens = per_sequence * (sample(b, c) + (sample(c, d) if cfg.objective.name.is_preference else 0))
    if rows.share_prompt:  # the pair's samples see one copy of it
        samples = per_sequence * (2 if cfg.objective.name.is_preference else 1)
        tokens -= (samples - 1) * shared_prompt_length(prompt, spec)
    longest = int(tokens.argmax())
    if tokens[longest] > cfg.train.micro_batch_tokens:
        raise ValueError(f"train.micro_batch_tokens={cfg.train.micro_batch_tokens} is smaller than pair {longest} of "
                         f"{cfg.data.path}, whose rows take {int(tokens[longest])} tokens together (data.packing=true "
                         "keeps a pair's rows in one row)")


def build_policy(run: Run):
    seed = None if run.cfg.model.load else run.cfg.train.seed  # random weights: the same at every layout
    model = build_model(run.model_config, params_dtype=run.dtype, recompute=run.cfg.train.recompute, seed=seed,
                        pg_collection=run.runtime.pg_collection)  # the reference never recomputes
    model.config.calculate_per_token_loss = True  # losses are sums; gradients divided by global pairs
    if run.cfg.model.load:
        load_model(model, run.cfg.model.load)
    return model


def reference_weights_id(run: Run) -> str:
    """Layout-independent identity of the reference weights (collective: every rank calls it).

    Rank 0 hashes the checkpoint's files once and shares the digest, rather than every rank
    reading the whole checkpoint."""
    source = run.cfg.reference.load or run.cfg.model.load
    if not source:
        return f"random-init(seed={run.cfg.train.seed})"  # the same weights at every layout (models/init.py)
    digest = [folder_digest(source) if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(digest, src=0)
    return f"sha256:{digest[0]}"


def reference_key(run: Run) -> dict:
    """Everything that decides the reference sums of a sample (collective: every rank calls it)."""
    model = run.model_config.to_dict()
    model.pop("attention_backend")
    return {
        "data_fingerprint": run.dataset.fingerprint,
        "seed": run.cfg.train.seed,
        "scheduler": {k: getattr(v, "value", v) for k, v in dataclasses.asdict(run.cfg.scheduler).items()},
        "objective": run.cfg.objective.name.value,
        "vrpo_samples": run.cfg.objective.vrpo_samples if run.cfg.objective.name == Objective.VRPO else None,
        "scoring": run.rows.layout.value,
        "last_block": run.rows.last_block.value,
        "model": model,
        "reference_weights": reference_weights_id(run),
    }


def confidence_key(run: Run) -> dict:
    """What decides the reference confidences: not the seed, scheduler or objective."""
    key = reference_key(run)
    for decided_elsewhere in ("seed", "scheduler", "objective", "vrpo_samples", "scoring"):
        key.pop(decided_elsewhere)
    return key


def build_reference_model(run: Run, policy=None):
    """The frozen reference: `reference.load`, else the policy's initial weights."""
    loads = run.cfg.reference.load or policy is not None or run.cfg.model.load
    model = build_model(run.model_config, params_dtype=run.dtype, seed=None if loads else run.cfg.train.seed,
                        pg_collection=run.runtime.pg_collection)
    if run.cfg.reference.load:
        load_model(model, run.cfg.reference.load)
    elif policy is not None:
        model.load_state_dict(policy.state_dict())
    elif run.cfg.model.load:
        load_model(model, run.cfg.model.load)
    return model


def build_reference(run: Run, policy):
    if run.cfg.reference.mode == ReferenceMode.PRECOMPUTED:
        return PrecomputedReference(run.cfg.reference.cache, reference_key(run))
    return ResidentReference(build_reference_model(run, policy))
