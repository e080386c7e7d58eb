"""What the Scores pages show: a pipeline's scored days, a page at a time, each day's classes or values
and its failure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from freestack.score import published
from freestack.ui.catalog.common import parallel

if TYPE_CHECKING:
    from freestack.spec import PipelineSpec


#: days a scores page lists (the overview lists :data:`SCORES_OVERVIEW` per pipeline, linking to the rest)
SCORES_PAGE, SCORES_OVERVIEW = 100, 30
#: the most predicted classes a day's row and the predictions chart draw one by one (the JSON has every class)
SHOWN_CLASSES = 12


class ClassCount(BaseModel):
    label: str
    rows: int
    share: float = Field(description="of the day's scored rows")


class ValueStats(BaseModel):
    """A regression's predicted values over one day."""

    count: int
    min: float | None
    mean: float | None
    max: float | None


class ScoreFailure(BaseModel):
    error: str = Field(description="why the day's last run failed, as its task said")
    task: str | None = Field(None, description="plan or score")
    failed_at: str | None = None
    dag_id: str | None = None
    run_id: str | None = None


class ScoredDay(BaseModel):
    ds: str
    folder: str = Field(description="the day's folder: part.parquet, _manifest.json, _quarantine.parquet")
    version: str | None = None
    version_uri: str | None = None
    task: str | None = Field(None, description="classification or regression")
    rows_in: int | None = None
    rows_scored: int | None = None
    rows_quarantined: int = 0
    classes: list[ClassCount] = Field([], description="classification: rows per predicted class, by label")
    values: ValueStats | None = Field(None, description="regression: the predicted values' min, mean and max")
    inputs: list[dict[str, Any]] = Field([], description="the files scored: uri, sha256, size, rows")
    scored_at: str | None = None
    dag_id: str | None = None
    run_id: str | None = None
    problem: str | None = Field(
        None, description="why the day cannot be read (then only ds and folder are known)"
    )
    failed: ScoreFailure | None = Field(
        None, description="the day's last run failed (after the scores shown, if any)"
    )

    def shown_classes(self) -> list[ClassCount]:
        """The :data:`SHOWN_CLASSES` most predicted classes, in label order."""
        top = sorted(self.classes, key=lambda c: -c.rows)[:SHOWN_CLASSES]
        return [c for c in self.classes if c in top]


class ScoresPage(BaseModel):
    pipeline: str
    model: str
    folder: str = Field(description="where the days' folders are")
    version: str = Field(
        description="what score.version asks for: an alias (resolved by each run) or a version"
    )
    schedule: str
    total: int = Field(description="days scored (folders found)")
    page: int
    pages: int
    days: list[ScoredDay] = Field(description="this page's days, newest first")
    figure: str | None = Field(
        None, exclude=True, description="predictions over the days (Plotly JSON); not in the API"
    )


def _label_order(label: str) -> tuple[int, float, str]:
    """Numbers in their order ("2" before "10"), then the other labels as text."""
    try:
        return 0, float(label), label
    except ValueError:
        return 1, 0.0, label


def _classes(predictions: dict[str, Any]) -> list[ClassCount]:
    counts = {str(k): int(v) for k, v in predictions.items()}
    total = sum(counts.values()) or 1
    return [
        ClassCount(label=k, rows=counts[k], share=round(counts[k] / total, 4))
        for k in sorted(counts, key=_label_order)
    ]


def _values(p: dict[str, Any]) -> ValueStats:
    n = int(p.get("count") or 0)
    return ValueStats(
        count=n,
        min=p.get("min") if n else None,
        mean=p["sum"] / n if n else None,
        max=p.get("max") if n else None,
    )


def _day_of(ds: str, folder: str, m: dict[str, Any]) -> ScoredDay:
    """A day's row from its manifest (KeyError, TypeError... when it is not a scores manifest)."""
    missing = [k for k in ("version", "rows_scored") if m.get(k) is None]
    if missing:
        raise published.UnreadableScores(f"the manifest in the footer has no {' and no '.join(missing)}")
    run, preds, regression = m.get("run") or {}, m.get("predictions") or {}, m.get("task") == "regression"
    return ScoredDay(
        ds=ds,
        folder=folder,
        version=m["version"],
        version_uri=m.get("version_uri"),
        task=m.get("task"),
        rows_in=m.get("rows_in"),
        rows_scored=m["rows_scored"],
        rows_quarantined=m.get("rows_quarantined") or 0,
        classes=[] if regression else _classes(preds),
        values=_values(preds) if regression and preds else None,
        inputs=m.get("inputs") or [],
        scored_at=m.get("scored_at"),
        dag_id=run.get("dag_id"),
        run_id=run.get("run_id"),
    )


def scored_day(spec: PipelineSpec, ds: str) -> ScoredDay:
    """One scored day from the footer of its part; a day that cannot be read says why (``problem``) and
    how to repair it, instead of failing the page."""
    folder = published.output_dir(spec, ds)
    failed = _failure(published.read_failure(folder))
    try:
        return _day_of(ds, folder, published.read_scores_manifest(folder)).model_copy(
            update={"failed": failed}
        )
    except published.UnreadableScores as exc:
        problem = str(exc)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        problem = (
            f"the manifest in the footer is not a scores manifest ({type(exc).__name__}: {str(exc)[:200]})"
        )
    again = (
        "failed" if failed else "completed"
    )  # a failed run is rerun by `failed`, a succeeded one by `completed`
    fix = f"Rescore the day: clear its score task, or `freestack backfill {spec.name} --dag score --reprocess {again}` over it"
    return ScoredDay(ds=ds, folder=folder, problem=f"{problem}. {fix}", failed=failed)


def _failure(record: dict[str, Any] | None) -> ScoreFailure | None:
    if record is None:
        return None
    run = record.get("run") if isinstance(record.get("run"), dict) else {}
    return ScoreFailure(
        error=str(record["error"]),
        task=record.get("task"),
        failed_at=record.get("failed_at"),
        dag_id=run.get("dag_id"),
        run_id=run.get("run_id"),
    )


def scores_page(pipeline: str, spec: PipelineSpec, page: int = 1, size: int = SCORES_PAGE) -> ScoresPage:
    """Page ``page`` of the pipeline's scored days, newest first: only that page's footers are read."""
    days = published.score_days(spec)
    shown = parallel(lambda ds: scored_day(spec, ds), days[(page - 1) * size : page * size])
    sc = spec.score
    return ScoresPage(
        pipeline=pipeline,
        model=spec.model_name,
        folder=str(published.scores_parent(spec)[0]),
        version=sc.version,
        schedule=sc.schedule,
        total=len(days),
        page=page,
        pages=max(1, -(-len(days) // size)),
        days=shown,
    )


__all__ = [
    "ClassCount",
    "SCORES_OVERVIEW",
    "SCORES_PAGE",
    "SHOWN_CLASSES",
    "ScoreFailure",
    "ScoredDay",
    "ScoresPage",
    "ValueStats",
    "scored_day",
    "scores_page",
]
