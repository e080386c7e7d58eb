"""A model server may be given an alias instead of a version: ``<root>/registry/<model>@production`` is
resolved through ``registry/<model>/aliases.json`` when the model loads (freestack_server.core.fetch and
plugins/freestack_server/seldon/model.py), so the scaled-out stack's model server serves whatever is in production."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from freestack_server.core.fetch import FetchError, FetchSource, resolve_uri, split_alias
from tests.support.serving import make_version

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            "s3://freestack_s3@bucket/freestack/registry/digits@production",
            ("s3://freestack_s3@bucket/freestack/registry/digits", "digits", "production"),
        ),
        ("s3://bucket/registry/digits@staging/", ("s3://bucket/registry/digits", "digits", "staging")),
        ("file:///srv/storage/registry/m@previous", ("file:///srv/storage/registry/m", "m", "previous")),
        ("/srv/storage/registry/m@production", ("/srv/storage/registry/m", "m", "production")),
        ("data://.my/ml/registry/m@production", ("data://.my/ml/registry/m", "m", "production")),
    ],
)
def test_split_alias_recognises_registry_alias_uris(uri, expected):
    assert split_alias(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "s3://freestack_s3@bucket/freestack/registry/digits/v20261105-1a2b3c4d",  # a version: the conn@ is no alias
        "s3://freestack_s3@bucket",
        "s3://conn@bucket/registry",
        "file:///srv/storage/models/m@production",  # not under registry/
        "file:///srv/storage/registry/m@Production",  # not an alias name
        "file:///srv/storage/registry/@production",  # no model
        "file:///srv/storage/registry/m@../../x",
    ],
)
def test_split_alias_leaves_everything_else_alone(uri):
    assert split_alias(uri) is None


def test_version_uris_are_returned_unchanged_without_reading(tmp_path):
    missing = (tmp_path / "nowhere" / "registry" / "m" / "v1").as_uri()
    assert resolve_uri(missing) == missing  # nothing exists there: nothing was read
    assert resolve_uri("s3://conn@bucket/registry/m/v1") == "s3://conn@bucket/registry/m/v1"


@pytest.fixture
def registry(tmp_path):
    """Two registered versions of model 'm' in a file:// registry; nothing promoted yet."""
    from freestack.registry.core import ModelRegistry

    root = (tmp_path / "storage").as_uri()
    uris = {v: make_version(root, "m", v, tmp_path, seed=i) for i, v in enumerate(("v1", "v2"), start=1)}
    return {
        "root": root,
        "uris": uris,
        "reg": ModelRegistry(root, "m"),
        "alias": f"{root}/registry/m@production",
    }


def test_alias_resolves_to_the_version_it_names_now(registry):
    reg, alias = registry["reg"], registry["alias"]
    with pytest.raises(FetchError, match="no version has been promoted to 'production'"):
        resolve_uri(alias)
    reg.promote("v1")
    assert resolve_uri(alias) == registry["uris"]["v1"]
    reg.promote("v2")  # a promotion is seen by the next resolution
    assert resolve_uri(alias) == registry["uris"]["v2"]
    assert resolve_uri(alias.replace("@production", "@previous")) == registry["uris"]["v1"]
    with pytest.raises(FetchError, match=r"no 'staging' alias \(aliases: previous, production\)"):
        resolve_uri(alias.replace("@production", "@staging"))
    with pytest.raises(FetchError, match="model 'nope' has no aliases.json"):
        resolve_uri(alias.replace("/m@", "/nope@"))


def test_alias_file_cannot_point_outside_the_model(registry, tmp_path):
    folder = Path(registry["root"].removeprefix("file://")) / "registry" / "m"
    (folder / "aliases.json").write_text(json.dumps({"production": "../../../etc"}))
    with pytest.raises(FetchError, match="not a version name"):
        resolve_uri(registry["alias"])


def test_the_server_reads_the_version_the_alias_names_and_checks_it(registry, tmp_path):
    from freestack import version

    registry["reg"].promote("v2")
    uri = resolve_uri(registry["alias"])
    opened = version.open(uri, FetchSource(uri))
    assert opened.manifest.version == "v2"
    opened.verify(copy_to=tmp_path / "cache")
    expected = Path(registry["uris"]["v2"].removeprefix("file://"))
    for name in ("config.json", "model.safetensors", "preprocessing.json"):
        assert (tmp_path / "cache" / name).read_bytes() == (expected / name).read_bytes()


def _serving_python() -> str | None:
    env = os.environ.get("FREESTACK_SERVING_PYTHON")
    py = Path(env) if env else ROOT / ".venv-serving" / "bin" / "python"
    return str(py) if py.exists() else None


@pytest.mark.skipif(
    _serving_python() is None, reason="the serving environment is missing: run `make serving-venv`"
)
def test_seldon_model_class_serves_the_production_version_it_resolved(registry, tmp_path):
    """plugins/freestack_server/seldon/model.py in the serving environment (seldon-core 1.17.1, no Airflow): the alias is
    read once, and the version it named is the one described, loaded and reported, even when production
    moves on between Seldon's describe (in gunicorn's master) and the load (in each worker)."""
    registry["reg"].promote("v1")
    script = f"""
import json, sys
from freestack_server.seldon.model import Model
m = Model(model_uri={registry["alias"]!r})
first = m.init_metadata()
print("described", flush=True)
sys.stdin.readline()
m.load()
meta = m.init_metadata()
print(json.dumps({{"version": m.version, "tags": m.tags(), "first": first["versions"], "custom": meta["custom"]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PYTHONPATH=str(ROOT / "plugins"), FREESTACK_SERVING_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [_serving_python(), "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "described", proc.stderr.read()[-3000:] if proc.poll() is not None else line
        registry["reg"].promote("v2")  # production moves on while the server starts
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["version"] == "v1" and got["first"] == ["v1"] and got["tags"]["model_version"] == "v1"
    assert got["custom"]["model_uri"] == registry["uris"]["v1"]
    assert got["custom"]["requested_uri"] == registry["alias"]
    # a new server (what the compose model-server does after a promotion) gets the new version
    assert resolve_uri(registry["alias"]) == registry["uris"]["v2"]
