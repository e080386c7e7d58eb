"""What docs/notebooks/explore.ipynb shows beside the stages' own functions: a window's distributions as
one figure, and a registered version's two pages, the Airflow run that trained it and its page in the
freestack UI.

The addresses are the ones this project's commands use: the Airflow API server of
:func:`freestack.embedded.airflow_env` (``AIRFLOW__API__BASE_URL`` or ``AIRFLOW_PORT`` when set, else the
stack running from ``AIRFLOW_HOME``, else 127.0.0.1:8080), and the freestack pages framed in Airflow's UI
under :data:`freestack.operator_links.UI_ROUTE`, as the tasks' "freestack" extra link opens them.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel

from freestack.embedded import airflow_env
from freestack.errors import FreestackError
from freestack.ml.plots import png
from freestack.ml.prep import infer_task
from freestack.operator_links import UI_ROUTE

if TYPE_CHECKING:
    import pandas as pd

    from freestack.spec import PipelineSpec
    from freestack.version.loaded import LoadedVersion

#: the numeric features drawn (those of the widest spread), after the target
SHOWN_FEATURES = 8
#: the classes of a classification target drawn (the most frequent)
SHOWN_CLASSES = 20
SPLITS = ("train", "val", "test")
NUMERIC = ("int", "float")


class NotebookError(FreestackError):
    """The notebook cannot draw or link what it was given; the message says why and what to do."""


def airflow_url() -> str:
    """The Airflow UI's address, as ``make up``, ``make demo`` and ``freestack backfill`` find it."""
    return airflow_env()["AIRFLOW__API__BASE_URL"].rstrip("/")


def registered_versions(spec: PipelineSpec, registry: Any) -> pd.DataFrame:
    """The pipeline's registered versions as a table: version, created, aliases and test accuracy (None for
    a regression). NotebookError naming the model and ``make demo`` when there is none, or none is
    ``production`` (the version the notebook compares and scores with)."""
    import pandas as pd

    versions = registry.versions()
    where = f"under {registry.root}"
    if not versions:
        raise NotebookError(
            f"model {spec.model_name!r} (pipeline {spec.name!r}) has no registered version {where}: run "
            "`make demo` (it lands the days, trains and registers one), or set FREESTACK_STORAGE_ROOT to a "
            "state that has one before starting Jupyter"
        )
    if not any("production" in v["aliases"] for v in versions):
        raise NotebookError(
            f"model {spec.model_name!r} has {len(versions)} registered version(s) {where} but none is "
            f"production: run `make demo`, or promote one (`freestack models promote {spec.name} <version>`)"
        )
    table = pd.DataFrame(versions)
    table["test_accuracy"] = [(m or {}).get("test_accuracy") for m in table["metrics"]]
    return table[["version", "created", "aliases", "test_accuracy"]]


def predict(version: LoadedVersion, rows: pd.DataFrame) -> list:
    """A loaded version's predictions for ``rows``: class labels of a classifier, values of a regression.
    Every feature column goes through the version's own preprocessing (category, text and image columns
    encoded as the model server encodes them); NotebookError naming a missing column or a numeric one
    holding other values."""
    import torch

    from freestack.ml.loop import to_tensors

    pre = version.preprocessor
    if pre.task == "generation":
        raise NotebookError(f"{version.uri} generates text: it answers prompts, not rows")
    _check_columns(version.uri, pre, rows)
    with torch.no_grad():
        x = to_tensors(pre.inputs(rows))
        if pre.task == "classification":
            return [pre.classes[i] for i in version.model.predict_proba(x).argmax(dim=-1).tolist()]
        return version.model.predict(x).reshape(-1).tolist()


def _check_columns(uri: str, pre: Any, rows: pd.DataFrame) -> None:
    """NotebookError unless ``rows`` has every feature column, its numeric ones holding numbers."""
    import pandas as pd

    missing = [f for f in pre.features if f not in rows.columns]
    if missing:
        raise NotebookError(f"{uri} takes feature column(s) {missing}, which the rows lack")
    for column in pre.numeric:
        values = rows[column]
        bad = values[pd.to_numeric(values, errors="coerce").isna() & values.notna()]
        if len(bad):
            raise NotebookError(
                f"feature column {column!r} is numeric for {uri} but holds {bad.iloc[0]!r}: pass numbers "
                "(the score stage quarantines such rows)"
            )


class VersionLinks(BaseModel):
    """A registered version's pages; ``airflow_run`` is None when its lineage names no Airflow run (a
    version trained outside Airflow, from a notebook or a script). A notebook shows them as links."""

    version: str
    page: str
    airflow_run: str | None

    def _repr_html_(self) -> str:
        def link(url: str, text: str) -> str:
            return f'<a href="{html.escape(url)}" target="_blank">{html.escape(text)}</a>'

        run = (
            link(self.airflow_run, self.airflow_run)
            if self.airflow_run
            else "none (its lineage names no Airflow run: it was trained outside Airflow)"
        )
        return (
            f"<ul><li>version {html.escape(self.version)} in freestack: {link(self.page, self.page)}</li>"
            f"<li>the Airflow run that trained it: {run}</li></ul>"
        )

    def __str__(self) -> str:
        return f"version {self.version} in freestack: {self.page}\nthe Airflow run that trained it: " + (
            self.airflow_run or "none (its lineage names no Airflow run)"
        )


