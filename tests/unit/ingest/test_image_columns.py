"""Category, text and image columns at ingest: images read from the landing folder (or inline in a
Parquet file) and checked with Pillow, their bytes kept in the lake as they landed; every broken,
oversized, missing or escaping image quarantined with a reason that says what to do; image folders."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from freestack.errors import LandingDataMissing, SpecError
from freestack.ingest.core import ingest_partition
from freestack.ingest.lake import landing_files
from freestack.spec import parse_spec

DS = "2026-11-03"


def image(fmt: str = "PNG", size=(6, 5), colour=(200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _spec(fmt: str = "csv", images: dict | None = None, columns: list | None = None, **schema):
    cols = columns or [
        {"name": "id", "type": "string", "nullable": False},
        {"name": "colour", "type": "category", "allowed": ["red", "blue"]},
        {"name": "review", "type": "text"},
        {"name": "photo", "type": "image"},
        {"name": "label", "type": "string", "nullable": False},
    ]
    source = {
        "format": fmt,
        "schema": {"key": "id", "target": "label", "columns": cols, **schema},
        "policy": {"max_quarantine_fraction": 1.0},
    }
    if images:
        source["images"] = images
    return parse_spec({"name": "shop", "source": source}, "shop.yaml")


def _landing(storage: str) -> Path:
    folder = Path(storage.removeprefix("file://")) / "landing" / "shop" / DS
    folder.mkdir(parents=True)
    return folder


def _lake(storage: str, name: str = "part.parquet") -> list[dict]:
    folder = Path(storage.removeprefix("file://")) / f"lake/shop/ds={DS}"
    path = folder / name if name != "quarantine" else next(folder.glob("_quarantine-*.parquet"))
    return pq.read_table(path).to_pylist()


def test_images_beside_a_csv_are_checked_and_kept_as_bytes(storage):
    folder = _landing(storage)
    (folder / "photos").mkdir()
    good, jpeg = image(), image("JPEG")
    files = {
        "good.png": good,
        "shot.jpg": jpeg,
        "half.png": good[: len(good) // 2],
        "noise.png": b"\x89PNG junk",
        "notes.jpg": b"just some text",
        "huge.png": image(size=(40, 40)),
    }
    for name, data in files.items():
        (folder / "photos" / name).write_bytes(data)
    (folder / "loose.png").write_bytes(good)  # an image beside the CSV is not a table file
    rows = [
        ("1", "red", "fine", "photos/good.png"),
        ("2", "blue", "ok", "photos/shot.jpg"),
        ("3", "red", "x", "photos/half.png"),
        ("4", "red", "x", "photos/noise.png"),
        ("5", "red", "x", "photos/notes.jpg"),
        ("6", "red", "x", "photos/huge.png"),
        ("7", "red", "x", "photos/gone.png"),
        ("8", "red", "x", "../../secret.png"),
        ("9", "red", "x", "/etc/passwd"),
        ("10", "green", "x", "photos/good.png"),
    ]
    (folder / "sales.csv").write_text(
        "id,colour,review,photo,label\n" + "".join(f"{','.join(r)},y\n" for r in rows)
    )
    spec = _spec(images={"max_pixels": 1000})
    assert [p.name for p in landing_files(spec, DS)] == ["sales.csv"]
    result = ingest_partition(spec, DS)
    assert (result.rows_good, result.rows_quarantined) == (2, 8)
    good_rows = {r["id"]: r for r in _lake(storage)}
    assert good_rows["1"]["photo"] == good and good_rows["2"]["photo"] == jpeg  # the bytes as they landed
    assert good_rows["1"]["colour"] == "red" and good_rows["1"]["review"] == "fine"
    reasons = {r["id"]: r["_reason"] for r in _lake(storage, "quarantine")}
    assert reasons["3"].startswith("photo: photos/half.png does not decode as an image (")
    assert reasons["4"] == (
        "photo: photos/noise.png does not decode as an image (not a format Pillow knows); "
        "replace the file or drop the row"
    )
    assert "photos/notes.jpg does not decode as an image" in reasons["5"]
    assert "photos/huge.png is 40x40 pixels, over source.images.max_pixels 1,000" in reasons["6"]
    assert reasons["7"].startswith("photo: photos/gone.png: no such file under the landing folder ")
    assert "'../../secret.png' is not a path inside the landing folder" in reasons["8"]
    assert "'/etc/passwd' is not a path inside the landing folder" in reasons["9"]
    assert reasons["10"] == "colour: not one of the allowed values: 'green'"
    assert {r["photo"] for r in _lake(storage, "quarantine") if r["id"] == "7"} == {"photos/gone.png"}


def test_inline_image_bytes_in_parquet_and_the_byte_and_format_limits(storage):
    folder = _landing(storage)
    gif = image("GIF")
    table = pa.table(
        {
            "id": ["1", "2", "3"],
            "colour": ["red"] * 3,
            "review": ["a", "b", "c"],
            "photo": pa.array([image(), gif, image(size=(60, 60), colour=(1, 2, 3))], pa.binary()),
            "label": ["y"] * 3,
        }
    )
    pq.write_table(table, folder / "batch.parquet")
    limit = len(image(size=(60, 60), colour=(1, 2, 3))) - 1
    result = ingest_partition(_spec("parquet", images={"formats": ["png"], "max_bytes": limit}), DS)
    assert (result.rows_good, result.rows_quarantined) == (1, 2)
    assert _lake(storage)[0]["photo"] == image()
    reasons = {r["id"]: (r["_reason"], r["photo"]) for r in _lake(storage, "quarantine")}
    assert (
        reasons["2"][0]
        == f"photo: <{len(gif):,} bytes> is GIF, not one of source.images.formats ['PNG']; replace the file or drop the row"
    )
    assert f"over source.images.max_bytes {limit:,}" in reasons["3"][0] and reasons["3"][1].endswith(
        " bytes>"
    )


FOLDER_COLUMNS = [
    {"name": "path", "type": "string", "nullable": False},
    {"name": "picture", "type": "image"},
    {"name": "kind", "type": "category", "nullable": False},
]


def test_an_image_folder_is_a_row_per_image_labelled_by_its_folder(storage):
    folder = _landing(storage)
    for label, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (folder / label).mkdir()
        for i in range(3):
            (folder / label / f"{i}.png").write_bytes(image(colour=colour))
    (folder / "dog" / "broken.png").write_bytes(b"not an image")
    (folder / "stray.png").write_bytes(image())
    spec = _spec("imagefolder", columns=FOLDER_COLUMNS, key="path", target="kind")
    result = ingest_partition(spec, DS)
    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (8, 6, 2)
    good = sorted((r["path"], r["kind"]) for r in _lake(storage))
    assert good == [
        ("cat/0.png", "cat"),
        ("cat/1.png", "cat"),
        ("cat/2.png", "cat"),
        ("dog/0.png", "dog"),
        ("dog/1.png", "dog"),
        ("dog/2.png", "dog"),
    ]
    assert all(r["picture"] == (folder / r["path"]).read_bytes() for r in _lake(storage))
    reasons = sorted(r["_reason"] for r in _lake(storage, "quarantine"))
    assert reasons[0].startswith("picture: dog/broken.png does not decode as an image")
    assert reasons[1].startswith(
        "picture: stray.png is not in a label folder; an image folder holds one sub-folder per label"
    )
    assert [s["name"] for s in result.sources] == ["cat", "dog", "stray.png"] and result.sources[0][
        "rows"
    ] == 3


def test_an_empty_image_folder_is_missing_data(storage):
    _landing(storage)
    with pytest.raises(LandingDataMissing):
        ingest_partition(_spec("imagefolder", columns=FOLDER_COLUMNS, key="path", target="kind"), DS)


@pytest.mark.parametrize(
    ("columns", "schema", "words"),
    [
        (
            FOLDER_COLUMNS[:2],
            {"key": "path", "target": "path"},
            "source.format imagefolder: declare exactly three columns",
        ),
        (
            [FOLDER_COLUMNS[0], {"name": "picture", "type": "string"}, FOLDER_COLUMNS[2]],
            {"key": "path", "target": "kind"},
            "one image column",
        ),
        (
            [{"name": "path", "type": "int", "nullable": False}, *FOLDER_COLUMNS[1:]],
            {"key": "path", "target": "kind"},
            "the key (type string",
        ),
    ],
)
def test_an_image_folder_spec_names_the_columns_it_needs(columns, schema, words):
    with pytest.raises(SpecError) as err:
        _spec("imagefolder", columns=columns, **schema)
    assert words in str(err.value), err.value


def test_allowed_is_for_categories_not_text_or_images():
    cols = [
        {"name": "id", "type": "string", "nullable": False},
        {"name": "t", "type": "text", "allowed": ["a"]},
        {"name": "label", "type": "string", "nullable": False},
    ]
    with pytest.raises(
        SpecError,
        match="allowed does not apply to text columns; a column of a few known values is a category",
    ):
        _spec(columns=cols)
