"""Errors of the scoring consumer, and the dead-letter reason codes it writes.

Raised errors are configuration or infrastructure problems (one line naming the fix; the CLI
exits 2). Bad *data* is never raised: it goes to the DLQ with one of ``DLQ_REASONS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from headwater.errors import HeadwaterError
from schemas.errors import DECODE_REASONS

__all__ = ["ScoringError", "ScoreConfigError", "DeliveryError", "DLQ_REASONS", "VALIDATE_REASONS"]

#: Reasons found after a successful decode (stage "validate").
VALIDATE_REASONS: tuple[str, ...] = ("missing_entity_key", "missing_event_id", "bad_event_time")
#: Every reason the consumer writes to the DLQ: decode (stage "decode"), validate, and
#: ``model_error`` (stage "score": the production model raised, failing the batch, or returned a
#: non-finite score for the row).
DLQ_REASONS: tuple[str, ...] = (*DECODE_REASONS, *VALIDATE_REASONS, "model_error")


class ScoringError(HeadwaterError):
    """Root of every error the scoring consumer raises on purpose."""


class ScoreConfigError(ScoringError):
    """Invalid consumer settings or a model that cannot score this repository's features."""


class DeliveryError(ScoringError):
    """Outputs of a batch were not acknowledged by Kafka; the batch is rewound and retried."""

    def __init__(self, message: str, errors: Sequence[Any] = ()) -> None:
        super().__init__(message)
        self.errors = list(errors)  # the KafkaErrors of the failed deliveries
