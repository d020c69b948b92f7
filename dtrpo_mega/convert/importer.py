"""Hugging Face checkpoint -> megatron-core dist checkpoint, streamed layer by layer.

Every check runs before anything is written: the format and the TP/PP layout against the config,
then every expected HF tensor's presence and shape. The checkpoint is then written chunk by
chunk, each made from its HF tensors when DCP's writer asks for it (see `dist_io`).
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import torch

from dtrpo_mega.checkpoint.model import write_model_config
from dtrpo_mega.convert import dist_io
from dtrpo_mega.convert.formats import SourceFormat, detect, dllm_config, get_format
from dtrpo_mega.convert.hf_io import TORCH_DTYPES, HFCheckpoint, dtype_name
from dtrpo_mega.convert.mapping import Mapping, hf_shapes
from dtrpo_mega.convert.megatron_layout import Item, storage_chunks, stream_groups
from dtrpo_mega.convert.name_maps import name_map
from dtrpo_mega.checkpoint.integrity import write_manifest
from dtrpo_mega.models.config import DLLMConfig

INV_FREQ_SUFFIX = "rotary_emb.inv_freq"


@dataclasses.dataclass
class ImportPlan:
    """Everything decided and checked before writing."""

    hf: HFCheckpoint
    fmt: SourceFormat
    cfg: DLLMConfig  # with padded_vocab_size fixed and extra["source"] filled
    maps: dict[str, Mapping]
    dtype: torch.dtype  # dtype of the stored megatron tensors
    tp: int


def expected_hf_tensors(cfg: DLLMConfig, maps: dict[str, Mapping]) -> dict[str, tuple[int, ...]]:
    """HF name -> shape, for every HF tensor the model's name map reads, in checkpoint order."""
    expected = {}
    for group in stream_groups(cfg):
        for item in group:
            mapping = maps[item.tensor.name]
            expected.update(zip(mapping.hf_names(item), hf_shapes(mapping, item.tensor.shape, cfg)))
    return expected


def _inv_freq(hf: HFCheckpoint, cfg: DLLMConfig) -> dict:
    """Saved rotary `inv_freq` buffers (older checkpoints): checked against the config's plain
    rope, not imported (rope is computed in the attention), kept verbatim for export."""
    names = sorted(n for n in hf.tensors if n.endswith(INV_FREQ_SUFFIX))
    if not names:
        return {}
    values = [hf.read(n) for n in names]
    if any(not torch.equal(v, values[0]) for v in values):
        raise ValueError(f"rotary inv_freq buffers differ between layers ({names})")
    plain = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    if values[0].shape != plain.shape or not torch.allclose(values[0].float(), plain, rtol=1e-3):
        raise ValueError(
            f"tensor {names[0]} {tuple(values[0].shape)} is not the plain rope of rope_theta={cfg.rope_theta}, "
            f"head_dim={cfg.head_dim} (shape {tuple(plain.shape)}); scaled rope is not supported"
        )
    return {"names": names, "values": values[0].tolist(), "dtype": dtype_name(values[0].dtype)}


def _check_tensors(hf: HFCheckpoint, fmt: SourceFormat, cfg: DLLMConfig, expected: dict) -> dict[str, str]:
    """Raise on missing, mis-shaped or unused tensors; returns aliases (a tied model's saved head)."""
    problems = [
        f"tensor {n} is missing (expected shape {s})" if n not in hf.tensors
        else f"tensor {n}: checkpoint shape {hf.tensors[n].shape}, config.json implies {s}"
        for n, s in expected.items() if n not in hf.tensors or hf.tensors[n].shape != s
    ]
    head, embed = fmt.weight_names["output_layer.weight"][0], fmt.weight_names["embedding.word_embeddings.weight"][0]
    aliases = {head: embed} if cfg.tie_embeddings and head in hf.tensors else {}
    unused = set(hf.tensors) - set(expected) - set(aliases)
    problems += [f"tensor {n} {hf.tensors[n].shape} is not used by the {fmt.name} mapping"
                 for n in sorted(unused) if not n.endswith(INV_FREQ_SUFFIX)]
    if problems:
        raise ValueError(f"{hf.path} does not match its config.json ({fmt.name}):\n  " + "\n  ".join(problems))
    if aliases and not torch.equal(hf.read(head), hf.read(embed)):
        raise ValueError(f"config.json ties the embeddings but {head} differs from {embed}")
    return aliases


