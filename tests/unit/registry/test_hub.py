"""Pushing a registry version to the Hugging Face Hub, tested at the HTTP boundary: huggingface_hub
talks to a real HTTP server on 127.0.0.1 that records what it is sent (no Hub is reachable here).
A test against the real Hub runs when HF_TOKEN is set."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import torch

from freestack.registry.hub import push_to_hub
from tests.fakes.hub import FakeHub
from tests.support.registry import make_model_folder, sample_input, source_predictions

TOKEN = "hf_fake_token_for_tests"
VERSION_FILES = {
    "config.json",
    "model.safetensors",
    "README.md",
    "metrics.json",
    "lineage.json",
    "preprocessing.json",
    "history.json",
    "evaluation/metrics.json",
}


@pytest.fixture
def hub():
    h = FakeHub().start()
    yield h
    h.stop()


@pytest.fixture
def reg(tmp_path):
    from freestack.registry.core import ModelRegistry

    r = ModelRegistry((tmp_path / "store").as_uri(), "digits")
    r.register(
        make_model_folder(tmp_path / "c1").as_uri(),
        "v20240102-aaaa1111",
        lineage_updates={"gate": {"decision": "promote"}},
    )
    r.register(make_model_folder(tmp_path / "c2", seed=5).as_uri(), "v20240103-bbbb2222")
    return r


def test_push_is_one_commit_with_exactly_the_version_files_and_a_version_tag(hub, reg, tmp_path):
    out = push_to_hub(reg, "v20240102-aaaa1111", "alice/digits", TOKEN, endpoint=hub.endpoint)

    [create] = hub.calls("POST", r"^/api/repos/create$")
    assert (
        json.loads(create["body"])["name"] == "digits"
        and json.loads(create["body"])["organization"] == "alice"
    )
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in hub.requests)
    [commit_req] = hub.calls("POST", r"/commit/")
    assert commit_req["path"] == "/api/models/alice/digits/commit/main"
    repo = hub.repos["alice/digits"]
    [commit] = repo.commits
    assert set(commit.files) == VERSION_FILES  # no _REGISTERED.json, no dot-files
    folder = tmp_path / "store/registry/digits/v20240102-aaaa1111"
    for name, data in commit.files.items():
        assert data == (folder / name).read_bytes(), name
    assert "v20240102-aaaa1111" in commit.summary and "digits" in commit.summary
    assert repo.tags == {"v20240102-aaaa1111": commit.oid}
    [tag_req] = hub.calls("POST", r"/tag/")
    assert tag_req["path"] == f"/api/models/alice/digits/tag/{commit.oid}"
    assert json.loads(tag_req["body"])["tag"] == "v20240102-aaaa1111"
    [validate] = hub.calls("POST", "validate-yaml")  # the card's YAML was checked before uploading
    assert "model-index" in json.loads(validate["body"])["content"]
    assert out == {
        "repo_id": "alice/digits",
        "version": "v20240102-aaaa1111",
        "commit": commit.oid,
        "commit_url": f"{hub.endpoint}/alice/digits/commit/{commit.oid}",
        "tag": "v20240102-aaaa1111",
    }


def test_second_version_and_production_tag_moves(hub, reg):
    from freestack.registry.hub import promote_on_hub, push_to_hub

    push_to_hub(reg, "v20240102-aaaa1111", "alice/digits", TOKEN, endpoint=hub.endpoint)
    reg.promote("v20240102-aaaa1111")
    assert promote_on_hub("alice/digits", "v20240102-aaaa1111", TOKEN, endpoint=hub.endpoint)
    repo = hub.repos["alice/digits"]
    first = repo.tags["v20240102-aaaa1111"]
    assert repo.tags["production"] == first
    push_to_hub(reg, "v20240103-bbbb2222", "alice/digits", TOKEN, endpoint=hub.endpoint)  # repo exists: ok
    assert len(repo.commits) == 2 and len(hub.calls("POST", r"/commit/")) == 2
    second = repo.tags["v20240103-bbbb2222"]
    assert second != first
    assert promote_on_hub("alice/digits", "v20240103-bbbb2222", TOKEN, endpoint=hub.endpoint)
    assert repo.tags["production"] == second
    deletes = hub.calls("DELETE", r"/tag/production$")
    assert len(deletes) == 2  # the first found nothing (404, ignored), the second moved the tag
    # a branch instead of a tag
    assert promote_on_hub("alice/digits", "v20240102-aaaa1111", TOKEN, endpoint=hub.endpoint, kind="branch")
    assert repo.branches["production"] == first


def test_load_from_hub_at_a_revision(hub, reg, tmp_path):
    from freestack.registry.hub import load_from_hub, promote_on_hub, push_to_hub

    push_to_hub(reg, "v20240102-aaaa1111", "alice/digits", TOKEN, endpoint=hub.endpoint)
    push_to_hub(reg, "v20240103-bbbb2222", "alice/digits", TOKEN, endpoint=hub.endpoint)
    promote_on_hub("alice/digits", "v20240102-aaaa1111", TOKEN, endpoint=hub.endpoint)
    x = sample_input()
    cache = tmp_path / "hf-cache"
    for rev, src in (
        ("v20240102-aaaa1111", "c1"),
        ("v20240103-bbbb2222", "c2"),
        ("production", "c1"),
        ("main", "c2"),
    ):
        net = load_from_hub("alice/digits", rev, endpoint=hub.endpoint, cache_dir=cache).model
        assert torch.allclose(net.predict_proba(x), source_predictions(tmp_path / src, x)), rev
    assert not hub.calls(pattern=r"pytorch_model\.bin")  # safetensors only


def test_without_a_token_nothing_is_pushed(hub, reg):
    from freestack.registry.hub import promote_on_hub, push_to_hub

    assert push_to_hub(reg, "v20240102-aaaa1111", "alice/digits", None, endpoint=hub.endpoint) is None
    assert promote_on_hub("alice/digits", "v20240102-aaaa1111", None, endpoint=hub.endpoint) is False
    assert hub.requests == []  # the Hub heard nothing: the version stays local


def test_hook_reads_the_huggingface_connection(monkeypatch):
    from freestack.errors import FreestackError
    from freestack.hooks.huggingface import HuggingFaceHook

    monkeypatch.delenv("AIRFLOW_CONN_HUGGINGFACE_DEFAULT", raising=False)
    assert not HuggingFaceHook().settings.enabled  # no connection: local only
    monkeypatch.setenv(
        "AIRFLOW_CONN_HUGGINGFACE_DEFAULT",
        json.dumps(
            {"conn_type": "huggingface", "password": TOKEN, "extra": {"endpoint": "http://127.0.0.1:1/"}}
        ),
    )
    s = HuggingFaceHook().settings
    assert s.token == TOKEN and s.endpoint == "http://127.0.0.1:1" and TOKEN not in repr(s)
    assert (HuggingFaceHook().token(), HuggingFaceHook().endpoint()) == (TOKEN, "http://127.0.0.1:1")
    with pytest.raises(FreestackError, match="conn_type 'huggingface'"):
        HuggingFaceHook("hf_missing").settings  # noqa: B018
    ok, msg = HuggingFaceHook().test_connection()
    assert not ok
    assert HuggingFaceHook.get_ui_field_behaviour()["relabeling"]["password"].startswith("Access token")


@pytest.mark.skipif(
    not os.environ.get("HF_TOKEN"),
    reason="HF_TOKEN is not set: no Hugging Face Hub account to push to (the HTTP-boundary "
    "tests above cover the push)",
)
def test_push_to_the_real_hub(reg, tmp_path):  # pragma: no cover - needs an account and the internet
    from huggingface_hub import HfApi

    from freestack.registry.hub import load_from_hub, promote_on_hub, push_to_hub

    token = os.environ["HF_TOKEN"]
    api = HfApi(token=token)
    repo_id = f"{api.whoami()['name']}/freestack-test-{uuid.uuid4().hex[:8]}"
    try:
        out = push_to_hub(reg, "v20240102-aaaa1111", repo_id, token, private=True)
        promote_on_hub(repo_id, "v20240102-aaaa1111", token)
        refs = api.list_repo_refs(repo_id)
        assert {t.name for t in refs.tags} == {"v20240102-aaaa1111", "production"}
        files = set(api.list_repo_files(repo_id, revision="v20240102-aaaa1111"))
        assert VERSION_FILES <= files and "_REGISTERED.json" not in files
        x = sample_input()
        net = load_from_hub(repo_id, "production", token=token, cache_dir=tmp_path / "cache").model
        assert torch.allclose(net.predict_proba(x), source_predictions(tmp_path / "c1", x))
        assert {t.target_commit for t in refs.tags} == {out["commit"]}
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_a_custom_model_travels_with_its_module_and_loads_only_when_trusted(hub, tmp_path):
    from freestack.ml.contract import FeatureGroup, ModelInputs
    from freestack.ml.custom import CustomNet, build_custom
    from freestack.registry.core import ModelRegistry, RegistryError
    from freestack.registry.hub import load_from_hub
    from tests.unit.ml.test_custom_model import GOOD

    folder = make_model_folder(tmp_path / "c")
    (tmp_path / "my_net.py").write_text(GOOD)
    inputs = ModelInputs(
        "classification", 3, {"numeric": FeatureGroup("numeric", [f"f{i}" for i in range(6)], 6)}, [0, 1, 2]
    )
    net = build_custom(str(tmp_path / "my_net.py"), "TinyNet", {"hidden": 8}, inputs, tmp_path)
    net.save_pretrained(folder)
    reg = ModelRegistry((tmp_path / "store").as_uri(), "houses")
    reg.register(folder.as_uri(), "v1")
    assert isinstance(reg.load("v1").model, CustomNet)
    push_to_hub(reg, "v1", "alice/houses", TOKEN, endpoint=hub.endpoint)
    assert "module.py" in hub.repos["alice/houses"].commits[0].files
    cache = tmp_path / "hf-cache"
    with pytest.raises(RegistryError, match="trust_remote_code=True"):
        load_from_hub("alice/houses", "v1", endpoint=hub.endpoint, cache_dir=cache)
    loaded = load_from_hub(
        "alice/houses", "v1", endpoint=hub.endpoint, cache_dir=cache, trust_remote_code=True
    ).model
    x = torch.rand(4, 6)
    assert isinstance(loaded, CustomNet) and torch.equal(loaded.predict_proba(x), net.predict_proba(x))
