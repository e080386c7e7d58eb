"""The landing sensor and its trigger see the interval's files as ingest reads them: an image folder's
images in their label folders; for a table with image columns, a table file, not an image that landed
first."""

from __future__ import annotations

from pathlib import Path

import yaml

from freestack.ingest.triggers import LandingTrigger, _has_files
from tests.support.landing_kinds import GLYPHS_SPEC, SHOP_SPEC, png

DS = "2026-11-03"


def _spec_file(tmp_path: Path, spec: dict, storage: str) -> str:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump({**spec, "storage_root": storage}))
    return str(path)


def test_an_image_folder_is_found_through_its_label_folders(tmp_path, storage):
    import numpy as np

    spec_path = _spec_file(tmp_path, GLYPHS_SPEC, storage)
    folder = Path(storage.removeprefix("file://")) / "landing" / "glyphs" / DS
    (folder / "7").mkdir(parents=True)
    assert _has_files(folder.as_uri(), spec_path, DS) == []  # an empty label folder is not data yet
    (folder / "7" / "a.png").write_bytes(png(np.zeros((4, 4))))
    assert _has_files(folder.as_uri(), spec_path, DS) == ["a.png"]


def test_an_image_that_lands_before_its_table_is_not_the_data(tmp_path, storage):
    import numpy as np

    spec_path = _spec_file(tmp_path, SHOP_SPEC, storage)
    folder = Path(storage.removeprefix("file://")) / "landing" / "shop" / DS
    folder.mkdir(parents=True)
    (folder / "first.png").write_bytes(png(np.zeros((4, 4))))
    assert _has_files(folder.as_uri(), spec_path, DS) == []
    (folder / "sales.csv").write_text("id,price,colour,review,photo,returned\n")
    assert _has_files(folder.as_uri(), spec_path, DS) == ["sales.csv"]
    trigger = LandingTrigger(folder.as_uri(), 5, spec_path, DS)
    path, kwargs = trigger.serialize()
    assert (
        path == "freestack.ingest.triggers.LandingTrigger"
        and kwargs["spec_path"] == spec_path
        and kwargs["ds"] == DS
    )
    assert _has_files(folder.as_uri()) == ["first.png", "sales.csv"]  # a trigger deferred without a spec


def test_a_0_byte_file_has_not_arrived_yet(tmp_path, storage):
    spec_path = _spec_file(tmp_path, SHOP_SPEC, storage)
    folder = Path(storage.removeprefix("file://")) / "landing" / "shop" / DS
    folder.mkdir(parents=True)
    (folder / "sales.csv").write_bytes(b"")  # a writer that creates the file before it writes
    assert _has_files(folder.as_uri(), spec_path, DS) == []
    (folder / "sales.csv").write_text("id,price,colour,review,photo,returned\n")
    assert _has_files(folder.as_uri(), spec_path, DS) == ["sales.csv"]
