"""/data/<p>/<ds>/quarantine and /scores/<p>/<ds>/quarantine: the rows a lake partition (ingest) or a scored
day (score) rejected, a page at a time, read with pyarrow; and their JSON."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from freestack.ingest import lake
from freestack.score import published
from freestack.storage import join, to_path
from freestack.ui import shared
from freestack.ui.catalog import score_pages

router = APIRouter()
#: rows a quarantine page shows
QUARANTINE_PAGE = 100


class QuarantinePage(BaseModel):
    pipeline: str
    ds: str
    file: str | None = None
    total: int = 0
    page: int = 1
    pages: int = 1
    size: int
    columns: list[str] = []
    rows: list[dict[str, Any]] = []


def _partition(spec: Any, ds: str) -> None:
    have = lake.lake_partitions(spec)
    if ds not in have:
        shown_days = ", ".join(have[-10:]) or "none"
        raise HTTPException(
            404,
            f"{spec.name} has no published partition {ds!r} (partitions: {shown_days}"
            f"{f', and {len(have) - 10} older' if len(have) > 10 else ''})",
        )


def read_rows(f: Any, start: int, n: int) -> tuple[int, list[str], list[dict[str, Any]]]:
    """Rows ``[start, start + n)`` of a Parquet file: only the row groups that hold them are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    meta, groups, first, offset = pf.metadata, [], None, 0
    for g in range(meta.num_row_groups):
        size = meta.row_group(g).num_rows
        if offset + size > start and offset < start + n:
            groups.append(g)
            first = offset if first is None else first
        offset += size
    columns = pf.schema_arrow.names
    if not groups:
        return meta.num_rows, columns, []
    table: pa.Table = pf.read_row_groups(groups)
    return meta.num_rows, columns, table.slice(start - (first or 0), n).to_pylist()


def quarantine_page(
    pipeline: str, spec: Any, ds: str, page: int, size: int = QUARANTINE_PAGE
) -> QuarantinePage:
    """Page ``page`` (``size`` rows) of the partition's quarantined rows, read from its quarantine file."""
    _partition(spec, ds)
    q = (lake.read_manifest(spec, ds) or {}).get("quarantine")
    if not q:
        return QuarantinePage(pipeline=pipeline, ds=ds, size=size)
    return _rows_page(pipeline, ds, to_path(q["uri"]), page, size)


def _rows_page(pipeline: str, ds: str, path: Any, page: int, size: int) -> QuarantinePage:
    """Page ``page`` (``size`` rows) of the quarantine file at ``path``."""
    with path.open("rb") as f:
        total, columns, rows = read_rows(f, (page - 1) * size, size)
    pages = max(1, -(-total // size))
    if page > pages:
        raise HTTPException(404, f"{pipeline} {ds} has {total} quarantined rows: pages 1 to {pages}")
    return QuarantinePage(
        pipeline=pipeline,
        ds=ds,
        file=str(path),
        total=total,
        page=page,
        pages=pages,
        size=size,
        columns=columns,
        rows=[{k: _cell(v) for k, v in r.items()} for r in rows],
    )


def score_quarantine_page(
    pipeline: str, spec: Any, ds: str, page: int, size: int = QUARANTINE_PAGE
) -> QuarantinePage:
    """Page ``page`` of the rows of a scored day that were not scored, read from the day's ``_quarantine.parquet``."""
    have = published.score_days(spec)
    if ds not in have:
        raise HTTPException(
            404,
            f"{pipeline} has no scored day {ds!r} (days: {', '.join(have[:10]) or 'none'}"
            f"{f', and {len(have) - 10} older' if len(have) > 10 else ''})",
        )
    day = score_pages.scored_day(spec, ds)
    if day.problem:
        raise HTTPException(404, f"{pipeline} {ds} cannot be read: {day.problem}")
    if not day.rows_quarantined:
        return QuarantinePage(pipeline=pipeline, ds=ds, size=size)
    path = join(to_path(day.folder), published.QUARANTINE)
    if not path.exists():
        raise HTTPException(
            404,
            f"{pipeline} {ds}: its manifest counts {day.rows_quarantined} quarantined rows, but "
            f"{path} is gone; rescore the day to write it again",
        )
    return _rows_page(pipeline, ds, path, page, size)


def _cell(v: Any) -> Any:
    if isinstance(v, bytes):
        return f"<{len(v)} bytes>"
    return v if v is None or isinstance(v, int | float | str | bool) else str(v)


class _Asked:
    """What a quarantine route is asked, the HTML page and its JSON alike: the pipeline's day, the page
    and its size, by whom."""

    def __init__(
        self,
        pipeline: str,
        ds: str,
        page: int = Query(1, ge=1),
        size: int = Query(QUARANTINE_PAGE, ge=1, le=1000),
        user: Any = Depends(shared.user_of),
    ) -> None:
        self.pipeline, self.ds, self.page, self.size, self.user = pipeline, ds, page, size, user


Asked = Annotated[_Asked, Depends()]


@router.get("/api/data/{pipeline}/{ds}/quarantine")
async def quarantine_json(q: Asked) -> QuarantinePage:
    spec = shared.pipeline_of(q.pipeline, q.user, "ingest")[1]
    return await shared.off_loop(quarantine_page, q.pipeline, spec, q.ds, q.page, q.size)


@router.get("/data/{pipeline}/{ds}/quarantine", response_class=HTMLResponse)
async def quarantine(request: Request, q: Asked) -> HTMLResponse:
    title = f"Quarantined rows: {q.pipeline} {q.ds}"
    return shared.page(request, "quarantine.html", title=title, tab="data", q=await quarantine_json(q))


def _score_spec(pipeline: str, user: Any) -> Any:
    _, spec = shared.pipeline_of(pipeline, user, "score")
    if spec.score is None:
        raise HTTPException(404, f"pipeline {pipeline!r} has no score: block, so no scores")
    return spec


@router.get("/api/scores/{pipeline}/{ds}/quarantine")
async def score_quarantine_json(q: Asked) -> QuarantinePage:
    spec = _score_spec(q.pipeline, q.user)
    return await shared.off_loop(score_quarantine_page, q.pipeline, spec, q.ds, q.page, q.size)


@router.get("/scores/{pipeline}/{ds}/quarantine", response_class=HTMLResponse)
async def score_quarantine(request: Request, q: Asked) -> HTMLResponse:
    return shared.page(
        request,
        "quarantine.html",
        title=f"Rows not scored: {q.pipeline} {q.ds}",
        tab="scores",
        q=await score_quarantine_json(q),
        back=(f"/scores/{q.pipeline}#ds-{q.ds}", f"the {q.pipeline} scores"),
        what="day",
        about="Each kept its source file, its values as text and the reason it was not scored.",
    )


__all__ = [
    "QUARANTINE_PAGE",
    "QuarantinePage",
    "quarantine_page",
    "read_rows",
    "router",
    "score_quarantine_page",
]
