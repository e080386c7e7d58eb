"""What docs/notebooks/explore.ipynb draws and links (:mod:`freestack.ui.notebook`): a window's
distributions (which panels, and the figure), and a registered version's two links, its page in the
freestack UI (followed through the views app: the page of that version) and the Airflow run that trained
it (the link the version's page itself shows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.support.demo_sandbox import ROOT
from tests.unit.ui.test_extra_pages import client, digits  # noqa: F401 (the views app on the digits spec)
from tests.unit.ui.test_notebook_lines import FIXTURE, registered  # noqa: F401 (a registered digits version)

BASE = "http://127.0.0.1:8123"
RUN = {"dag_id": "digits_train", "run_id": "manual__2026-11-03T00:00:00+00:00"}


@pytest.fixture
def airflow_port(monkeypatch):
    """The stack's port as `make up AIRFLOW_PORT=8123` gives it (no base URL set)."""
    for name in ("AIRFLOW__API__BASE_URL", "AIRFLOW__API__PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIRFLOW_PORT", "8123")


def _trained_by_airflow(loaded):
    """``loaded`` as a version whose lineage records the Airflow run that trained it."""
    from freestack.version.records import Lineage

    loaded.lineage = Lineage(**{**loaded.lineage.as_dict(), "airflow": {**RUN, "task_id": "train"}})
    return loaded


def test_a_versions_links_are_its_page_and_the_airflow_run_its_page_shows(
    client,  # noqa: F811
    registered,  # noqa: F811
    storage,
    airflow_port,
    monkeypatch,
):
    from freestack.operator_links import UI_ROUTE
    from freestack.registry.core import ModelRegistry
    from freestack.ui import actions
    from freestack.ui.notebook import airflow_url, version_links

    assert airflow_url() == BASE
    links = version_links(_trained_by_airflow(ModelRegistry(storage, "digits").load(registered)))
    assert links.version == registered
    assert links.page == f"{BASE}{UI_ROUTE}/models/digits/{registered}"
    page = client.get(links.page.removeprefix(BASE + UI_ROUTE))  # the framed route opens the views app's
    assert page.status_code == 200 and f"<title>digits {registered}" in page.text, page.text[:500]
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE)  # the version page's own run link, on this stack
    assert links.airflow_run == actions.run_url(RUN["dag_id"], RUN["run_id"])
    assert links.airflow_run == f"{BASE}/dags/digits_train/runs/manual__2026-11-03T00%3A00%3A00%2B00%3A00"
    shown = links._repr_html_()
    assert f'href="{links.page}"' in shown and f'href="{links.airflow_run}"' in shown, shown
    assert links.page in str(links) and links.airflow_run in str(links)


def test_a_version_trained_outside_airflow_says_so_and_an_unregistered_one_has_no_page(
    registered,  # noqa: F811
    storage,
    tmp_path,
):
    import shutil

    import freestack.version
    from freestack.registry.core import ModelRegistry
    from freestack.ui.notebook import NotebookError, version_links

    links = version_links(ModelRegistry(storage, "digits").load(registered), base_url=BASE + "/")
    assert links.airflow_run is None and links.page.startswith(f"{BASE}/plugin/freestack/models/")
    assert "trained outside Airflow" in links._repr_html_() and "names no Airflow run" in str(links)
    folder = tmp_path / "candidate"
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("_REGISTERED.json"))
    with pytest.raises(NotebookError, match="is not registered, so the UI has no page for it"):
        version_links(freestack.version.open(folder.as_uri()).load(), base_url=BASE)


def _digits_window(rows: int = 300) -> tuple[pd.DataFrame, np.ndarray]:
    from freestack.ml.prep import split_of_keys

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {f"px_{i}": rng.integers(0, 17, rows).astype(float) * (i % 8 != 0) for i in range(64)}
    )
    frame["px_5"] *= 0.25  # the narrowest of those that vary
    frame["px_9"] = frame["px_9"] * 3  # the widest
    frame["id"] = [f"r{k}" for k in range(rows)]
    frame["label"] = rng.integers(0, 10, rows)
    return frame, split_of_keys(frame["id"], 0.15, 0.15, salt="digits")


def _spec(name: str, change=None):
    from freestack.spec import parse_spec

    path = ROOT / "include" / "pipelines" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    if change:
        change(raw)
    return parse_spec(raw, str(path))


