"""Preference data: TRL-format JSONL -> chat rendering -> tokens -> memory-mapped, fingerprinted dataset.

Offline: `build_preference_dataset` (`dtrpo preprocess`) writes a prefix. Training:
`DataConfig(path=...).open(model)` or `PreferenceDataset.open(prefix)` reads it pair by pair.
"""

from dtrpo_mega.data.chat import ChatEncoder
from dtrpo_mega.data.checks import check_vocabulary
from dtrpo_mega.data.config import DataConfig
from dtrpo_mega.data.indexed import PreferenceDataset, PreferencePair
from dtrpo_mega.data.preprocess import Overlong, PreprocessSettings, build_preference_dataset
from dtrpo_mega.data.records import Message, PreferenceRecord, read_records
from dtrpo_mega.data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "ChatEncoder", "DataConfig", "Message", "Overlong", "PreferenceDataset",
    "PreferencePair", "PreferenceRecord", "PreprocessSettings", "Tokenizer", "build_preference_dataset",
    "check_vocabulary", "load_tokenizer", "read_records",
]
