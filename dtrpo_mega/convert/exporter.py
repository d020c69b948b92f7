"""dtrpo_mega megatron checkpoint -> Hugging Face checkpoint folder, streamed layer by layer.

Needs nothing but the checkpoint: `dtrpo_model.json` has the model config and, for imported
checkpoints, the source (its config.json, written back verbatim, its format and dtypes, saved
rotary buffers, and its folder, whose tokenizer and remote-code files are copied when it still
exists). A checkpoint born in training gets a plain transformers config (see `formats`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dtrpo_mega.checkpoint.integrity import verify_manifest
from dtrpo_mega.checkpoint.model import read_model_config
from dtrpo_mega.convert import dist_io
from dtrpo_mega.convert.formats import SourceFormat, get_format, synthesized_hf_config
from dtrpo_mega.convert.hf_io import TORCH_DTYPES, PlannedTensor, SafetensorsWriter, dtype_name, parse_size
from dtrpo_mega.convert.mapping import Mapping
from dtrpo_mega.convert.megatron_layout import Item, stream_groups
from dtrpo_mega.convert.name_maps import name_map
from dtrpo_mega.models.config import DLLMConfig

# Files copied from the source folder: tokenizer, generation settings, remote code.
COPIED = ("tokenizer*", "vocab*", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template*",
          "generation_config.json", "*.tiktoken", "*.model", "*.py")


@dataclass(frozen=True)
class Target:
    """The Hugging Face folder to write: format, config.json, dtypes and source-only tensors."""

    fmt: SourceFormat
    config: dict
    dtype: torch.dtype
    dtype_overrides: dict[str, torch.dtype]
    copies: dict[str, str]  # HF name -> a second name saved with the same values (a tied model's head)
    extra: list[tuple[str, Tensor]]  # saved rotary inv_freq buffers
    source_dir: str | None

    @classmethod
    def of(cls, cfg: DLLMConfig, stored_dtype: torch.dtype) -> "Target":
        source = cfg.extra.get("source")
        if not source:
            fmt, config = synthesized_hf_config(cfg, dtype_name(stored_dtype))
            return cls(fmt, config, stored_dtype, {}, {}, [], None)
        inv_freq = source["inv_freq"]
        extra = [(n, torch.tensor(inv_freq["values"], dtype=TORCH_DTYPES[inv_freq["dtype"]]))
                 for n in inv_freq.get("names", [])]
        return cls(
            get_format(source["format"]), source["config"], TORCH_DTYPES[source["dtype"]],
            {n: TORCH_DTYPES[d] for n, d in source["dtype_overrides"].items()},
            {embed: head for head, embed in source["aliases"].items()}, extra, source["dir"],
        )

    def outputs(self, name: str, value: Tensor) -> list[tuple[str, Tensor]]:
        value = value.to(self.dtype_overrides.get(name, self.dtype))
        return [(name, value)] + ([(self.copies[name], value)] if name in self.copies else [])


def _hf_tensors(cfg: DLLMConfig, maps: dict[str, Mapping], target: Target, group: list[Item],
                loaded: dict[Item, Tensor]) -> Iterator[tuple[str, Tensor]]:
    for item in group:
        mapping = maps[item.tensor.name]
        for name, value in zip(mapping.hf_names(item), mapping.to_hf(loaded[item], cfg)):
            yield from target.outputs(name, value)


def _check_stored(cfg: DLLMConfig, stored: dict, ckpt_dir: Path) -> None:
    problems = []
    shapes = {item.key: item.tensor.global_shape(cfg.num_layers) for group in stream_groups(cfg) for item in group}
    for key, shape in shapes.items():
        if key not in stored:
            problems.append(f"tensor {key} (shape {shape}) is missing")
        elif stored[key][0] != shape:
            problems.append(f"tensor {key}: checkpoint shape {stored[key][0]}, the model config implies {shape}")
    if problems:
        raise ValueError(f"{ckpt_dir} does not match its {ckpt_dir / 'dtrpo_model.json'}:\n  " + "\n  ".join(problems))


def export_hf(ckpt_dir: str | Path, out_dir: str | Path, max_shard_size: str = "5GB", log=print,
              verify: bool = True) -> Path:
    """Write config.json, safetensors shards with their index, and the source's tokenizer files,
    after checking every file of the checkpoint against its checksums (unless `verify` is false)."""
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    if verify:
        verify_manifest(ckpt_dir)
    cfg = read_model_config(ckpt_dir)
    stored = dist_io.stored_tensors(ckpt_dir)
    _check_stored(cfg, stored, ckpt_dir)
    target = Target.of(cfg, stored["embedding.word_embeddings.weight"][1])
    if target.source_dir is None:
        log(f"no source recorded in {ckpt_dir}: writing a plain {target.fmt.architectures[0]} config.json")
    maps = name_map(target.fmt, cfg)
    groups = stream_groups(cfg)

    meta = lambda group: {item: torch.empty(item.tensor.shape, device="meta") for item in group}  # noqa: E731
    plan = [PlannedTensor(n, tuple(v.shape), v.dtype)
            for g in groups for n, v in _hf_tensors(cfg, maps, target, g, meta(g))]
    plan += [PlannedTensor(n, tuple(v.shape), v.dtype) for n, v in target.extra]
    writer = SafetensorsWriter(out_dir, plan, parse_size(max_shard_size))
    for group in groups:
        loaded = dist_io.read_tensors(ckpt_dir, group, stored)
        for name, value in _hf_tensors(cfg, maps, target, group, loaded):
            writer.write(name, value)
        del loaded
    for name, value in target.extra:
        writer.write(name, value)
    writer.close()

    (out_dir / "config.json").write_text(json.dumps(target.config, indent=2) + "\n")
    _copy_source_files(target.source_dir, out_dir, log)
    log(f"exported {len(plan)} tensors in {len(writer.shards)} shard(s) to {out_dir}")
    return out_dir


def _copy_source_files(source_dir: str | None, out_dir: Path, log) -> None:
    if source_dir is None:
        return
    src = Path(source_dir)
    if not src.is_dir():
        log(f"source folder {src} is gone: tokenizer and remote-code files are not copied")
        return
    for pattern in COPIED:
        for path in src.glob(pattern):
            if path.is_file() and not (out_dir / path.name).exists():
                shutil.copy2(path, out_dir / path.name)
