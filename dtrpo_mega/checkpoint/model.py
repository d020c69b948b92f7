"""Model weights in megatron-core dist checkpoints (torch_dist), loadable at any TP/PP layout.

A checkpoint folder holds megatron-core's files plus `dtrpo_model.json`, the model's
`DLLMConfig` (with `padded_vocab_size` fixed, so every later TP that divides it loads the same
tensors); `extra["source"]` carries what an export to Hugging Face needs. Only tensors are
saved: `_extra_state` objects (empty for the local spec, FP8 metadata for Transformer Engine)
are not model weights and are left out on save and on load.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch.distributed as dist
from torch import nn

from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory

from dtrpo_mega.compat import write_common_state_file
from dtrpo_mega.checkpoint.integrity import reading, verify_manifest, write_manifest, writing
from dtrpo_mega.models.config import DLLMConfig
from dtrpo_mega.parallel.lifetime import tie_children_to_this_process
from dtrpo_mega.checkpoint.safe_pickle import install as restrict_metadata_unpickling

restrict_metadata_unpickling()
MODEL_CONFIG_FILE = "dtrpo_model.json"


def write_model_config(cfg: DLLMConfig, ckpt_dir: str | Path) -> None:
    if cfg.padded_vocab_size is None:
        raise ValueError("fix padded_vocab_size before writing a checkpoint config")
    path = Path(ckpt_dir) / MODEL_CONFIG_FILE
    with writing(path):
        path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def read_model_config(ckpt_dir: str | Path) -> DLLMConfig:
    path = Path(ckpt_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a dtrpo_mega model checkpoint")
    try:
        return DLLMConfig.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: not a valid model config ({err})") from None


def _chunks(model) -> list[nn.Module]:
    return list(model) if isinstance(model, (list, tuple)) else [model]


def sharded_weights(model) -> dict:
    """The model's sharded state dict without `_extra_state` objects (chunks keyed apart), its
    replicas told apart over the model's own DP x CP group."""
    chunks = _chunks(model)
    out = {}
    for i, chunk in enumerate(chunks):
        for name, value in chunk.sharded_state_dict(metadata={"dp_cp_group": chunk.pg_collection.dp_cp}).items():
            if not isinstance(value, ShardedObject):
                out[f"chunk{i}.{name}" if len(chunks) > 1 else name] = value
    return out


def save_model(model, ckpt_dir: str | Path, cfg: DLLMConfig | None = None) -> None:
    """Save the weights of this rank's model chunk(s); every rank calls it."""
    ckpt_dir = Path(ckpt_dir)
    first = _chunks(model)[0]
    cfg = cfg or first.dllm_config
    cfg = dataclasses.replace(cfg, padded_vocab_size=cfg.padded_vocab(first.pg_collection.tp.size()))
    if dist.get_rank() == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    save_sharded(sharded_weights(model), ckpt_dir)
    if dist.get_rank() == 0:
        write_model_config(cfg, ckpt_dir)
    dist.barrier()
    write_manifest(ckpt_dir)


def save_sharded(sharded: dict, ckpt_dir: Path) -> None:
    """`dist_checkpointing.save` into an existing folder, loadable by every tested megatron-core
    version (`compat.write_common_state_file`); every rank calls it."""
    tie_children_to_this_process()
    with writing(ckpt_dir):
        dist_checkpointing.save(sharded, str(ckpt_dir))
        if dist.get_rank() == 0:
            write_common_state_file(ckpt_dir)
    dist.barrier()


def global_shapes(sharded: dict) -> dict[str, tuple[int, ...]]:
    """Sharded key -> global shape of every tensor of a sharded state dict."""
    shapes = {}
    for value in sharded.values():
        pieces = value.build() if isinstance(value, ShardedTensorFactory) else [value]
        for piece in pieces:
            if isinstance(piece, ShardedTensor):
                shapes[piece.key] = tuple(piece.global_shape)
    return shapes


def check_compatible(sharded: dict, ckpt_dir: str | Path) -> None:
    """Raise, naming each tensor and both shapes, if the checkpoint does not fit the model."""
    stored = {k: tuple(v.global_shape) for k, v in dist_checkpointing.load_tensors_metadata(str(ckpt_dir)).items()}
    problems = []
    for key, shape in sorted(global_shapes(sharded).items()):
        if key not in stored:
            problems.append(f"tensor {key} (model shape {shape}) is missing from the checkpoint")
        elif stored[key] != shape:
            problems.append(f"tensor {key}: checkpoint shape {stored[key]}, model shape {shape}")
    if problems:
        raise ValueError(f"checkpoint {ckpt_dir} does not fit the model:\n  " + "\n  ".join(problems))


def load_model(model, ckpt_dir: str | Path, verify: bool = True) -> None:
    """Load weights saved at any TP/PP layout into this rank's model chunk(s), their checksums
    verified first unless `verify` is false; every rank calls it."""
    if verify:
        verify_manifest(ckpt_dir)
    sharded = sharded_weights(model)
    check_compatible(sharded, ckpt_dir)
    with reading(ckpt_dir, "checkpoint"):
        loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    chunks = _chunks(model)
    for i, chunk in enumerate(chunks):
        prefix = f"chunk{i}." if len(chunks) > 1 else ""
        own = {k[len(prefix):]: v for k, v in loaded.items() if k.startswith(prefix)}
        result = chunk.load_state_dict(own, strict=False)
        missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
        if missing or result.unexpected_keys:
            raise RuntimeError(f"loading {ckpt_dir}: missing {missing}, unexpected {result.unexpected_keys}")
