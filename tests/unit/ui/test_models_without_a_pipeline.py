"""Models and deployments no pipeline spec made (the reusable operators', a notebook's) are in the ML views:
the Models page lists what the registry holds, whoever made it, and a version's page answers; the
Deployments page lists what the serving records hold, the records `freestack serve status` reads. The
Promote and Roll back buttons, which run a pipeline's DAGs, are offered only for a pipeline's model, and a
model no pipeline trains is shown only to a user who may read every DAG. Rendered through the views app
(login stubbed: tests/support/views.py)."""

from __future__ import annotations

import pytest

from bench.ui.volume import make_registry
from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client

MODEL, VERSION = "arith_tiny", "v20260105-000000"


def register(root: str, model: str, version: str) -> str:
    """A version of ``model`` registered as the reusable operators register one: no spec, no gate; its URI."""
    from freestack.registry.core import ModelRegistry
    from freestack.storage import join, to_path, write_bytes, write_json

    src = join(to_path(root), "work", model, version)
    write_json(join(src, "config.json"), {"freestack_model": "mlp", "task": "generation"})
    write_bytes(join(src, "model.safetensors"), bytes(64))
    write_json(join(src, "preprocessing.json"), {"task": "generation", "features": []})
    write_json(join(src, "metrics.json"), {"test_exact_match": 0.5, "test_loss": 1.25})
    run = {"dag_id": "tune_my_model", "run_id": "manual__1", "task_id": "train"}
    write_json(join(src, "lineage.json"), {"airflow": run})
    return ModelRegistry(root, model).register(src, version)


def record(root: str, model: str, name: str, uri: str, **fields) -> dict:
    """A deployment record, written where a deploy writes it (``deployments/<model>/<name>.json``)."""
    from freestack.serving.records import Deployments

    rec = {"model": model, "name": name, "version": VERSION, "version_uri": uri, **fields}
    Deployments(root, model).write(name, rec, None)
    return rec


@pytest.fixture
def operator_made(storage):
    """``arith_tiny`` registered and served on Kubernetes by the reusable operators (deployment
    ``arith-tiny``, the operator's default name), beside the digits pipeline's own model."""
    make_registry(storage, "digits", 2)
    uri = register(storage, MODEL, VERSION)
    target = {"target": "kubernetes", "state": "serving", "namespace": "models", "alias": None}
    record(storage, MODEL, "arith-tiny", uri, **target)
    return uri


@pytest.fixture
def digits():
    from freestack.spec import load_spec

    return load_spec(ROOT / "include" / "pipelines" / "digits.yaml")


def test_the_models_page_lists_what_the_registry_holds_and_its_pages_answer(
    monkeypatch, storage, digits, operator_made
):
    with views_client(monkeypatch, storage, digits, may_trigger=True) as http:
        listed = {m["model"]: m for m in http.get("/api/models").json()}
        assert sorted(listed) == ["arith_tiny", "digits"]  # the pipeline's model once, under its pipeline
        assert listed["digits"]["pipeline"] == "digits" and listed["digits"]["key"] == "digits"
        mine = listed[MODEL]
        assert mine["pipeline"] is None and mine["key"] == MODEL
        assert [v["version"] for v in mine["versions"]] == [VERSION]
        assert mine["versions"][0]["gate"]["decision"] == "none"
        assert [(d["name"], d["version"]) for d in mine["served"]] == [("arith-tiny", VERSION)]
        models = http.get("/models").text
        assert f'href="/freestack/ui/models/{MODEL}"' in models
        assert f'href="/freestack/ui/models/{MODEL}/{VERSION}"' in models

        page = http.get(f"/models/{MODEL}")
        assert page.status_code == 200 and 'id="no-pipeline"' in page.text
        assert 'id="rollback"' not in page.text and "/data/" not in page.text
        version = http.get(f"/models/{MODEL}/{VERSION}")
        assert version.status_code == 200, version.text
        assert "test_exact_match" in version.text and "promote-production" not in version.text
        assert f"ModelRegistry({storage!r}, {MODEL!r})" in version.text.replace("&#39;", "'")
        got = http.get(f"/api/models/{MODEL}/{VERSION}").json()
        assert got["model"] == MODEL and got["pipeline"] is None and got["uri"] == operator_made
        card = http.get(f"/models/{MODEL}/{VERSION}/files/README.md")
        assert card.status_code == 200 and card.text.startswith("---")
        compare = http.get(f"/compare/{MODEL}", params={"v": VERSION})  # the version page's link
        assert compare.status_code == 200 and f'id="pick-{VERSION}" checked' in compare.text
        assert f'action="/freestack/ui/compare/{MODEL}"' in compare.text

        # the buttons run <pipeline>_promote / _rollback: for this model there is none, and none is run
        refused = http.get(f"/models/{MODEL}/{VERSION}/promote", params={"alias": "staging"})
        assert refused.status_code == 409 and "FreestackPromoteOperator" in refused.text
        assert http.post(f"/models/{MODEL}/{VERSION}/promote", data={"alias": "staging"}).status_code == 409
        older = listed["digits"]["versions"][0]["version"]  # a pipeline's model keeps its buttons
        assert 'id="promote-production"' in http.get(f"/models/digits/{older}").text

        gone = http.get(f"/models/{MODEL}/v-nope")
        assert gone.status_code == 404
        unknown = http.get("/api/models/nope").json()["detail"]
        assert "no pipeline or registered model 'nope'" in unknown and MODEL in unknown


