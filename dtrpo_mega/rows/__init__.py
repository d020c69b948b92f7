"""The rows a model scores (`ScoredRows`) and how pairs become them (`RowBuilder`, packing)."""

from dtrpo_mega.rows.builder import RowBuilder
from dtrpo_mega.rows.confidence import ConfidenceTable
from dtrpo_mega.rows.samples import PairSamples, ScoredSample
from dtrpo_mega.rows.scored import ScoredRows

__all__ = ["ConfidenceTable", "PairSamples", "RowBuilder", "ScoredRows", "ScoredSample"]
