"""Typed training configuration: dataclasses, loaded from YAML with `section.key=value` overrides.

Every error names the setting: an unknown key lists the known ones, a bad value says what is
allowed, and cross-field checks (batch sizes vs data parallelism, ...) say which fields clash.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import yaml

from dtrpo_mega.data.config import DataConfig
from dtrpo_mega.diffusion.scoring import Objective
from dtrpo_mega.diffusion.spec import ScoringLayout, SFTConvention
from dtrpo_mega.diffusion.trajectory import RevealOrder, SchedulerConfig
from dtrpo_mega.losses.preference import LossConfig
from dtrpo_mega.models.families import family_names, get_family
from dtrpo_mega.parallel.layout import ParallelConfig
from dtrpo_mega.models.recompute import RecomputeConfig, RecomputeGranularity, RecomputeMethod


class ReferenceMode(str, Enum):
    RESIDENT = "resident"  # a frozen copy in the same parallel layout, run on the same states
    PRECOMPUTED = "precomputed"  # weighted log-prob sums from tools/precompute_reference.py


def _require(section: str, checks: dict[str, tuple[object, bool, str]]) -> None:
    """Raise naming the first setting whose check fails: {key: (value, ok, what it must be)}."""
    for key, (value, ok, must) in checks.items():
        if not ok:
            raise ValueError(f"{section}.{key}={value!r}: must be {must}")


@dataclass
class ModelSection:
    family: str = "fast_dllm_v2"
    size: str = "tiny"
    overrides: dict = field(default_factory=dict)  # any DLLMConfig field
    # a converted or trained checkpoint to start from; its dtrpo_model.json replaces family/size
    load: str | None = None

    def __post_init__(self):
        from dtrpo_mega.models.config import DLLMConfig

        if self.family not in family_names():
            raise ValueError(f"model.family={self.family!r}; choose from {family_names()}")
        known = {f.name for f in dataclasses.fields(DLLMConfig)} - {"family"}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ValueError(f"unknown model.overrides {[f'model.overrides.{k}' for k in unknown]}; DLLMConfig fields: "
                             f"{sorted(known)}")


FAMILY_DEFAULT = "family"


@dataclass
class ObjectiveSection:
    name: Objective = Objective.DTRPO
    vrpo_samples: int = 8
    scoring: str = FAMILY_DEFAULT  # family | one_pass | per_block (full-attention families only)
    sft_convention: str = FAMILY_DEFAULT  # name=sft: the family's own SFT loss, or another family's

    def __post_init__(self):
        _require("objective", {"vrpo_samples": (self.vrpo_samples, self.vrpo_samples >= 1, ">= 1")})
        if self.scoring != FAMILY_DEFAULT and self.scoring not in [s.value for s in ScoringLayout]:
            raise ValueError(f"objective.scoring={self.scoring!r}; choose from "
                             f"{[FAMILY_DEFAULT, *(s.value for s in ScoringLayout)]}")
        if self.sft_convention != FAMILY_DEFAULT and self.sft_convention not in family_names():
            raise ValueError(f"objective.sft_convention={self.sft_convention!r}; choose from "
                             f"{[FAMILY_DEFAULT, *family_names()]}")

    def layout(self, family: str) -> ScoringLayout:
        return get_family(family).scoring if self.scoring == FAMILY_DEFAULT else ScoringLayout(self.scoring)

    def sft(self, family: str) -> SFTConvention:
        return get_family(family if self.sft_convention == FAMILY_DEFAULT else self.sft_convention).sft


@dataclass
class ReferenceSection:
    mode: ReferenceMode = ReferenceMode.RESIDENT
    cache: str | None = None  # precomputed mode: the cache file
    load: str | None = None  # reference weights; None: the policy's initial weights


@dataclass
class OptimizerSection:
    lr: float = 5e-7
    min_lr: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0

    def __post_init__(self):
        _require("optimizer", {
            "lr": (self.lr, self.lr >= 0, ">= 0"),
            "min_lr": (self.min_lr, 0 <= self.min_lr <= self.lr, f"in [0, optimizer.lr={self.lr}]"),
            "warmup_steps": (self.warmup_steps, self.warmup_steps >= 0, ">= 0"),
            "weight_decay": (self.weight_decay, self.weight_decay >= 0, ">= 0"),
            "adam_beta1": (self.adam_beta1, 0 <= self.adam_beta1 < 1, "in [0, 1)"),
            "adam_beta2": (self.adam_beta2, 0 <= self.adam_beta2 < 1, "in [0, 1)"),
            "adam_eps": (self.adam_eps, self.adam_eps > 0, "> 0"),
            "clip_grad": (self.clip_grad, self.clip_grad >= 0, ">= 0 (0: no clipping)"),
        })


@dataclass
class TrainSection:
    global_batch_size: int = 8  # preference pairs per optimizer step
    micro_batch_size: int = 1  # pairs per micro-batch (chosen + rejected rows together); unpacked only
    micro_batch_tokens: int = 0  # data.packing: tokens per packed row (one row per micro-batch)
    train_steps: int = 100
    seed: int = 1234
    bf16: bool | None = None  # None: bf16 with CUDA, fp32 on CPU
    recompute_granularity: RecomputeGranularity = RecomputeGranularity.NONE  # none | selective | full
    recompute_method: RecomputeMethod = RecomputeMethod.UNIFORM  # full only: uniform | block
    recompute_num_layers: int | None = None  # full only: layers per group (uniform) or per stage (block)

    def __post_init__(self):
        _require("train", {
            "global_batch_size": (self.global_batch_size, self.global_batch_size >= 1, ">= 1"),
            "micro_batch_size": (self.micro_batch_size, self.micro_batch_size >= 1, ">= 1"),
            "micro_batch_tokens": (self.micro_batch_tokens, self.micro_batch_tokens >= 0, ">= 0"),
            "train_steps": (self.train_steps, self.train_steps >= 0, ">= 0"),
        })

    @property
    def recompute(self) -> RecomputeConfig:
        return RecomputeConfig(self.recompute_granularity, self.recompute_method, self.recompute_num_layers or 1)


@dataclass
class CheckpointSection:
    dir: str | None = None
    save_interval: int = 0  # steps; 0: only at the end and on SIGTERM
    resume: bool = True  # resume from dir's latest complete checkpoint if there is one
    verify: bool = True  # check every loaded checkpoint file against the checksums recorded at save

    def __post_init__(self):
        _require("checkpoint",
                 {"save_interval": (self.save_interval, self.save_interval >= 0, ">= 0 (0: at the end only)")})


@dataclass
class LoggingSection:
    dir: str = "runs/dtrpo"
    log_interval: int = 1
    wandb_project: str | None = None  # offline unless WANDB_API_KEY is set
    progress_bar: bool = True

    def __post_init__(self):
        _require("logging", {"log_interval": (self.log_interval, self.log_interval >= 1, ">= 1")})


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceSection = field(default_factory=ReferenceSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)

    def validate(self, world_size: int) -> None:
        """The checks across sections, at this world size (each section checked its own fields)."""
        cp = self.parallel.context_parallel_size
        dp = self.parallel.data_parallel_size(world_size)
        gbs, mbs, budget = self.train.global_batch_size, self.train.micro_batch_size, self.train.micro_batch_tokens
        if self.data.packing:
            if budget < 1:
                raise ValueError("data.packing=true needs train.micro_batch_tokens (the tokens of one packed row)")
            if cp > 1 and budget % (2 * cp):
                raise ValueError(f"train.micro_batch_tokens={budget} must be a multiple of 2 x "
                                 f"parallel.context_parallel_size={cp} (each context-parallel rank holds two equal "
                                 "chunks of every row)")
            if gbs % dp:
                raise ValueError(f"train.global_batch_size={gbs} must be a multiple of the data-parallel size {dp}")
        elif budget:
            raise ValueError(f"train.micro_batch_tokens={budget} applies only with data.packing=true (unpacked "
                             "micro-batches hold train.micro_batch_size pairs)")
        elif gbs % (mbs * dp):
            raise ValueError(f"train.global_batch_size={gbs} must be a multiple of train.micro_batch_size={mbs} x "
                             f"data-parallel size {dp}")
        if self.scheduler.order == RevealOrder.REF_CONFIDENCE and not self.data.ref_confidence:
            raise ValueError("scheduler.order=ref_confidence needs data.ref_confidence (tools/precompute_reference.py "
                             "confidence)")
        if self.reference.mode == ReferenceMode.PRECOMPUTED and not self.reference.cache:
            raise ValueError("reference.mode=precomputed needs reference.cache")
        if self.objective.name == Objective.SFT and (self.reference.mode == ReferenceMode.PRECOMPUTED
                                                     or self.scheduler.order == RevealOrder.REF_CONFIDENCE):
            raise ValueError("objective.name=sft trains without a reference: reference.mode=precomputed and "
                             "scheduler.order=ref_confidence do not apply")
        if self.objective.name == Objective.VRPO and self.objective.vrpo_samples < 1:
            raise ValueError(f"objective.vrpo_samples must be >= 1, got {self.objective.vrpo_samples}")
        self._validate_recompute()

    def _validate_recompute(self) -> None:
        """Method and layer count are full-recompute settings; elsewhere they are refused, not ignored."""
        t = self.train
        full = t.recompute_granularity == RecomputeGranularity.FULL
        if t.recompute_num_layers is not None and not full:
            raise ValueError(f"train.recompute_num_layers={t.recompute_num_layers} applies to "
                             f"train.recompute_granularity=full only (got {t.recompute_granularity.value})")
        if t.recompute_num_layers is not None and t.recompute_num_layers < 1:
            raise ValueError(f"train.recompute_num_layers must be >= 1, got {t.recompute_num_layers}")
        if t.recompute_method == RecomputeMethod.BLOCK and not full:
            raise ValueError("train.recompute_method=block applies to train.recompute_granularity=full only (got "
                             f"{t.recompute_granularity.value})")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    return value


def _coerce(value, annotation, where: str):
    """Convert a YAML / CLI value to the field's declared type, or say which setting is wrong."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or value == "null":
            return None
        return _coerce(value, options[0], where)
    try:
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return annotation(value)
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return annotation(value)
        if annotation is dict or origin is dict:
            if not isinstance(value, dict):
                raise ValueError
            return value
    except (ValueError, TypeError):
        allowed = ([e.value for e in annotation] if isinstance(annotation, type) and issubclass(annotation, Enum)
                   else getattr(annotation, "__name__", str(annotation)))
        raise ValueError(f"{where}={value!r}: expected {allowed}") from None
    return value


