"""The ML views app (freestack.ui.app.views_app) over HTTP for the view tests: the given pipeline specs are
the only pipelines, login is stubbed as the user ``tester``, and reading and triggering DAGs are allowed or
refused as the test says, so a page renders from storage alone, without Airflow's API server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest
    from fastapi.testclient import TestClient

    from freestack.spec import PipelineSpec

USER = "tester"


def may_read_all(user: Any, dag: str) -> bool:
    """Every DAG readable: the views' default in these tests."""
    return True


def _pipelines(root: str, specs: tuple[PipelineSpec, ...]) -> list[tuple[Any, PipelineSpec]]:
    """Each spec as the catalog lists it: under its own name, with its ``<name>_train`` and
    ``<name>_ingest`` DAGs, its storage at ``root``."""
    from freestack.ui.catalog import common

    return [
        (
            common.Pipeline(
                name=spec.name,
                model=spec.model_name,
                root=root,
                train_dag=f"{spec.name}_train",
                ingest_dag=f"{spec.name}_ingest",
                trains=True,
            ),
            spec,
        )
        for spec in specs
    ]


@contextmanager
def views_client(
    monkeypatch: pytest.MonkeyPatch,
    root: str,
    *specs: PipelineSpec,
    may_read: Callable[[Any, str], bool] = may_read_all,
    may_trigger: bool = False,
) -> Iterator[TestClient]:
    """A TestClient on the views app whose catalog is ``specs`` (stored at ``root``), logged in as
    :data:`USER`; ``may_read`` decides each DAG's read right and ``may_trigger`` every trigger right.
    The login override is dropped on leaving; the patches go with ``monkeypatch``."""
    from fastapi.testclient import TestClient

    from freestack.ui import app, shared
    from freestack.ui.auth import current_user
    from freestack.ui.catalog import common

    found = _pipelines(root, specs)
    monkeypatch.setattr(common, "pipelines", lambda: list(found))
    monkeypatch.setattr(shared, "may_read", may_read)
    monkeypatch.setattr(app, "may_trigger", lambda user, dag: may_trigger)
    monkeypatch.setattr(shared, "user_name", lambda user: USER)
    app.views_app.dependency_overrides[current_user] = lambda: USER
    try:
        yield TestClient(app.views_app)
    finally:
        app.views_app.dependency_overrides.clear()
