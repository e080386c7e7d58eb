"""The version page's notebook lines: the three Python lines in ``<pre id="notebook-lines">`` that load the
version in a notebook. They are read off the rendered page (through the views app, login stubbed) and run as
printed against a real registered digits version (tests/fixtures/versions/digits), giving the model the
registry itself loads."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pytest

from tests.support.demo_sandbox import ROOT
from tests.unit.ui.test_extra_pages import client, digits  # noqa: F401 (the views app on the digits spec)

FIXTURE = ROOT / "tests" / "fixtures" / "versions" / "digits" / "version"
VERSION = "v20261103-27eaab20"  # the fixture's own name (its manifest records it)


@pytest.fixture
def registered(storage) -> str:
    """The fixture version, committed under the storage root's registry as the gate leaves one."""
    from freestack.storage import to_path

    shutil.copytree(FIXTURE, Path(to_path(storage).path) / "registry" / "digits" / VERSION)
    return VERSION


def _lines(page: str) -> list[str]:
    block = re.search(r'<pre id="notebook-lines">(.*?)</pre>', page, re.S)
    assert block, page[:2000]
    return html.unescape(block.group(1)).splitlines()


def test_the_version_page_shows_three_lines_that_load_it(client, registered, storage):  # noqa: F811
    r = client.get(f"/models/digits/{registered}")
    assert r.status_code == 200, r.text
    lines = _lines(r.text)
    assert lines == [
        "from freestack.registry.core import ModelRegistry",
        f"registry = ModelRegistry({storage!r}, 'digits')",
        f"model = registry.load({registered!r}).model",
    ]
    assert client.get(f"/api/models/digits/{registered}").json()["notebook_lines"] == lines  # the JSON too


def test_the_lines_run_as_printed_and_load_the_registered_model(client, registered, storage):  # noqa: F811
    import torch

    from freestack.registry.core import ModelRegistry

    lines = _lines(client.get(f"/models/digits/{registered}").text)
    scope: dict = {}
    exec("\n".join(lines), scope)  # noqa: S102  (the page's own lines, as a notebook cell runs them)
    model = scope["model"]
    assert model.features[:2] == ["px_0", "px_1"] and list(model.classes) == list(range(10))
    rows = torch.rand(4, 64) * 16
    expected = ModelRegistry(storage, "digits").load(registered).model
    assert torch.equal(model.predict(rows), expected.predict(rows))
