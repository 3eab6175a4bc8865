"""Stable feature names: ``<column>_<op>_<window>`` with the window in its canonical compact form.

Names are part of the contract (training-set columns, model inputs, Redis fields), so they are
computed in one place and only from semantic inputs.
"""

from __future__ import annotations

import re

from streamjobs.errors import DefinitionError
from streamjobs.windows import format_duration

__all__ = ["IDENTIFIER", "check_identifier", "aggregation_name", "latest_name"]

#: Names of views, entities and features: safe in SQL, Redis keys, Parquet and Python.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str, what: str) -> str:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise DefinitionError(f"{what} {name!r} is not a valid name; use letters, digits and '_' (not first digit)")
    return name


def aggregation_name(column: str, op: str, window_ms: int, n_windows: int, name: str | None = None) -> str:
    """Name of one (aggregation, window).

    * no ``name``: ``amount_sum_1h`` (window via :func:`format_duration`: 3600000 -> '1h', 86400000 -> '1d');
    * ``name`` with placeholders ``{column}``, ``{op}``, ``{window}``: formatted;
    * plain ``name`` and one window: used verbatim; with several windows: a prefix, ``txn_count_10m``.
      Put ``{window}`` in the template to keep names stable when windows are added.
    """
    window = format_duration(window_ms)
    if name is None:
        return f"{column}_{op}_{window}"
    if "{" in name:
        try:
            return name.format(column=column, op=op, window=window)
        except (KeyError, IndexError, ValueError) as exc:
            raise DefinitionError(
                f"name template {name!r} is invalid ({exc}); use only {{column}}, {{op}} and {{window}}"
            ) from None
    return name if n_windows == 1 else f"{name}_{window}"


def latest_name(column: str, name: str | None = None) -> str:
    """``<column>_latest`` unless named."""
    return name if name is not None else f"{column}_latest"
