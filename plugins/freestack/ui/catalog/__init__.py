"""What the freestack pages show, read from the storage root (local, ``s3://``, ``data://``) through the
storage layer, one module a page family:

- :mod:`.model_pages`: models, their versions, gate decisions, aliases and the deployments serving them;
- :mod:`.sweep_pages`: sweeps, their trials, status and parameter importance;
- :mod:`.deployment_pages`: deployments, their traffic split and what their servers answer now;
- :mod:`.lake_pages`: lake partitions; :mod:`.monitoring_pages`: judged intervals and their reports;
- :mod:`.score_pages`: scored days;
- :mod:`.common`: what they all read with (storage reads side by side, the pipelines).

Every reader returns a typed model (the JSON endpoints return the same models). Committed versions are
immutable, so their rows are kept for the life of the process (``model_pages._VERSIONS``): a page with
1,000 versions reads only the folder listing and ``aliases.json`` once warm; the first read fetches the
versions' small files side by side (:data:`READERS` threads), which matters on S3. This package is the
one import the app and the tasks' links use: every family's public names are here.
"""

from __future__ import annotations

from freestack.ui.catalog.common import (
    READERS,
    Pipeline,
    numbers_in,
    parallel,
    pipelines,
    read_json,
    read_many,
    subfolders,
)
from freestack.ui.catalog.deployment_pages import (
    DeploymentRow,
    Serving,
    deployments,
    serving_stats,
    traffic_split,
)
from freestack.ui.catalog.lake_pages import (
    LakePage,
    PartitionRow,
    lake_page,
)
from freestack.ui.catalog.model_pages import (
    AliasMove,
    Gate,
    LakeEvent,
    ModelPage,
    Partition,
    Served,
    VersionPage,
    VersionRow,
    aliases,
    decided_again,
    gate_of,
    model_page,
    served_by,
    trained_on,
    version_file_chunks,
    version_page,
    version_rows,
)
from freestack.ui.catalog.monitoring_pages import (
    IntervalRow,
    MonitoringPage,
    monitoring_page,
    monitoring_report,
)
from freestack.ui.catalog.score_pages import (
    SCORES_OVERVIEW,
    SCORES_PAGE,
    SHOWN_CLASSES,
    ClassCount,
    ScoredDay,
    ScoreFailure,
    ScoresPage,
    ValueStats,
    score_days,
    scored_day,
    scores_page,
)
from freestack.ui.catalog.sweep_pages import (
    IMPORTANCE_CACHE_SIZE,
    LOG_DISTRIBUTIONS,
    MIN_IMPORTANCE_TRIALS,
    STALE_SECONDS,
    Importance,
    SweepPage,
    SweepRow,
    Trial,
    distributions,
    parameter_importance,
    sweep_page,
    sweep_status,
    sweeps,
)

__all__ = [
    "AliasMove",
    "ClassCount",
    "DeploymentRow",
    "Gate",
    "IMPORTANCE_CACHE_SIZE",
    "Importance",
    "IntervalRow",
    "LOG_DISTRIBUTIONS",
    "LakeEvent",
    "LakePage",
    "MIN_IMPORTANCE_TRIALS",
    "ModelPage",
    "MonitoringPage",
    "Partition",
    "PartitionRow",
    "Pipeline",
    "READERS",
    "SCORES_OVERVIEW",
    "SCORES_PAGE",
    "SHOWN_CLASSES",
    "STALE_SECONDS",
    "ScoreFailure",
    "ScoredDay",
    "ScoresPage",
    "Served",
    "Serving",
    "SweepPage",
    "SweepRow",
    "Trial",
    "ValueStats",
    "VersionPage",
    "VersionRow",
    "aliases",
    "decided_again",
    "deployments",
    "distributions",
    "gate_of",
    "lake_page",
    "model_page",
    "monitoring_page",
    "monitoring_report",
    "numbers_in",
    "parallel",
    "parameter_importance",
    "pipelines",
    "read_json",
    "read_many",
    "score_days",
    "scored_day",
    "scores_page",
    "served_by",
    "serving_stats",
    "subfolders",
    "sweep_page",
    "sweep_status",
    "sweeps",
    "traffic_split",
    "trained_on",
    "version_file_chunks",
    "version_page",
    "version_rows",
]
