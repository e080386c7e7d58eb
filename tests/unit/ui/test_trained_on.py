"""How a version was trained (lineage.json's ``distributed``) on the ML views: the text of
freestack.ui.catalog.model_pages.trained_on, the version page's "Trained on" row and the comparison's
per-version row, for a version written before distributed training (no key), one process, and
data-parallel ranks on one node and on several; the pages render through the views app (login stubbed)."""

from __future__ import annotations

import json

import pytest

from bench.ui.volume import make_registry
from tests.support.demo_sandbox import ROOT
from tests.support.views import views_client

ONE_NODE = {
    "world_size": 2,
    "nodes": 1,
    "processes_per_node": 2,
    "backend": "gloo",
    "strategy": "ddp",
    "launcher": "local",
}
MULTI_NODE = {
    "world_size": 8,
    "nodes": 2,
    "processes_per_node": 4,
    "backend": "nccl",
    "strategy": "ddp",
    "launcher": "kubernetes",
}


@pytest.fixture
def digits(storage):
    from freestack.spec import load_spec

    return load_spec(ROOT / "include" / "pipelines" / "digits.yaml")


@pytest.fixture
def client(storage, digits, monkeypatch):
    with views_client(monkeypatch, storage, digits) as client:
        yield client


@pytest.fixture
def versions(storage):
    """Four versions: one from before distributed training (no key), one process, 2 ranks on one node and
    8 ranks on two nodes (lineage.json rewritten in place; the registry reads it as it is)."""
    from freestack.storage import join, to_path, write_bytes

    names = make_registry(storage, "digits", 4)
    for name, distributed in zip(names[1:], [{"world_size": 1}, ONE_NODE, MULTI_NODE], strict=True):
        path = join(to_path(storage), "registry", "digits", name, "lineage.json")
        lineage = json.loads(path.read_text())
        write_bytes(path, json.dumps({**lineage, "distributed": distributed}).encode())
    return names


def test_trained_on_text():
    from freestack.ui.catalog.model_pages import trained_on

    assert trained_on({}) == "1 process"  # written before distributed training
    assert trained_on({"distributed": {"world_size": 1}}) == "1 process"
    assert (
        trained_on({"distributed": ONE_NODE}) == "2 ranks (1 node × 2 processes), gloo, DDP, local launcher"
    )
    assert (
        trained_on({"distributed": MULTI_NODE})
        == "8 ranks (2 nodes × 4 processes), nccl, DDP, kubernetes launcher"
    )
    assert (
        trained_on({"distributed": {"world_size": 2, "nodes": 2, "processes_per_node": 1}})
        == "2 ranks (2 nodes × 1 process)"
    )
    assert trained_on({"distributed": {"world_size": 3}}) == "3 ranks"
    assert (
        trained_on({"distributed": None}) == trained_on({"distributed": {"world_size": "2"}}) == "1 process"
    )


def test_version_page_shows_how_each_version_was_trained(client, versions):
    expected = [
        "1 process",
        "1 process",
        "2 ranks (1 node × 2 processes), gloo, DDP, local launcher",
        "8 ranks (2 nodes × 4 processes), nccl, DDP, kubernetes launcher",
    ]
    for name, text in zip(versions, expected, strict=True):
        r = client.get(f"/models/digits/{name}")
        assert r.status_code == 200, r.text
        assert f'<tr><th>Trained on</th><td id="trained-on">{text}</td></tr>' in r.text


def test_compare_page_diffs_how_versions_were_trained(client, versions):
    from freestack.ui.extra_pages.compare import lineage_facts

    old, one, ddp, multi = versions
    r = client.get("/compare/digits", params=[("v", old), ("v", ddp), ("v", multi)])
    assert r.status_code == 200, r.text
    row = r.text.split('data-key="trained_on">', 1)[1].split("</tr>", 1)[0]
    assert "<strong>differs</strong>" in row
    assert row.count("<td><code>") == 3 and [c.split("</code>")[0] for c in row.split("<td><code>")[1:]] == [
        "1 process",
        "2 ranks (1 node × 2 processes), gloo, DDP, local launcher",
        "8 ranks (2 nodes × 4 processes), nccl, DDP, kubernetes launcher",
    ]
    same = client.get("/api/compare/digits", params=[("v", old), ("v", one)]).json()
    [facts] = [f for f in same["lineage"] if f["key"] == "trained_on"]
    assert facts["same"] and facts["values"] == ["1 process", "1 process"]
    assert lineage_facts({"distributed": {"world_size": 1}})["trained_on"] == "1 process"


def test_trained_on_is_escaped(client, storage, versions):
    from freestack.storage import join, to_path, write_bytes

    path = join(to_path(storage), "registry", "digits", versions[2], "lineage.json")
    lineage = json.loads(path.read_text())
    write_bytes(path, json.dumps({**lineage, "distributed": {**ONE_NODE, "backend": "<b>x</b>"}}).encode())
    page = client.get(f"/models/digits/{versions[2]}").text
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;, DDP" in page
    compare = client.get("/compare/digits", params=[("v", versions[0]), ("v", versions[2])]).text
    assert "<b>x</b>" not in compare and "&lt;b&gt;x&lt;/b&gt;, DDP" in compare
