"""What every operator of a pipeline's train DAG shares: the spec file it runs for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from freestack.spec import PipelineSpec, load_spec

#: a task that pushes an XCom under this key (Markdown, at most 1000 characters) has it set as the
#: DAG run's note when the run ends (:mod:`freestack.runtime.notes`; the Task SDK cannot set notes)
RUN_NOTE_XCOM = "freestack_run_note"


class PipelineOperator(BaseOperator):
    """An operator of one pipeline: a ``spec_path``, and ``pipeline_spec()`` which loads it at run time
    (never at parse time) and fails the task at once if it is broken: retrying cannot fix a spec.
    Branch operators list it before ``BaseBranchOperator``.

    ``spec_path`` is not a template field: the DAG factory sets it to the spec file's path, so rendering
    it changed nothing, and a task with template fields sends them to the API server before its code
    starts (one round trip per task, 50 ms alone and several times that when tasks start together;
    ``bench/orchestration``). Subclasses with real templates (``version``) declare them."""

    template_fields: Sequence[str] = ()

    def __init__(self, *, spec_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path

    def pipeline_spec(self) -> PipelineSpec:
        from freestack.errors import SpecError

        try:
            return load_spec(self.spec_path)
        except SpecError as exc:
            raise AirflowFailException(str(exc)) from None


__all__ = ["RUN_NOTE_XCOM", "PipelineOperator"]
