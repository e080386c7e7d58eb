"""The ML views' reads on real S3 servers (moto, SeaweedFS) and on data:// over them: the same registry
and sweep, through the storage layer only (one batched read per page, no file:// path)."""

from __future__ import annotations

import pytest
import yaml

from bench.ui.volume import make_registry, make_sweep
from tests.support.demo_sandbox import ROOT

pytestmark = pytest.mark.s3


def _spec(tmp_path, root: str):
    from freestack.spec import load_spec

    data = yaml.safe_load((ROOT / "include" / "pipelines" / "digits.yaml").read_text())
    data["storage_root"] = root
    path = tmp_path / "specs" / "digits.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_spec(path)


def _check(spec, root: str) -> None:
    from freestack.storage import join, to_path, write_bytes
    from freestack.ui.catalog import model_pages, sweep_pages

    names = make_registry(root, "digits", 25)
    write_bytes(join(to_path(root), "registry", "digits", "v-unfinished", "config.json"), b"{}")  # no marker
    sweep_id = make_sweep(root, "digits", 30, epochs=4)
    page = model_pages.model_page("digits", spec)
    assert [v.version for v in page.versions] == names and page.aliases["production"] == names[-1]
    assert all(v.gate.decision in ("promoted", "blocked") and v.partitions == 5 for v in page.versions)
    version = model_pages.version_page("digits", spec, "staging")
    assert version.row.version == names[-3] and "README.md" in version.files
    assert b"".join(model_pages.version_file_chunks(spec, names[-3], "README.md")).startswith(b"---")
    sweep = sweep_pages.sweep_page("digits", spec, sweep_id)
    assert len(sweep.trials) == 30 and sweep.best is not None and all(t.history for t in sweep.trials)
    assert [s.sweep_id for s in sweep_pages.sweeps(spec)] == [sweep_id]


def test_views_read_a_registry_and_a_sweep_on_s3(s3_conn, tmp_path):
    root = s3_conn.uri("root")
    _check(_spec(tmp_path, root), root)
    assert "root/registry/digits/aliases.json" in s3_conn.keys("root/registry/")


def test_views_read_a_registry_and_a_sweep_on_data_api_storage(data_conn, tmp_path):
    root = "data://.my/views"
    _check(_spec(tmp_path, root), root)
    assert any(k.startswith("data/alice/views/registry/digits/") for k in data_conn.keys("data/"))
