"""What every operator of a pipeline's DAGs shares: the spec file it runs for, and failing at once on
errors a retry cannot fix."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from freestack.errors import SpecError
from freestack.ml.threads import cores, share, size_pool
from freestack.operator_links import FreestackPageLink
from freestack.settings import settings
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
    starts (one round trip per task, slower still when tasks start together). Subclasses with real templates (``version``) declare them.

    Every subclass's ``execute``, ``execute_complete`` and ``poke`` fail the task at once, without its
    retries, on an error no retry can fix (:func:`permanent_error`: permission denied, a read-only
    file system), with the path and the fix in the message.
    """

    template_fields: Sequence[str] = ()
    #: every task links into its pipeline's freestack page (the version, sweep, deployment or lake)
    operator_extra_links = (FreestackPageLink(),)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("execute", "execute_complete", "poke"):
            method = cls.__dict__.get(name)
            if callable(method) and not getattr(method, "_fails_fast", False):
                setattr(cls, name, _failing_fast(method))

    def __init__(self, *, spec_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec_path = spec_path

    def _storage_root(self) -> str | None:
        try:
            return str(load_spec(self.spec_path).root)
        except Exception:  # only a hint for a message: a broken spec has its own
            return None

    def pipeline_spec(self) -> PipelineSpec:
        try:
            return load_spec(self.spec_path)
        except SpecError as exc:
            raise AirflowFailException(str(exc)) from None

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage's hook (apache-airflow-providers-openlineage calls it only where it is enabled):
        what :meth:`openlineage` reports. :mod:`freestack.lineage_events` is imported here, so DAG files
        and tasks load no OpenLineage otherwise."""
        from freestack import lineage_events

        return self.openlineage(lineage_events)

    def openlineage(self, ol: Any) -> Any:
        """The task's inputs, outputs and run facets, built with ``ol`` (:mod:`freestack.lineage_events`);
        operators that move data say which, the others report none."""
        return ol.lineage()


class TorchTask:
    """Mixed into the operators whose task computes with torch (train, the sweep agents, evaluate, score):
    before ``execute``, torch's CPU thread pool is sized to the task's share of the worker's cores
    (:meth:`torch_threads`) and the size is logged; ``self.threads`` holds it for what the task starts."""

    threads: int | None = None

    def pre_execute(self, context: Any) -> None:
        super().pre_execute(context)  # type: ignore[misc]
        threads, why = self.torch_threads()
        if threads:
            self.threads = size_pool(threads)
            log = self.log  # type: ignore[attr-defined]
            log.info("torch computes on %d CPU thread(s) in this task: %s", self.threads, why)

    def torch_threads(self) -> tuple[int | None, str]:
        """The pool's size and why; None leaves torch's own."""
        return task_threads()


def task_threads() -> tuple[int, str]:
    """The CPU threads of a torch task and why: ``FREESTACK_TASK_THREADS``, else this worker's cores shared
    out among the tasks it runs at once (:func:`worker_slots`)."""
    configured = settings().task_threads
    if configured:
        return configured, "FREESTACK_TASK_THREADS"
    slots, source = worker_slots()
    n = cores()
    why = f"{n} core(s) shared by {slots} task slot(s) ({source}); FREESTACK_TASK_THREADS sets it"
    return share(n, slots), why


def worker_slots() -> tuple[int, str]:
    """How many tasks this worker runs at once, and the setting that says so."""
    from airflow.sdk.configuration import conf

    executor = (conf.get("core", "executor", fallback="") or "").split(",")[0]
    if "Celery" in executor:
        return conf.getint("celery", "worker_concurrency", fallback=16), "[celery] worker_concurrency"
    if "Kubernetes" in executor:
        return 1, "a pod per task"
    return conf.getint("core", "parallelism", fallback=32), "[core] parallelism"


def permanent_error(exc: BaseException, root: str | None = None) -> str | None:
    """The message to fail with when ``exc`` (or what caused it) is an error a retry cannot fix; None
    for the rest (network, a busy database, a killed process: retries are for those). ``root`` (the
    pipeline's storage root) is named when the error does not name its path."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PermissionError) or _s3_denied(exc):
            where = getattr(exc, "filename", None) or (root and f"the storage root {root}")
            return (
                f"permission denied{f' on {where}' if where else ''}: {exc}. A retry cannot fix this, so the "
                "task failed without retrying. Give the account that runs the Airflow workers access (a "
                "local folder: its owner and mode; S3: the connection's key and the bucket policy; data://: "
                "the collection's ACL, `freestack acl set`), then clear the task."
            )
        if isinstance(exc, OSError) and exc.errno == errno.EROFS:
            return (
                f"read-only file system: {exc}. A retry cannot fix this, so the task failed without "
                "retrying. Point the storage root (FREESTACK_STORAGE_ROOT or the spec's storage_root) at "
                "a writable place, then clear the task."
            )
        exc = exc.__cause__ or exc.__context__
    return None


def _s3_denied(exc: BaseException) -> bool:
    error = (getattr(exc, "response", None) or {}).get("Error", {})
    return error.get("Code") in {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    }


def _failing_fast(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except AirflowFailException:
            raise
        except Exception as exc:
            message = permanent_error(exc, self._storage_root())
            if message is None:
                raise
            raise AirflowFailException(message) from exc

    wrapper._fails_fast = True  # type: ignore[attr-defined]
    return wrapper


__all__ = [
    "RUN_NOTE_XCOM",
    "PipelineOperator",
    "TorchTask",
    "permanent_error",
    "task_threads",
    "worker_slots",
]
