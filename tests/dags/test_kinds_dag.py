"""Non-numeric data through every stage under dag.test(): a CSV of numbers, categories, text and image
paths (``shop``) and an image folder (``glyphs``), each with corrupt PNGs among the files, ingested
(the broken images quarantined with their reasons), trained, evaluated, gated, registered and served;
the model server answers raw values (text, base64 images) as the version answers in-process; each
model scores a day's landing folder as it comes (batch scoring, the corrupt images quarantined)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.landing_kinds import GLYPHS_SPEC, SHOP_SPEC, glyphs_landing, shop_landing
from tests.support.serving import needs_serving_env

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("airflow_db"), needs_serving_env]
DAYS = 3


@pytest.fixture
def kinds(tmp_path, storage, monkeypatch):
    """The two pipelines' specs and three landed days of each, W&B offline under tmp_path."""
    from airflow.dag_processing.dagbag import DagBag

    specs = tmp_path / "pipelines"
    specs.mkdir()
    for spec in (SHOP_SPEC, GLYPHS_SPEC):
        (specs / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    monkeypatch.setenv("FREESTACK_PIPELINES_DIR", str(specs))
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb" / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("FREESTACK_REQUEST_LOG_FLUSH_SECONDS", "1")  # reaches the model servers deploy starts
    root = Path(storage.removeprefix("file://"))
    shop_landing(root, date(2026, 11, 1), DAYS)
    glyphs_landing(root, date(2026, 11, 1), DAYS)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert not bag.import_errors, bag.import_errors
    return {"bag": bag, "root": root, "specs": specs}


def _ingest(kinds, name: str) -> list[dict]:
    dag = kinds["bag"].get_dag(f"{name}_ingest")
    for d in range(1, DAYS + 1):
        assert dag.test(logical_date=datetime(2026, 11, d, tzinfo=UTC)).state == "success"
    part = kinds["root"] / "lake" / name / "ds=2026-11-01"
    quarantine = next(part.glob("_quarantine-*.parquet"))
    return pq.read_table(quarantine).to_pylist()


def _served(kinds, name: str, run) -> tuple[Path, dict]:
    from freestack.serving.records import Deployments

    assert run.state == "success"
    rec = Deployments(kinds["root"].as_uri(), name).get(name)
    version = kinds["root"] / "registry" / name / rec["version"]
    assert (version / "_REGISTERED.json").exists()
    return version, rec


def _in_process(version: Path, rows) -> list[list[float]]:
    """What the version answers in-process, loaded and encoded as its model card says (no Airflow)."""
    import torch

    from freestack.ml.features import load_encoder
    from freestack.ml.models import load_pretrained

    model, encoder = load_pretrained(version), load_encoder(version)
    batch = encoder.encode({c: rows[c].tolist() for c, _ in encoder.columns})
    return model.predict_proba({g: torch.as_tensor(v) for g, v in batch.items()}).tolist()


def test_a_table_of_numbers_categories_text_and_images_is_trained_and_served_on_raw_values(kinds):
    import pandas as pd

    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    reasons = _ingest(kinds, "shop")
    assert len(reasons) == 2 and all(r["_reason"].startswith("photo:") for r in reasons), reasons
    root = kinds["root"].as_uri()
    try:
        run = kinds["bag"].get_dag("shop_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        version, rec = _served(kinds, "shop", run)
        assert {"tokenizer.json", "preprocessing.json", "model.safetensors"} <= {
            p.name for p in version.iterdir()
        }
        pre = json.loads((version / "preprocessing.json").read_text())
        assert dict(pre["encoder"]["columns"]) == {
            "price": "numeric",
            "colour": "category",
            "review": "text",
            "photo": "image",
        }
        assert set(pre["encoder"]["category"]["colour"]) == {
            "navy",
            "green",
            "black",
            "orange",
            "pink",
            "yellow",
        }
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["candidate"]["accuracy"] >= 0.8, evaluation
        lineage = json.loads((version / "lineage.json").read_text())
        assert lineage["features"] == {
            "price": "float",
            "colour": "category",
            "review": "text",
            "photo": "image",
        }
        card = (version / "README.md").read_text()
        inputs = card[card.index("# a list of raw values per column: ") :].split("\n", 1)[0]
        assert all(f"`{c}` ({k})" in inputs for c, k in lineage["features"].items()), inputs
        assert "encoder = load_encoder(" in card

        landing = kinds["root"] / "landing" / "shop" / "2026-11-03"
        rows = pd.read_csv(landing / "sales.csv").iloc[10:16]
        rows["photo"] = [(landing / p).read_bytes() for p in rows["photo"]]
        records = [
            {
                "price": r.price,
                "colour": r.colour,
                "review": r.review,
                "photo": base64.b64encode(r.photo).decode(),
            }
            for r in rows.itertuples()
        ]
        code, body = http_json(rec["predict_url"], {"jsonData": {"instances": records}})
        assert code == 200, body
        want = _in_process(version, rows)
        got = [[p["probabilities"]["no"], p["probabilities"]["yes"]] for p in body["jsonData"]["predictions"]]
        assert (
            max(abs(a - b) for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)) < 1e-5
        )
        _monitored(kinds, landing, rec)
        _scored_landing(kinds, "shop", version, rows_of=lambda t: len(pd.read_csv(landing / "sales.csv")))
    finally:
        stop_local(root, "shop", "shop")


def _scored_landing(kinds, name: str, version: Path, rows_of) -> dict:
    """The pipeline's model scores a day's landing folder (a CSV with image paths, or an image folder) as
    it comes, without ingest: the corrupt images are quarantined with their reason, every other
    row is scored as the version answers in-process."""
    import pandas as pd

    from freestack.score.core import plan, score
    from freestack.score.spec import ScoreSpec
    from freestack.spec import load_spec

    spec = load_spec(kinds["specs"] / f"{name}.yaml")
    landing = kinds["root"] / "landing" / name
    spec = spec.model_copy(
        update={"score": ScoreSpec(input=f"file://{landing}/{{ds}}/", version="latest", batch_rows=16)}
    )
    got = plan(spec, datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 4, tzinfo=UTC))
    assert got["version"] == version.name and len(got["jobs"]) == 1, got
    manifest = score(spec, got["jobs"][0])
    out = kinds["root"] / "scores" / name / "ds=2026-11-03"
    assert manifest["rows_in"] == rows_of(landing / "2026-11-03") and manifest["rows_scored"] > 0
    if manifest["rows_quarantined"]:
        reasons = pq.read_table(out / "_quarantine.parquet").column("_reason").to_pylist()
        assert all(r for r in reasons), reasons
    scored = pq.read_table(out / "part.parquet").to_pandas()
    assert len(scored) == manifest["rows_scored"] and set(scored["version"]) == {version.name}
    assert pd.Series([sum(p) for p in scored["probabilities"]]).between(0.999, 1.001).all()
    return manifest


