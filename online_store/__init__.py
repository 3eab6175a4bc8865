"""Redis online store: the tile writer (tiles topic -> Redis) and ``fetch`` (merge at query time).

Layout and encoding: ``online_store.keys``; monotonic writes, trimming and as_of:
``online_store.writer``; reads: ``online_store.reader``.
"""

from online_store.errors import (
    CorruptTileError,
    FetchArgumentError,
    LayoutError,
    OnlineStoreError,
    StoreUnavailableError,
)
from online_store.metrics import ReaderMetrics, WriterMetrics
from online_store.reader import FetchResult, fetch
from online_store.repo_fetch import fetch_repo
from online_store.writer import TileWriter, WriteStats, rebuild, run_writer

__all__ = [
    "fetch",
    "fetch_repo",
    "FetchResult",
    "TileWriter",
    "WriteStats",
    "run_writer",
    "rebuild",
    "WriterMetrics",
    "ReaderMetrics",
    "OnlineStoreError",
    "LayoutError",
    "FetchArgumentError",
    "StoreUnavailableError",
    "CorruptTileError",
]
