"""Checkpoint conversion: Hugging Face <-> megatron-core dist checkpoints, for every family."""

from dtrpo_mega.convert.exporter import export_hf
from dtrpo_mega.convert.importer import import_hf
from dtrpo_mega.convert.roundtrip import compare_folders, roundtrip

__all__ = ["export_hf", "import_hf", "roundtrip", "compare_folders"]
