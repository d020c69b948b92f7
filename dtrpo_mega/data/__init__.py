"""Preference data: TRL-format JSONL -> chat rendering -> tokens -> memory-mapped, fingerprinted dataset.

Offline: `build_preference_dataset` (tools/preprocess_data.py) writes a prefix. Training:
`DataConfig(path=...).open(model)` or `PreferenceDataset.open(prefix)` reads it pair by pair.
"""

from dtrpo_mega.data.chat import FAMILY_CHAT_TEMPLATES, ChatEncoder, ChatTemplate, chat_template
from dtrpo_mega.data.checks import check_vocabulary
from dtrpo_mega.data.config import DataConfig
from dtrpo_mega.data.indexed import PreferenceDataset, PreferencePair
from dtrpo_mega.data.preprocess import Overlong, PreprocessSettings, build_preference_dataset
from dtrpo_mega.data.records import Message, PreferenceRecord, read_records
from dtrpo_mega.data.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "FAMILY_CHAT_TEMPLATES", "ChatEncoder", "ChatTemplate", "DataConfig", "Message", "Overlong", "PreferenceDataset",
    "PreferencePair", "PreferenceRecord", "PreprocessSettings", "Tokenizer", "build_preference_dataset", "chat_template",
    "check_vocabulary", "load_tokenizer", "read_records",
]
