"""Backfill: the Parquet tile layout written by replay, point-in-time training sets, parity.

``layout`` is the on-disk contract; ``training_set`` joins a spine to tiles (or raw rows for
latest-value features) with the online reader's merge; ``labelled`` builds a spine from the
events and labels topics.
"""

from backfill import layout
from backfill.errors import BackfillError, PlanMismatchError, SourceError, SpineError, TileLayoutError
from backfill.labelled import LabelledSpine, labelled_spine
from backfill.training_set import iter_training_set, training_set, write_training_set
from backfill.parity import ParityError
from backfill.parity import check as parity_check

__all__ = [
    "training_set",
    "labelled_spine",
    "LabelledSpine",
    "iter_training_set",
    "write_training_set",
    "layout",
    "BackfillError",
    "TileLayoutError",
    "PlanMismatchError",
    "SpineError",
    "SourceError",
    "parity_check",
    "ParityError",
]