def _float_label(raw: dict) -> None:
    raw["source"]["schema"]["columns"][-1] = {"name": "label", "type": "float", "nullable": False}
    raw["gate"] = {"metric": "rmse"}
    raw.pop("sweep")


def test_the_window_panels_are_the_target_and_the_widest_numeric_features():
    from freestack.ui.notebook import SHOWN_FEATURES, distribution_panels

    frame, _ = _digits_window()
    panels = distribution_panels(_spec("digits"), frame)
    assert [(p.column, p.kind, p.target) for p in panels[:2]] == [
        ("label", "classes", True),
        ("px_9", "histogram", False),
    ]
    assert len(panels) == 1 + SHOWN_FEATURES and all(p.kind == "histogram" for p in panels[1:])
    assert not {"px_0", "px_8", "px_5"} & {p.column for p in panels}  # constant ones, the narrowest
    frame["label"] = frame["label"] + np.random.default_rng(1).random(len(frame))  # a continuous target
    regression = distribution_panels(_spec("digits", _float_label), frame, shown=1)
    assert [(p.column, p.kind) for p in regression] == [("label", "histogram"), ("px_9", "histogram")]


def test_the_window_figure_is_a_png_and_a_text_only_window_has_none():
    from freestack.ui.notebook import NotebookError, window_distributions

    frame, split = _digits_window()
    drawn = window_distributions(_spec("digits"), frame, split, shown=2)
    assert drawn.startswith(b"\x89PNG\r\n\x1a\n") and len(drawn) > 5000
    with pytest.raises(NotebookError, match="split has 3 values for 300 rows"):
        window_distributions(_spec("digits"), frame, split[:3])
    text = pd.DataFrame({"id": ["a", "b"], "prompt": ["1+1", "2+2"], "response": ["2", "4"]})
    with pytest.raises(NotebookError, match="has a text target and no numeric feature"):
        window_distributions(_spec("arith_tiny"), text, np.array(["train", "test"]))


def test_the_registry_table_says_to_run_make_demo_when_the_model_has_no_production_version(
    storage,
    digits,  # noqa: F811
):
    """A clone without the demo's state: not a bare KeyError: 'metrics' but the model it needs and
    `make demo`; then a version but no production; then the table."""
    import shutil
    from pathlib import Path

    from freestack.registry.core import registry_for
    from freestack.storage import to_path
    from freestack.ui.notebook import NotebookError, registered_versions
    from tests.unit.ui.test_notebook_lines import VERSION

    registry = registry_for(digits)
    with pytest.raises(
        NotebookError, match=r"model 'digits' \(pipeline 'digits'\) has no registered version.*make demo"
    ):
        registered_versions(digits, registry)
    shutil.copytree(FIXTURE, Path(to_path(storage).path) / "registry" / "digits" / VERSION)
    with pytest.raises(NotebookError, match="none is production: run `make demo`, or promote one"):
        registered_versions(digits, registry)
    registry.set_alias("production", VERSION)
    table = registered_versions(digits, registry)
    assert table.to_dict("records")[0]["version"] == VERSION and table["aliases"][0] == ["production"]
    assert list(table.columns) == ["version", "created", "aliases", "test_accuracy"]


def test_predict_encodes_a_versions_category_text_and_image_columns_as_the_server_does():
    """The notebook's predict on a version of numeric, category, text and image columns (the shop fixture)
    answers the labels of its recorded outputs; a numeric column holding a word is named."""
    import json

    import freestack.version
    from freestack.ui.notebook import NotebookError, predict
    from tests.fixtures.versions.make_versions import frame_of

    kind = ROOT / "tests" / "fixtures" / "versions" / "shop"
    expected = json.loads((kind / "expected.json").read_text())
    loaded = freestack.version.open((kind / "version").as_uri()).load()
    rows = frame_of(kind / "version", expected["inputs"])
    want = [loaded.preprocessor.classes[int(np.argmax(p))] for p in expected["outputs"]]
    assert predict(loaded, rows) == want == ["yes", "no", "no", "yes"]
    with pytest.raises(NotebookError, match=r"feature column 'price' is numeric .* holds 'twelve'"):
        predict(loaded, rows.astype({"price": object}).assign(price=["twelve", 1.0, 2.0, 3.0]))
    with pytest.raises(NotebookError, match=r"takes feature column\(s\) \['colour'\], which the rows lack"):
        predict(loaded, rows.drop(columns=["colour"]))
