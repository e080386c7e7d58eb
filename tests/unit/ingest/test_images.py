"""Category, text and image columns at ingest, on real files: images named by path in CSV and JSON-lines
rows (or inline in Parquet) are read through the storage layer (file:// and data://), checked with Pillow
and kept in the lake as the bytes that landed; every corrupt, truncated, oversized, missing or escaping
image sends its row to the quarantine with a reason that names the column, the file and what to do."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from freestack.errors import QuarantineLimitExceeded, SpecError
from freestack.ingest.core import ingest_partition
from freestack.ingest.images import image_problem, image_rows, relative_path
from freestack.ingest.lake import landing_files, read_manifest
from freestack.ingest.spec import ImageOptions
from freestack.spec import parse_spec

DS = "2026-11-03"
COLUMNS = [
    {"name": "id", "type": "string", "nullable": False},
    {"name": "colour", "type": "category", "allowed": ["red", "blue"]},
    {"name": "review", "type": "text"},
    {"name": "photo", "type": "image"},
    {"name": "label", "type": "string", "nullable": False},
]


def image(fmt: str = "PNG", size=(8, 6), colour=(200, 30, 90)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format=fmt)
    return buf.getvalue()


def spec(
    fmt: str = "csv",
    *,
    images: dict | None = None,
    columns: list | None = None,
    landing: str | None = None,
    limit: float = 1.0,
):
    source = {
        "format": fmt,
        "schema": {"key": "id", "target": "label", "columns": columns or COLUMNS},
        "policy": {"max_quarantine_fraction": limit},
    }
    if images is not None:
        source["images"] = images
    if landing is not None:
        source["landing"] = landing
    return parse_spec({"name": "shop", "source": source}, "shop.yaml")


def landing(storage: str) -> Path:
    folder = Path(storage.removeprefix("file://")) / "landing" / "shop" / DS
    folder.mkdir(parents=True)
    return folder


def partition(storage: str) -> Path:
    return Path(storage.removeprefix("file://")) / "lake" / "shop" / f"ds={DS}"


def lake(storage: str) -> pa.Table:
    return pq.read_table(partition(storage) / "part.parquet")


def quarantine(storage: str) -> dict[str, dict]:
    (path,) = partition(storage).glob("_quarantine-*.parquet")
    return {r["id"]: r for r in pq.read_table(path).to_pylist()}


def csv_rows(rows: list[tuple]) -> str:
    """CSV text of (id, colour, review, photo) rows, each labelled ``y``."""
    return "id,colour,review,photo,label\n" + "".join(",".join(r) + ",y\n" for r in rows)


def test_category_and_text_columns_are_strings_and_allowed_applies_to_the_category(storage):
    cols = [
        {"name": "id", "type": "string", "nullable": False},
        {"name": "colour", "type": "category", "allowed": ["red", "blue"], "nullable": False},
        {"name": "review", "type": "text"},
        {"name": "label", "type": "category", "nullable": False},
    ]
    text = (
        'id,colour,review,label\n1,red,"Sturdy, well made; ""five stars""",yes\n2,blue,,no\n'
        "3,green,nice,yes\n4,,missing colour,no\n5,red,\u00e9t\u00e9 parfait,no\n"
    )
    (landing(storage) / "sales.csv").write_text(text, encoding="utf-8")
    result = ingest_partition(spec(columns=cols), DS)
    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (5, 3, 2)
    table = lake(storage)
    assert [str(f.type) for f in table.schema] == ["string"] * 4
    assert table.to_pylist() == [
        {"id": "1", "colour": "red", "review": 'Sturdy, well made; "five stars"', "label": "yes"},
        {"id": "2", "colour": "blue", "review": None, "label": "no"},
        {"id": "5", "colour": "red", "review": "\u00e9t\u00e9 parfait", "label": "no"},
    ]
    reasons = {k: r["_reason"] for k, r in quarantine(storage).items()}
    assert reasons == {
        "3": "colour: not one of the allowed values: 'green'",
        "4": "colour: missing value (column is not nullable)",
    }


@pytest.mark.parametrize("kind", ["category", "text"])
def test_min_and_max_are_refused_for_category_and_text_as_for_strings(kind):
    cols = [
        {"name": "id", "type": "string", "nullable": False},
        {"name": "c", "type": kind, "min": 1},
        {"name": "label", "type": "string", "nullable": False},
    ]
    with pytest.raises(SpecError, match=f"min/max apply to int and float columns, not {kind}"):
        spec(columns=cols)


