"""``source.format: imagefolder`` on real files: one sub-folder per label, a row per image (key: the
image's path, target: its folder, image: its bytes); corrupt, oversized and unlabelled images quarantined
with their reasons; an interval without images is missing data; a schema that does not fit is a spec
error naming the field."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from freestack.errors import LandingDataMissing, SpecError
from freestack.ingest.core import ingest_partition
from freestack.ingest.lake import landing_files, read_manifest
from freestack.spec import parse_spec

DS = "2026-11-05"
COLUMNS = [
    {"name": "path", "type": "string", "nullable": False},
    {
        "name": "label",
        "type": "category",
        "nullable": False,
    },  # before the image: reasons still name the image
    {"name": "image", "type": "image", "nullable": False},
]


def image(fmt: str = "PNG", size=(12, 12), colour=(0, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def spec(
    columns: list | None = None,
    *,
    images: dict | None = None,
    key: str | None = "path",
    target: str | None = "label",
):
    schema = {"key": key, "target": target, "columns": columns or COLUMNS}
    source = {"format": "imagefolder", "schema": schema, "policy": {"max_quarantine_fraction": 1.0}}
    if images is not None:
        source["images"] = images
    return parse_spec({"name": "glyphs", "source": source}, "glyphs.yaml")


def landing(storage: str) -> Path:
    folder = Path(storage.removeprefix("file://")) / "landing" / "glyphs" / DS
    folder.mkdir(parents=True)
    return folder


def partition(storage: str) -> Path:
    return Path(storage.removeprefix("file://")) / "lake" / "glyphs" / f"ds={DS}"


def quarantine(storage: str) -> dict[str, dict]:
    (path,) = partition(storage).glob("_quarantine-*.parquet")
    return {r["path"]: r for r in pq.read_table(path).to_pylist()}


def folder_record(folder: Path, label: str) -> dict:
    """The source record the manifest should hold for a label folder."""
    files = sorted(p for p in (folder / label).iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    lines = sorted(f"{label}/{p.name}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in files)
    return {
        "name": label,
        "format": "imagefolder",
        "rows": len(files),
        "size": sum(p.stat().st_size for p in files),
        "sha256": hashlib.sha256("".join(lines).encode()).hexdigest(),
    }


def test_a_row_per_image_labelled_by_its_folder_with_broken_images_quarantined(storage):
    folder = landing(storage)
    good = {
        "cat/001.png": image(colour=(250, 0, 0)),
        "cat/002.jpg": image("JPEG", colour=(200, 0, 0)),
        "dog/001.png": image(colour=(0, 0, 250)),
        "dog/002.bmp": image("BMP", colour=(0, 0, 200)),
    }
    half = image(size=(40, 40), colour=(9, 9, 9))
    bad = {
        "cat/noise.png": bytes(range(200)),
        "dog/half.png": half[: len(half) // 2],
        "dog/readme.jpg": b"a text file named .jpg\n",
        "dog/big.png": image(size=(100, 100)),
    }
    for rel, data in {**good, **bad}.items():
        (folder / rel).parent.mkdir(exist_ok=True)
        (folder / rel).write_bytes(data)
    (folder / "stray.png").write_bytes(image())  # no label folder
    (folder / "_SUCCESS").write_bytes(b"")  # markers and hidden files are not images
    (folder / "cat" / ".DS_Store").write_bytes(b"\x00")
    (folder / "cat" / "deeper").mkdir()
    (folder / "cat" / "deeper" / "x.png").write_bytes(image())  # deeper folders are not read
    s = spec(images={"max_pixels": 2500})
    assert len(landing_files(s, DS)) == 9

    result = ingest_partition(s, DS)
    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (9, 4, 5)
    table = pq.read_table(partition(storage) / "part.parquet")
    assert table.schema.field("image").type == pa.binary() and table.schema.field("label").type == pa.string()
    assert {r["path"]: (r["label"], r["image"]) for r in table.to_pylist()} == {
        rel: (rel.split("/")[0], data) for rel, data in good.items()
    }
    q = quarantine(storage)
    assert q["cat/noise.png"]["_reason"] == (
        "image: cat/noise.png does not decode as an image (not a format Pillow "
        "knows); replace the file or drop the row"
    )
    assert q["dog/half.png"]["_reason"].startswith("image: dog/half.png does not decode as an image (")
    assert q["dog/readme.jpg"]["_reason"].startswith("image: dog/readme.jpg does not decode as an image")
    assert q["dog/big.png"]["_reason"] == (
        "image: dog/big.png is 100x100 pixels, over source.images.max_pixels 2,500; "
        "replace the file or drop the row"
    )
    assert q["stray.png"]["_reason"] == (
        "image: stray.png is not in a label folder; an image folder holds one "
        "sub-folder per label (label/file.png): move the file into its label's folder"
    )
    assert q["dog/big.png"]["label"] == "dog" and q["dog/big.png"]["image"] == "dog/big.png"
    assert q["stray.png"]["label"] is None and q["stray.png"]["_source"] == "stray.png"

    manifest = read_manifest(s, DS)
    assert (manifest["rows_in"], manifest["rows_good"], manifest["rows_quarantined"]) == (9, 4, 5)
    stray = (folder / "stray.png").read_bytes()
    assert manifest["sources"] == [
        folder_record(folder, "cat"),
        folder_record(folder, "dog"),
        {
            "name": "stray.png",
            "format": "imagefolder",
            "rows": 1,
            "size": len(stray),
            "sha256": hashlib.sha256(
                f"stray.png\t{hashlib.sha256(stray).hexdigest()}\n".encode()
            ).hexdigest(),
        },
    ]
    assert [s["rows"] for s in manifest["sources"]] == [3, 5, 1]
    saved = json.loads((partition(storage) / "_manifest.json").read_text())
    assert saved["sources"] == manifest["sources"]


def test_many_images_of_a_label_are_read_a_few_at_a_time_and_rerun_byte_identically(storage):
    folder = landing(storage)
    for label in ("a", "b"):
        (folder / label).mkdir()
        for i in range(20):
            (folder / label / f"{i:02d}.png").write_bytes(image(colour=(i, ord(label), 0)))
    (folder / "b" / "05.png").write_bytes(b"broken")
    s = spec(images={"max_bytes": 1 << 27})  # 8 images at a time
    first = ingest_partition(s, DS)
    assert (first.rows_good, first.rows_quarantined) == (39, 1)
    paths = pq.read_table(partition(storage) / "part.parquet").column("path").to_pylist()
    assert paths == [
        f"{label}/{i:02d}.png" for label in ("a", "b") for i in range(20) if (label, i) != ("b", 5)
    ]
    again = ingest_partition(s, DS)
    assert (
        again.part["sha256"] == first.part["sha256"]
        and again.quarantine["sha256"] == first.quarantine["sha256"]
    )


def test_the_target_is_checked_like_any_category(storage):
    folder = landing(storage)
    for label in ("cat", "horse"):
        (folder / label).mkdir()
        (folder / label / "1.png").write_bytes(image())
    cols = [COLUMNS[0], {**COLUMNS[1], "allowed": ["cat", "dog"]}, COLUMNS[2]]
    result = ingest_partition(spec(cols), DS)
    assert (result.rows_good, result.rows_quarantined) == (1, 1)
    assert quarantine(storage)["horse/1.png"]["_reason"] == "label: not one of the allowed values: 'horse'"


@pytest.mark.parametrize("make", ["nothing", "empty label folders", "only markers", "only 0-byte images"])
def test_an_interval_without_images_is_missing_landing_data(storage, make):
    folder = landing(storage)
    if make == "empty label folders":
        (folder / "cat").mkdir()
        (folder / "dog").mkdir()
    elif make == "only markers":
        (folder / "_SUCCESS").write_bytes(b"")
        (folder / "cat").mkdir()
        (folder / "cat" / ".hidden.png").write_bytes(image())
    elif make == "only 0-byte images":  # files created, never written: not an all-quarantined partition
        for name in ("cat/1.png", "cat/2.png", "dog/3.jpg"):
            (folder / name).parent.mkdir(exist_ok=True)
            (folder / name).write_bytes(b"")
    words = "its files hold no rows \\(cat: 0 bytes; dog: 0 bytes\\)" if make == "only 0-byte images" else ""
    with pytest.raises(
        LandingDataMissing, match=f"no landing data for pipeline 'glyphs' interval 2026-11-05.*{words}"
    ):
        ingest_partition(spec(), DS)
    assert not partition(storage).exists()


@pytest.mark.parametrize(
    ("columns", "schema", "words"),
    [
        (
            [*COLUMNS, {"name": "extra", "type": "int"}],
            {},
            "source.schema.columns has ['extra'], which an image folder gives no values for",
        ),
        (
            [COLUMNS[0], COLUMNS[1], {**COLUMNS[2], "type": "string"}],
            {},
            "source.schema.columns has 0 image columns (none): declare one",
        ),
        (
            [{**COLUMNS[0], "type": "int"}, *COLUMNS[1:]],
            {},
            "source.schema.key 'path' is type int: make it type string",
        ),
        (
            [COLUMNS[0], {**COLUMNS[1], "type": "float"}, COLUMNS[2]],
            {},
            "source.schema.target 'label' is type float",
        ),
        (COLUMNS, {"target": None}, "source.schema.target is not set"),
        (COLUMNS, {"key": None}, "source.schema.key is not set"),
        (
            [COLUMNS[0], COLUMNS[2]],
            {"target": "path"},
            "source.schema.key and source.schema.target are both 'path'",
        ),
    ],
)
def test_a_schema_that_does_not_fit_an_image_folder_is_a_spec_error_naming_the_field(columns, schema, words):
    with pytest.raises(SpecError) as err:
        spec(columns, **schema)
    assert err.value.field == "source.schema", err.value
    assert err.value.detail.startswith(
        "source.format imagefolder: declare exactly three columns: the key (type string"
    )
    assert words in err.value.detail, err.value.detail