def _monitored(kinds, landing: Path, rec: dict) -> None:
    """The day's rows sent as raw values land in the request log as sent, and shop_monitor judges them:
    the category, the text's and the image's proxies, the prediction."""
    import io
    import time

    import pandas as pd
    from PIL import Image

    from freestack.serving.smoke import http_json

    rows = pd.read_csv(landing / "sales.csv")
    photos = [(landing / p).read_bytes() for p in rows["photo"]]
    readable = []
    for b in photos:
        try:
            Image.open(io.BytesIO(b)).verify()
            readable.append(True)
        except Exception:
            readable.append(False)
    rows, photos = rows[readable], [b for b, ok in zip(photos, readable, strict=True) if ok]
    records = [
        {"price": r.price, "colour": r.colour, "review": r.review, "photo": base64.b64encode(b).decode()}
        for r, b in zip(rows.itertuples(), photos, strict=True)
    ]
    for k in range(0, len(records), 40):
        assert http_json(rec["predict_url"], {"jsonData": {"instances": records[k : k + 40]}})[0] == 200
    logs = kinds["root"] / "monitoring" / "shop" / "requests"
    deadline, table = time.monotonic() + 60, None
    while time.monotonic() < deadline and (table is None or len(table) < len(records)):
        time.sleep(1.0)
        table = (
            pd.concat([pq.read_table(f).to_pandas() for f in logs.rglob("*.parquet")])
            if list(logs.rglob("*.parquet"))
            else None
        )
    mine = table[table["input.review"].isin(set(rows["review"]))]
    assert set(mine["input.photo"].map(bytes)) <= set(photos) and set(mine["input.colour"]) <= set(
        rows["colour"].dropna()
    )
    now = datetime.now(UTC)
    run = (
        kinds["bag"]
        .get_dag("shop_monitor")
        .test(logical_date=datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1))
    )
    assert run.state == "success"
    summary = json.loads(
        next((kinds["root"] / "monitoring" / "shop" / "reports").glob("*/summary.json")).read_text()
    )
    series = {s["name"] for v in summary["versions"] for s in v["series"]}
    assert {"colour", "review.length", "review.unknown_rate", "photo.brightness", "prediction"} <= series, (
        summary["notes"]
    )


def test_an_image_folder_is_trained_and_served_on_bindata(kinds):
    import pandas as pd

    from freestack.serving.local import stop_local
    from freestack.serving.smoke import http_json

    reasons = _ingest(kinds, "glyphs")
    assert len(reasons) == 3 and all("image" in r["_reason"] for r in reasons), reasons
    root = kinds["root"].as_uri()
    try:
        run = kinds["bag"].get_dag("glyphs_train").test(run_conf={"end_ds": "2026-11-03", "sweep": False})
        version, rec = _served(kinds, "glyphs", run)
        evaluation = json.loads((version / "evaluation" / "metrics.json").read_text())
        assert evaluation["candidate"]["accuracy"] >= 0.7, evaluation
        data = json.loads((version / "lineage.json").read_text())["data"]
        assert data["mode"] == "stream" and data["rows"]["train"] > 0, data  # the spec streams its window
        files = sorted((kinds["root"] / "landing" / "glyphs" / "2026-11-03").glob("*/*.png"))[-4:]
        answers = []
        for f in files:
            code, body = http_json(rec["predict_url"], {"binData": base64.b64encode(f.read_bytes()).decode()})
            assert code == 200, body
            answers.append(body["data"]["tensor"]["values"])
        want = _in_process(version, pd.DataFrame({"image": [f.read_bytes() for f in files]}))
        assert (
            max(abs(a - b) for g, w in zip(answers, want, strict=True) for a, b in zip(g, w, strict=True))
            < 1e-5
        )
        scored = _scored_landing(kinds, "glyphs", version, rows_of=lambda d: len(list(d.glob("*/*.png"))))
        assert scored["rows_quarantined"] >= 1  # the day's corrupt PNG, refused by the encoder
    finally:
        stop_local(root, "glyphs", "glyphs")
