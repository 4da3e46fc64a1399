"""A plain markdown table of result records, for the CLI's `eval`/`evaluate` output and the demo's report.

No pandas here: the demo and the CLI print a handful of records and should not pay for the report stack.
"""
from __future__ import annotations

from collections.abc import Sequence


def format_table(records: list[dict], columns: Sequence[str]) -> str:
    """One row per record, one column per key; floats to 4 decimals, missing values empty."""
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines)