def version_links(version: LoadedVersion, base_url: str | None = None) -> VersionLinks:
    """The pages of a registered ``version`` (``registry.load(...)``): ``/models/<pipeline>/<version>``
    in the freestack UI and the run its lineage records (``airflow.dag_id``, ``airflow.run_id``) in
    Airflow's, both under ``base_url`` (default :func:`airflow_url`)."""
    lineage = version.lineage
    if version.manifest is None:
        raise NotebookError(
            f"{version.uri} is not registered, so the UI has no page for it: link a version the "
            "registry loads (registry.load(...)), which the gate registered"
        )
    if not lineage.pipeline or not lineage.version:
        raise NotebookError(
            f"{version.uri}: its lineage.json names no pipeline or version; it was not written by freestack"
        )
    base = (airflow_url() if base_url is None else base_url).rstrip("/")
    run: dict[str, Any] = lineage.as_dict().get("airflow") or {}
    return VersionLinks(
        version=lineage.version,
        page=f"{base}{UI_ROUTE}/models/{quote(lineage.pipeline, safe='')}/{quote(lineage.version, safe='')}",
        airflow_run=(
            f"{base}/dags/{quote(run['dag_id'], safe='')}/runs/{quote(run['run_id'], safe='')}"
            if run.get("dag_id") and run.get("run_id")
            else None
        ),
    )


class Panel(BaseModel):
    """One panel of :func:`window_distributions`: a column, drawn as each split's share of rows per class
    (``classes``) or as each split's histogram of densities (``histogram``)."""

    column: str
    kind: Literal["classes", "histogram"]
    target: bool = False


def distribution_panels(spec: PipelineSpec, frame: pd.DataFrame, shown: int = SHOWN_FEATURES) -> list[Panel]:
    """The panels of :func:`window_distributions`: the target (its classes, or a histogram of a continuous
    one; none for a text or image target), then the ``shown`` numeric features of the widest spread
    (their standard deviation; a constant one says nothing)."""
    schema = spec.source.schema_
    kind = {c.name: c.type for c in schema.fields}[schema.target]
    panels = []
    if kind not in ("text", "image"):
        classes = infer_task(frame[schema.target], kind) == "classification"
        panels.append(Panel(column=schema.target, kind="classes" if classes else "histogram", target=True))
    spread = {f: float(frame[f].std()) for f, t in spec.feature_kinds.items() if t in NUMERIC}
    widest = sorted((f for f, s in spread.items() if s > 0), key=lambda f: -spread[f])[:shown]
    panels += [Panel(column=f, kind="histogram") for f in widest]
    if not panels:
        raise NotebookError(
            f"{spec.name} has a {kind} target and no numeric feature that varies in this window: there is "
            "no distribution to draw"
        )
    return panels


def window_distributions(
    spec: PipelineSpec, frame: pd.DataFrame, split: Any, shown: int = SHOWN_FEATURES
) -> bytes:
    """A window's rows as one PNG, each panel per split (``split``: each row's ``train``, ``val`` or
    ``test``, as :func:`freestack.ml.prep.split_of_keys` gives them), the panels of
    :func:`distribution_panels`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    split = np.asarray(split)
    if len(split) != len(frame):
        raise NotebookError(
            f"split has {len(split)} values for {len(frame)} rows: pass one per row of the frame"
        )
    panels = distribution_panels(spec, frame, shown)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        (_class_shares if panel.kind == "classes" else _histograms)(ax, frame[panel.column], split)
        ax.set_title(f"{panel.column} (target)" if panel.target else panel.column, fontsize=9)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{spec.name}: the window's {len(frame):,} rows, per split", fontsize=10)
    return png(fig)


def _class_shares(ax: Any, values: pd.Series, split: Any) -> None:
    """The share of each split's rows per class, side by side (the most frequent classes)."""
    import numpy as np

    classes = values.value_counts().index[:SHOWN_CLASSES].sort_values()
    width = 0.8 / len(SPLITS)
    for k, name in enumerate(SPLITS):
        part = values[split == name]
        shares = part.value_counts(normalize=True).reindex(classes, fill_value=0.0)
        ax.bar(np.arange(len(classes)) + (k - 1) * width, shares.to_numpy(), width, label=name)
    ax.set_xticks(range(len(classes)), [str(c)[:8] for c in classes], fontsize=7)
    ax.set_ylabel("share of rows", fontsize=8)


def _histograms(ax: Any, values: pd.Series, split: Any) -> None:
    """A histogram of densities per split, on the same bins (one per value for whole numbers of a short
    range, as pixels' are)."""
    import numpy as np

    finite = values.to_numpy(dtype="float64")
    seen = finite[np.isfinite(finite)]
    whole = len(seen) and np.all(seen == np.round(seen)) and seen.max() - seen.min() <= 40
    bins = np.arange(seen.min(), seen.max() + 2) - 0.5 if whole else np.histogram_bin_edges(seen, bins=20)
    for name in SPLITS:
        part = finite[(split == name) & np.isfinite(finite)]
        if len(part):
            ax.hist(part, bins=bins, density=True, histtype="step", label=name)
    ax.set_ylabel("density", fontsize=8)


__all__ = [
    "NotebookError",
    "Panel",
    "SHOWN_FEATURES",
    "VersionLinks",
    "airflow_url",
    "distribution_panels",
    "predict",
    "registered_versions",
    "version_links",
    "window_distributions",
]