def test_image_paths_in_a_csv_are_read_checked_and_kept_as_the_bytes_that_landed(storage):
    folder = landing(storage)
    (folder / "images").mkdir()
    png, jpeg = image(), image("JPEG", colour=(10, 200, 10))
    files = {
        "cat_001.png": png,
        "dog.jpg": jpeg,
        "noise.png": bytes(range(256)) * 3,
        "half.png": png[: len(png) // 2],
        "notes.jpg": b"this is a text file\n",
        "big.png": image(size=(300, 200)),
    }
    for name, data in files.items():
        (folder / "images" / name).write_bytes(data)
    (folder / "escape.png").write_bytes(png)  # beside the CSV: an image, not a table file
    (folder / "README.md").write_text("not a table")
    rows = [
        ("1", "red", "fine", "images/cat_001.png"),
        ("2", "blue", "good", "./images/dog.jpg"),
        ("3", "red", "x", "images/noise.png"),
        ("4", "red", "x", "images/half.png"),
        ("5", "red", "x", "images/notes.jpg"),
        ("6", "red", "x", "images/big.png"),
        ("7", "red", "x", "images/gone.png"),
        ("8", "red", "x", "../escape.png"),
        ("9", "red", "x", "/etc/hostname"),
        ("10", "red", "x", "s3://bucket/cat.png"),
        ("11", "blue", "same file again", "images/cat_001.png"),
        ("12", "red", "no photo", ""),
    ]
    (folder / "sales.csv").write_text(csv_rows(rows))
    s = spec(images={"max_pixels": 50_000})
    assert [p.name for p in landing_files(s, DS)] == ["sales.csv"]
    result = ingest_partition(s, DS)

    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (12, 4, 8)
    table = lake(storage)
    assert table.schema.field("photo").type == pa.binary()
    good = {r["id"]: r["photo"] for r in table.to_pylist()}
    assert good == {"1": png, "2": jpeg, "11": png, "12": None}  # the bytes as they landed, not re-encoded
    q = quarantine(storage)
    uri = f"{storage}/landing/shop/{DS}"
    assert q["3"]["_reason"] == (
        "photo: images/noise.png does not decode as an image (not a format Pillow knows); "
        "replace the file or drop the row"
    )
    assert q["4"]["_reason"].startswith("photo: images/half.png does not decode as an image (")
    assert q["4"]["_reason"].endswith("); replace the file or drop the row")
    assert q["5"]["_reason"].startswith("photo: images/notes.jpg does not decode as an image")
    assert q["6"]["_reason"] == (
        "photo: images/big.png is 300x200 pixels, over source.images.max_pixels 50,000; "
        "replace the file or drop the row"
    )
    assert (
        q["7"]["_reason"]
        == f"photo: images/gone.png: no such file under the landing folder {uri}; add it or drop the row"
    )
    for key, path in (("8", "../escape.png"), ("9", "/etc/hostname"), ("10", "s3://bucket/cat.png")):
        assert q[key]["_reason"].startswith(
            f"photo: '{path}' is not a path inside the landing folder; give it relative to {uri}"
        )
    assert {k: r["photo"] for k, r in q.items()} == {
        r[0]: r[3] for r in rows if r[0] in q
    }  # the path, as it landed
    assert all(r["colour"] == "red" and r["_source"] == "sales.csv" for r in q.values())

    manifest = read_manifest(s, DS)
    assert (manifest["rows_in"], manifest["rows_good"], manifest["rows_quarantined"]) == (12, 4, 8)
    landed = (folder / "sales.csv").read_bytes()
    assert manifest["sources"] == [
        {
            "name": "sales.csv",
            "format": "csv",
            "rows": 12,
            "size": len(landed),
            "sha256": hashlib.sha256(landed).hexdigest(),
        }
    ]
    part = (partition(storage) / "part.parquet").read_bytes()
    assert manifest["part"]["sha256"] == hashlib.sha256(part).hexdigest()  # the hash covers the images


def test_an_image_over_max_bytes_or_of_another_format_is_quarantined(storage):
    folder = landing(storage)
    small, large, gif = image(), image(size=(64, 64), colour=(1, 2, 3)), image("GIF")
    for name, data in (("small.png", small), ("large.png", large), ("anim.gif", gif)):
        (folder / name).write_bytes(data)
    rows = [("1", "red", "a", "small.png"), ("2", "red", "b", "large.png"), ("3", "red", "c", "anim.gif")]
    (folder / "sales.csv").write_text(csv_rows(rows))
    s = spec(images={"max_bytes": len(small) + 1, "formats": ["png", "jpeg"]})
    assert s.source.images.formats == ["PNG", "JPEG"]
    result = ingest_partition(s, DS)
    assert (result.rows_good, result.rows_quarantined) == (1, 2)
    q = quarantine(storage)
    assert q["2"]["_reason"] == (
        f"photo: large.png is {len(large):,} bytes, over source.images.max_bytes "
        f"{len(small) + 1:,}; replace the file or drop the row"
    )
    assert q["3"]["_reason"] == (
        "photo: anim.gif is GIF, not one of source.images.formats ['PNG', 'JPEG']; "
        "replace the file or drop the row"
    )


def test_a_decompression_bomb_is_refused_from_its_header():
    def bilevel(side: int) -> bytes:  # a few KB of PNG for a huge bilevel image
        buf = io.BytesIO()
        Image.new("1", (side, side)).save(buf, format="PNG")
        return buf.getvalue()

    opts = ImageOptions()
    assert (
        image_problem(bilevel(12_000), opts)
        == "is 12000x12000 pixels, over source.images.max_pixels 40,000,000"
    )
    assert (
        image_problem(bilevel(12_000), ImageOptions(max_pixels=150_000_000)) is None
    )  # a larger limit is honoured
    assert image_problem(bilevel(14_000), opts).startswith(
        "is over Pillow's decompression-bomb limit (Image size ("
    )


def test_paths_must_stay_inside_the_landing_folder():
    assert relative_path("images/cat_001.png") == "images/cat_001.png"
    assert relative_path("./images\\cat.png") == "images/cat.png"
    for bad in (
        "../x.png",
        "images/../../x.png",
        "%2e%2e/x.png",
        "/etc/passwd",
        "C:/x.png",
        "s3://b/x.png",
        "file:x.png",
        "~/x.png",
        "",
        ".",
    ):
        assert relative_path(bad) is None, bad


def test_json_lines_give_paths_and_parquet_gives_paths_or_the_bytes(storage):
    folder = landing(storage)
    (folder / "img").mkdir()
    a, b, c = image(colour=(1, 1, 1)), image("JPEG", colour=(2, 2, 2)), image("WEBP", colour=(3, 3, 3))
    (folder / "img" / "a.png").write_bytes(a)
    (folder / "img" / "b.jpg").write_bytes(b)
    lines = [
        {"id": "j1", "colour": "red", "review": "ok", "photo": "img/a.png", "label": "y"},
        {"id": "j2", "colour": "red", "review": "ok", "photo": "img/nothere.png", "label": "y"},
    ]
    (folder / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    common = {"colour": ["blue", "blue"], "review": ["r", "r"], "label": ["n", "n"]}
    pq.write_table(
        pa.table({"id": ["p1", "p2"], **common, "photo": pa.array(["img/b.jpg", "img/a.png"])}),
        folder / "b.parquet",
    )
    inline = pa.array(
        [c, b"\x00\x01 not an image"], pa.large_binary()
    )  # large_binary: as polars writes bytes
    pq.write_table(pa.table({"id": ["i1", "i2"], **common, "photo": inline}), folder / "c.parquet")
    result = ingest_partition(spec("parquet"), DS)
    assert (result.rows_in, result.rows_good, result.rows_quarantined) == (6, 4, 2)
    assert {r["id"]: r["photo"] for r in lake(storage).to_pylist()} == {"j1": a, "p1": b, "p2": a, "i1": c}
    q = quarantine(storage)
    assert q["j2"]["_reason"].startswith("photo: img/nothere.png: no such file under the landing folder ")
    assert q["i2"]["_reason"] == (
        "photo: <15 bytes> does not decode as an image (not a format Pillow knows); "
        "replace the file or drop the row"
    )
    assert q["i2"]["photo"] == "<15 bytes>"  # the quarantine shows the size of inline bytes, not the bytes


def test_many_rows_are_checked_a_few_at_a_time_in_order_with_duplicate_keys_caught(storage):
    folder = landing(storage)
    pics = [image(colour=(i, 0, 0)) for i in range(5)]
    for i, data in enumerate(pics):
        (folder / f"{i}.png").write_bytes(data)
    (folder / "broken.png").write_bytes(pics[0][:30])
    rows = [(f"k{i:03d}", "red", "t", f"{i % 5}.png") for i in range(40)]
    rows[17] = ("k017", "red", "t", "broken.png")
    rows[33] = ("k003", "red", "t", "1.png")  # a key of an earlier slice
    (folder / "sales.csv").write_text(csv_rows(rows))
    s = spec(images={"max_bytes": 1 << 27})
    assert image_rows(s.source.images) == 8  # 40 rows: five slices
    result = ingest_partition(s, DS)
    assert (result.rows_good, result.rows_quarantined) == (38, 2)
    good = lake(storage).to_pylist()
    assert [r["id"] for r in good] == [r[0] for i, r in enumerate(rows) if i not in (17, 33)]
    assert all(r["photo"] == pics[int(r["id"][1:]) % 5] for r in good)
    q = quarantine(storage)
    assert q["k017"]["_reason"].startswith("photo: broken.png does not decode as an image")
    assert q["k003"]["_reason"] == "id: duplicate key (an earlier row has it): 'k003'"


def test_the_same_landing_bytes_give_the_same_partition_bytes(storage):
    folder = landing(storage)
    (folder / "a.png").write_bytes(image())
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = [("1", "red", "t", "a.png"), ("2", "red", "t", "bad.png"), ("3", "red", "t", "gone.png")]
    (folder / "sales.csv").write_text(csv_rows(rows))
    first = ingest_partition(spec(), DS)
    quarantined = quarantine(storage)
    again = ingest_partition(spec(), DS)
    assert (
        again.part["sha256"] == first.part["sha256"]
        and again.quarantine["sha256"] == first.quarantine["sha256"]
    )
    assert quarantine(storage) == quarantined


def test_the_quarantine_fraction_limit_applies_to_images(storage):
    folder = landing(storage)
    (folder / "a.png").write_bytes(image())
    rows = [("1", "red", "t", "a.png"), ("2", "red", "t", "gone.png")]
    (folder / "sales.csv").write_text(csv_rows(rows))
    with pytest.raises(QuarantineLimitExceeded, match="1 of 2 rows"):
        ingest_partition(spec(limit=0.2), DS)
    assert not (partition(storage) / "part.parquet").exists()
    assert quarantine(storage)["2"]["_reason"].startswith("photo: gone.png: no such file")


def test_images_are_read_through_the_storage_layer_on_a_data_uri(
    storage, tmp_path, monkeypatch, clean_stores
):
    from freestack.storage import to_path, write_bytes

    root = tmp_path / "data"
    monkeypatch.setenv("FREESTACK_DATA_ROOT", root.as_uri())
    monkeypatch.setenv("FREESTACK_DATA_OWNER", "alice")
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATA_ALICE",
        json.dumps({"conn_type": "freestack_data", "login": "alice", "extra": {"root": root.as_uri()}}),
    )
    to_path("data://data_alice@alice/x").fs.create_dir("alice/landing")
    base = f"data://data_alice@alice/landing/shop/{DS}"
    png = image()
    write_bytes(to_path(f"{base}/pics/a.png"), png)
    write_bytes(to_path(f"{base}/pics/bad.png"), png[:40])
    write_bytes(
        to_path(f"{base}/sales.csv"),
        csv_rows(
            [
                ("1", "red", "t", "pics/a.png"),
                ("2", "red", "t", "pics/bad.png"),
                ("3", "red", "t", "pics/gone.png"),
            ]
        ).encode(),
    )
    result = ingest_partition(spec(landing="data://data_alice@alice/landing/{pipeline}/{ds}/"), DS)
    assert (result.rows_good, result.rows_quarantined) == (1, 2)
    assert lake(storage).column("photo").to_pylist() == [png]
    q = quarantine(storage)
    assert q["2"]["_reason"].startswith("photo: pics/bad.png does not decode as an image")
    assert q["3"]["_reason"].startswith("photo: pics/gone.png: no such file under the landing folder data://")