def build_dataclass(cls, values: dict, where: str = ""):
    """A (nested) dataclass from a mapping, each value coerced to its field's type; errors name `where.key`."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {[f'{where}.{u}'.lstrip('.') for u in unknown]}; {where or 'top level'} "
                         f"has {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        annotation = hints[name]
        key = f"{where}.{name}".lstrip(".")
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ValueError(f"{key} must be a mapping, got {value!r}")
            kwargs[name] = build_dataclass(annotation, value, key)
        else:
            kwargs[name] = _coerce(value, annotation, key)
    try:
        return cls(**kwargs)
    except ValueError as err:
        raise ValueError(f"{where}: {err}" if where and where not in str(err) else str(err)) from None


def apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} must look like section.key=value")
    key, raw = override.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ValueError(f"override {override!r}: the value of {key} is not valid YAML "
                         f"({str(err).splitlines()[0]})") from None
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """YAML file (optional) then `section.key=value` overrides, into a validated TrainConfig."""
    return load_dataclass(TrainConfig, path, overrides)


def load_dataclass(cls, path: str | Path | None = None, overrides: list[str] = ()):
    """Any config dataclass from a YAML file (optional) then `section.key=value` overrides."""
    tree = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ValueError(f"{path}: the top level must be a mapping of sections")
    for override in overrides:
        apply_override(tree, override)
    return build_dataclass(cls, tree, "")
