"""Airflow operators for ingest: thin wrappers over ``freestack.ingest``.

Heavy libraries (pyarrow, pandas) are imported inside ``execute``, never at DAG parse time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from freestack.errors import (
    AccessDenied,
    LandingDataMissing,
    QuarantineLimitExceeded,
    SchemaDriftError,
    SpecError,
    UnsafePathError,
)
from freestack.ingest.lake import landing_dir
from freestack.ingest.triggers import LandingTrigger, _has_files
from freestack.pipeline_operator import PipelineOperator

if TYPE_CHECKING:
    from airflow.providers.openlineage.extractors import OperatorLineage


def lake_asset(pipeline: str) -> Asset:
    """The asset a pipeline's ingest updates and its training is scheduled on."""
    return Asset(name=f"{pipeline}_lake", uri=f"freestack://lake/{pipeline}", group="freestack")


class IngestOperator(PipelineOperator):
    """Validate interval ``ds``'s landing files and publish ``lake/<pipeline>/ds=<ds>/``.

    Returns the partition URI (XCom) and sets the outlet asset event's extra to the row counts
    and content hashes.
    """

    template_fields: Sequence[str] = ("ds",)
    ui_color = "#d8ecf7"

    def __init__(self, *, spec_path: str, ds: str = "{{ ds }}", **kwargs: Any) -> None:
        super().__init__(spec_path=spec_path, **kwargs)
        self.ds = ds

    def execute(self, context: Context) -> str:
        # ingest.core loads pyarrow: imported when the task runs, not when the DAG file is parsed
        from freestack.ingest.core import ingest_partition

        spec = self.pipeline_spec()
        try:
            result = ingest_partition(spec, self.ds)
        except LandingDataMissing as exc:
            if spec.source.policy.on_missing == "skip":
                raise AirflowSkipException(f"{exc} (policy on_missing: skip)") from None
            raise AirflowFailException(str(exc)) from None
        except (SchemaDriftError, QuarantineLimitExceeded, UnsafePathError, SpecError, AccessDenied) as exc:
            # the data is wrong, or data:// refused the access: retrying cannot help, so fail now
            # with the reason
            raise AirflowFailException(str(exc)) from None
        summary = result.as_dict()
        self._ingested = result  # what get_openlineage_facets_on_complete reports
        self.log.info(
            "partition %s: %d rows in, %d good, %d quarantined (%.2f%%); part sha256 %s",
            result.partition,
            result.rows_in,
            result.rows_good,
            result.rows_quarantined,
            100 * result.quarantine_fraction,
            result.part["sha256"] if result.part else "-",
        )
        if result.quarantine:
            self.log.warning("rejected rows and their reasons: %s", result.quarantine["uri"])
        extra = {
            "ds": result.ds,
            "partition": result.partition,
            "rows_in": result.rows_in,
            "rows_good": result.rows_good,
            "rows_quarantined": result.rows_quarantined,
            "part_sha256": result.part["sha256"] if result.part else None,
            "quarantine_sha256": result.quarantine["sha256"] if result.quarantine else None,
            "spec_hash": result.spec_hash,
        }
        outlet_events = context.get("outlet_events")
        if outlet_events is not None:
            outlet_events[lake_asset(spec.name)].extra = extra
        return summary["partition"]

    def openlineage(self, ol: Any) -> OperatorLineage:
        """OpenLineage (:mod:`freestack.lineage_events`): the landing files read (an image folder: the
        folder) -> the partition's part file, with its sha256 and good rows."""
        result = getattr(self, "_ingested", None)
        if result is None:
            return ol.lineage()
        landing = str(landing_dir(self.pipeline_spec(), self.ds))
        files = [s for s in result.sources if s.get("format") != "imagefolder"]
        inputs = [ol.input_dataset(f"{landing}/{s['name']}", sha256=s.get("sha256")) for s in files]
        part = result.part or {}
        out = ol.output_dataset(
            part.get("uri") or result.partition,
            sha256=part.get("sha256"),
            rows=result.rows_good,
            size=part.get("size"),
        )
        return ol.lineage(inputs or [ol.input_dataset(landing)], [out])


class LandingSensor(PipelineOperator, BaseSensorOperator):
    """Wait for interval ``ds``'s landing files, deferred to the triggerer (no worker slot held)."""

    template_fields: Sequence[str] = ("ds",)
    ui_color = "#f7f1d8"

    def __init__(
        self, *, spec_path: str, ds: str = "{{ ds }}", deferrable: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(spec_path=spec_path, **kwargs)
        self.ds = ds
        self.deferrable = deferrable

    def _uri(self) -> str:
        return str(landing_dir(self.pipeline_spec(), self.ds))

    def poke(self, context: Context) -> bool:
        return bool(_has_files(self._uri(), self.spec_path, self.ds))

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None

        self.defer(
            trigger=LandingTrigger(
                uri=self._uri(), poke_interval=self.poke_interval, spec_path=self.spec_path, ds=self.ds
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "found":
            raise RuntimeError(f"landing sensor ended without files: {event}")
        self.log.info("landing files arrived in %s: %s", event["uri"], event["files"])


__all__ = ["IngestOperator", "LandingSensor", "lake_asset"]