def test_the_deployments_page_lists_what_serve_status_reads(monkeypatch, storage, digits, operator_made):
    from freestack.serving.records import all_deployments

    with views_client(monkeypatch, storage, digits) as http:
        rows = http.get("/api/deployments").json()
        assert [(r["model"], r["name"]) for r in rows] == [
            (r["model"], r["name"]) for r in all_deployments(storage)
        ]
        [row] = rows
        assert row["pipeline"] is None and row["key"] == MODEL and row["state"] == "serving"
        assert row["version"] == VERSION and row["address"] == "SeldonDeployment models/arith-tiny"
        page = http.get("/deployments").text
        assert f'id="{MODEL}"' in page and f'href="/freestack/ui/models/{MODEL}/{VERSION}"' in page
        assert http.get(f"/models/{MODEL}/{VERSION}").status_code == 200  # where the page's link goes


def test_a_model_no_pipeline_trains_needs_read_access_to_every_dag(
    monkeypatch, storage, digits, operator_made
):
    only_digits = lambda user, dag: dag == "digits_train"  # noqa: E731  (a DAG-level role)
    with views_client(monkeypatch, storage, digits, may_read=only_digits) as http:
        assert [m["model"] for m in http.get("/api/models").json()] == ["digits"]
        assert http.get("/api/deployments").json() == []
        refused = http.get(f"/api/models/{MODEL}/{VERSION}")
        assert refused.status_code == 403 and "read access to every DAG" in refused.json()["detail"]


def test_the_openai_snippet_names_the_model_the_server_serves(monkeypatch, storage):
    """The deployment is named ``arith-tiny`` (the deploy operator's default: the model's name as a
    Kubernetes name); its server answers to the registered model's name, ``arith_tiny``, and 404s the other."""
    from freestack.ui.catalog.deployment_pages import _openai
    from freestack_server.core.model import ServedModel

    uri = register(storage, MODEL, VERSION)
    local = {"target": "local", "runtime": "mlserver", "url": "http://127.0.0.1:9", "state": "stopped"}
    rec = record(storage, MODEL, "arith-tiny", uri, **local)
    served = ServedModel(uri).describe()["model"]  # what the server's OpenAI API answers to
    assert served == MODEL != rec["name"]
    snippet = _openai(rec)["openai_snippet"]
    assert f'model="{served}"' in snippet and 'model="arith-tiny"' not in snippet
    with views_client(monkeypatch, storage) as http:  # the page and its JSON say the same
        [row] = http.get("/api/deployments").json()
        page = http.get("/deployments").text
    assert row["openai_snippet"] == snippet and row["openai_url"] == "http://127.0.0.1:9/v1"
    assert f"model=&#34;{served}&#34;" in page
