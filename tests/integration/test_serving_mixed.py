"""A model over a number, a category, a text and an image column served on the real
seldon-core-microservice: requests carry the raw values (the category as text, the review as text, the
photo as base64 of its PNG bytes) and are encoded as the training split was; a model of one image column
takes Seldon's binData, one of one text column its strData. Bad values get 4xx answers naming the row
and the column."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import torch

from freestack.errors import DeployError
from freestack.evaluate.measure import smoke_sample
from freestack.ml.features import TOKENIZER_FILE, EncoderOptions
from freestack.ml.loop import TrainConfig, fit, to_tensors
from freestack.ml.models import FreestackNet
from freestack.ml.prep import Preprocessing
from freestack.serving.local import deploy_local, stop_local
from freestack.serving.processes import free_port_block
from freestack.serving.smoke import http_json
from freestack.serving.spec import LocalTarget
from tests.support.serving import needs_serving_env
from tests.unit.ml.test_features import KINDS, frame, png

KEEP_MODEL_SERVERS = True


def train_version(work: Path, kinds: dict[str, str], name: str, make=frame) -> tuple[Path, Preprocessing]:
    """A small built-in net over ``kinds`` trained as the train stage trains one, saved as a version
    folder (weights, preprocessing, tokenizer, smoke sample); ``make(n, seed)``: the rows."""
    train, test = make(200, 1), make(40, 2)
    opts = EncoderOptions(text_vocab_size=60, text_max_length=8, image_size=(8, 8))
    pre = Preprocessing.fit(train, list(kinds), "label", "classification", kinds, opts)
    torch.manual_seed(0)
    net = FreestackNet(
        task="classification",
        n_features=len(pre.numeric),
        n_outputs=2,
        hidden=[16],
        channels=[8],
        features=pre.features,
        classes=pre.classes,
        inputs=pre.encoder.group_sizes(),
    )
    net.set_scaling(pre.mean, pre.std)
    if pre.encoder.image is not None:
        net.set_image_scaling(pre.encoder.image.mean, pre.encoder.image.std)
    fit(
        net,
        pre.inputs(train),
        pre.target_array(train),
        pre.inputs(test),
        pre.target_array(test),
        TrainConfig(epochs=4, learning_rate=1e-2, batch_size=32),
        task="classification",
    )
    folder = work / name
    net.save_pretrained(folder)
    (folder / "preprocessing.json").write_text(json.dumps(pre.as_dict()))
    if pre.tokenizer_json:
        (folder / TOKENIZER_FILE).write_text(pre.tokenizer_json)
    (folder / "evaluation").mkdir()
    test = test.assign(id=range(len(test)))
    (folder / "evaluation" / "smoke.json").write_text(
        json.dumps(smoke_sample(net, pre, test, "id", "label", 12))
    )
    (folder / "lineage.json").write_text(json.dumps({"pipeline": name, "model": name}))
    return folder, pre


def serve(work: Path, root: str, kinds: dict[str, str], name: str):
    from freestack.registry.core import ModelRegistry

    folder, pre = train_version(work, kinds, name)
    uri = ModelRegistry(root, name).register(folder.as_uri(), "v1")
    local = LocalTarget(
        port=free_port_block(), workers=1, smoke_rows=12, log_sample_rate=0.0, start_timeout_seconds=90
    )
    # deploy_local runs the smoke test: the evaluation's rows as raw values must come back as in-process
    rec = deploy_local(root_uri=root, model=name, name=name, version="v1", version_uri=uri, local=local)
    return {"url": rec["url"], "pre": pre, "uri": uri}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("mixed")
    root = (work / "storage").as_uri()
    models = {
        "mixed": serve(work, root, KINDS, "mixed"),
        "photos": serve(work, root, {"photo": "image"}, "photos"),
    }
    yield models
    for name in models:
        try:
            stop_local(root, name, name)
        except DeployError:
            pass


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def in_process(model: dict, rows) -> list[list[float]]:
    net = FreestackNet.from_pretrained(model["uri"].removeprefix("file://"))
    pre = model["pre"]
    return net.predict_proba(to_tensors(pre.inputs(rows))).tolist()


@needs_serving_env
def test_records_of_raw_values_answer_what_the_model_answers_in_process(served):
    rows = frame(5, 7)
    records = [
        {"size": r.size, "colour": r.colour, "review": r.review, "photo": b64(r.photo)}
        for r in rows.itertuples()
    ]
    code, body = http_json(
        f"{served['mixed']['url']}/api/v1.0/predictions", {"jsonData": {"instances": records}}
    )
    assert code == 200, body
    preds = body["jsonData"]["predictions"]
    want = in_process(served["mixed"], rows)
    for p, w in zip(preds, want, strict=True):
        assert p["probabilities"]["yes"] == pytest.approx(w[1], abs=1e-5)
    assert [p["label"] for p in preds] == rows["label"].tolist()


@needs_serving_env
def test_an_ndarray_with_names_in_any_order_and_an_unseen_category(served):
    rows = frame(3, 8)
    names = ["photo", "review", "colour", "size"]
    data = [[b64(r.photo), r.review, "purple", r.size] for r in rows.itertuples()]
    code, body = http_json(
        f"{served['mixed']['url']}/api/v1.0/predictions", {"data": {"names": names, "ndarray": data}}
    )
    assert code == 200, body
    assert body["data"]["names"] == ["no", "yes"] and len(body["data"]["ndarray"]) == 3
    unseen = rows.assign(colour="purple")
    for got, want in zip(body["data"]["ndarray"], in_process(served["mixed"], unseen), strict=True):
        assert got == pytest.approx(want, abs=1e-5)


@needs_serving_env
@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"jsonData": {"instances": [{"size": 1.0, "colour": "red", "review": "ok"}]}}, "lacks ['photo']"),
        (
            {
                "jsonData": {
                    "instances": [{"size": "big", "colour": "red", "review": "ok", "photo": b64(png(9))}]
                }
            },
            "row 0, size: expected a number",
        ),
        (
            {"jsonData": {"instances": [{"size": 1, "colour": "red", "review": "ok", "photo": "%%%"}]}},
            "row 0, photo: not valid base64",
        ),
        (
            {
                "jsonData": {
                    "instances": [{"size": 1, "colour": "red", "review": "ok", "photo": b64(b"GIF89a junk")}]
                }
            },
            "photo: not a decodable image",
        ),
        (
            {"data": {"names": ["size", "colour"], "ndarray": [[1.0, "red"]]}},
            "do not match the model's columns",
        ),
        ({"strData": "a review"}, '"strData" is not accepted by this model'),
        ({"binData": b64(png(9))}, '"binData" is not accepted by this model'),
    ],
)
def test_bad_raw_values_get_400_naming_the_row_and_column(served, payload, words):
    code, body = http_json(f"{served['mixed']['url']}/api/v1.0/predictions", payload)
    assert code == 400, body
    assert words in body["status"]["info"], body


@needs_serving_env
def test_a_one_image_model_takes_bindata_and_says_so_in_its_metadata(served):
    url = served["photos"]["url"]
    bright, dark = png(230), png(20)
    answers = []
    for image in (bright, dark):
        code, body = http_json(f"{url}/api/v1.0/predictions", {"binData": b64(image)})
        assert code == 200, body
        # Seldon answers a binData request with a tensor: the class probabilities of the one image
        assert body["data"]["names"] == ["no", "yes"] and body["data"]["tensor"]["shape"] == [1, 2], body
        answers.append(body["data"]["tensor"]["values"])
    import pandas as pd

    want = in_process(served["photos"], pd.DataFrame({"photo": [bright, dark]}))
    for got, w in zip(answers, want, strict=True):
        assert got == pytest.approx(w, abs=1e-5)
    code, body = http_json(f"{url}/api/v1.0/predictions", {"binData": "not base64!"})
    assert code == 400 and "not valid base64" in body["status"]["info"], body
    code, meta = http_json(f"{url}/api/v1.0/metadata")
    assert code == 200, meta
    kinds = {i["messagetype"] for i in meta["inputs"]}
    assert kinds == {"ndarray", "jsonData", "binData"}, meta