def plan_import(hf_dir: str | Path, family: str = "auto", tp: int = 1, pp: int = 1, dtype: str = "auto",
                dllm_family: str | None = None, mask_token_id: int | None = None, log=print) -> ImportPlan:
    """Read and check everything an import needs; raises with a clear message on any problem."""
    if dtype != "auto" and dtype not in TORCH_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bf16, fp16 or fp32")
    hf = HFCheckpoint(hf_dir)
    if family == "auto":
        fmt, reason = detect(hf.config, hf.config_file)
        log(f"detected source format {fmt.name!r} from {reason}")
    else:
        fmt = get_format(family)
    cfg = dllm_config(fmt, hf.config, dllm_family, mask_token_id, where=hf.config_file)
    cfg.check_parallel(tp, pp)  # any EP loads the checkpoint: experts are stored whole, one key per layer
    cfg = dataclasses.replace(cfg, padded_vocab_size=cfg.padded_vocab(tp))
    maps = name_map(fmt, cfg)
    expected = expected_hf_tensors(cfg, maps)
    aliases = _check_tensors(hf, fmt, cfg, expected)

    dtypes = Counter(hf.tensors[n].dtype for n in expected)
    source_dtype = dtypes.most_common(1)[0][0]
    if dtype != "auto":
        stored = TORCH_DTYPES[dtype]
    else:  # the source's; float32 holds a mix of bf16/fp16/fp32 tensors exactly
        stored = source_dtype if len(dtypes) == 1 else torch.float32
    source = {
        "format": fmt.name, "dir": str(hf.path.resolve()), "config": hf.config, "dtype": dtype_name(source_dtype),
        "dtype_overrides": {n: dtype_name(hf.tensors[n].dtype) for n in expected
                            if hf.tensors[n].dtype != source_dtype},
        "aliases": aliases, "inv_freq": _inv_freq(hf, cfg),
    }
    cfg = dataclasses.replace(cfg, extra={**cfg.extra, "source": source})
    return ImportPlan(hf, fmt, cfg, maps, stored, tp)


def run_import(plan: ImportPlan, out_dir: str | Path) -> None:
    """Write the megatron checkpoint, its `dtrpo_model.json` and its checksums (one process)."""

    def produce(item: Item) -> torch.Tensor:
        mapping = plan.maps[item.tensor.name]
        return mapping.to_megatron([plan.hf.read(n) for n in mapping.hf_names(item)], plan.cfg)

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    dist_io.write_checkpoint(out_dir, storage_chunks(plan.cfg, plan.tp), plan.cfg.num_layers, plan.dtype, produce)
    write_model_config(plan.cfg, out_dir)
    write_manifest(out_dir)


def import_hf(hf_dir: str | Path, out_dir: str | Path, log=print, **options) -> DLLMConfig:
    """Convert a Hugging Face checkpoint folder into a dtrpo_mega megatron checkpoint."""
    plan = plan_import(hf_dir, log=log, **options)
    log(f"importing {plan.fmt.name} as family {plan.cfg.family!r}: {plan.cfg.num_layers} layers, vocabulary "
        f"{plan.cfg.vocab_size} padded to {plan.cfg.padded_vocab_size} (TP={plan.tp}), stored as "
        f"{dtype_name(plan.dtype)}")
    run_import(plan, out_dir)
    return plan.cfg
