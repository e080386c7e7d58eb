"""What the Data page shows: a pipeline's lake partitions, their quarantined rows and the days missing."""

from __future__ import annotations

from datetime import date, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


class PartitionRow(BaseModel):
    ds: str
    rows: int | None
    quarantined: int
    sha256: str | None
    reasons: dict[str, int]


class LakePage(BaseModel):
    pipeline: str
    root: str
    partitions: list[PartitionRow]
    missing: list[str] = Field(
        default_factory=list, description="days between the first and last partition without one"
    )


def lake_page(pipeline: str, spec: PipelineSpec) -> LakePage:
    from freestack.ingest.core import lake_summary

    rows = [PartitionRow(**p) for p in lake_summary(spec)]
    missing: list[str] = []
    if rows:
        have = {r.ds for r in rows}
        day, last = date.fromisoformat(rows[0].ds), date.fromisoformat(rows[-1].ds)
        while day <= last:
            if day.isoformat() not in have:
                missing.append(day.isoformat())
            day += timedelta(days=1)
    return LakePage(pipeline=pipeline, root=str(spec.root), partitions=rows, missing=missing)


__all__ = [
    "LakePage",
    "PartitionRow",
    "lake_page",
]
