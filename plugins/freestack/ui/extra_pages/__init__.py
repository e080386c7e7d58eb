"""The pages users of MLflow, W&B and SageMaker Studio look for, on the ML views' login, one module a
page family:

    /compare/<p>?v=A&v=B...                  versions side by side: metrics (best marked, difference to the
                                             first), gate decisions, the training config they recorded, and
                                             what their lineage differs in (partitions, spec hash, code)
                                             (:mod:`.compare`)
    /deployments/<model>/<name>/try          a form with one input per raw feature; the row is sent to the
                                             deployment's own recorded predict URL (local ones), the answer
                                             and its latency shown (:mod:`.try_deployment`)
    /data/<p>/<ds>/quarantine?page=N         a partition's rejected rows, 100 a page, read with pyarrow
    /scores/<p>/<ds>/quarantine?page=N       the rows of a scored day that were not scored, the same way
                                             (:mod:`.quarantine`)
    /api/...                                 the same as JSON

:data:`router` is an :class:`~fastapi.APIRouter` that :mod:`freestack.ui.app` includes into its
``views_app`` (not mounted: a mounted app skips the login); the pages draw with :mod:`freestack.ui.shared`,
as the app does, and no module here imports the app.
"""

from __future__ import annotations

from fastapi import APIRouter

from freestack.ui.extra_pages import compare, quarantine, try_deployment

router = APIRouter()
for family in (compare, try_deployment, quarantine):
    router.include_router(family.router)

__all__ = ["router"]
