"""A model the user wrote (model.type: custom): built, checked, trained by freestack's loop, saved with
its own source and loaded back from the version folder alone; every broken module fails with the
file, the line and the contract."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from freestack.ml.contract import CustomModelError, FeatureGroup, ModelInputs, static_check
from freestack.ml.custom import CustomNet, build_custom, check_custom
from freestack.ml.loop import TrainConfig, fit
from freestack.ml.models import load_pretrained

GOOD = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """Two layers over the numeric group."""

    def __init__(self, inputs, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        n = inputs.groups["numeric"].size
        self.body = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, inputs.n_outputs))
        self.calls = 0

    def forward(self, batch):
        return self.body(batch["numeric"])

    def loss(self, outputs, target):
        self.calls += 1
        return nn.functional.cross_entropy(outputs, target, label_smoothing=0.05)
'''


def _inputs(n: int = 4, classes=(0, 1, 2)) -> ModelInputs:
    names = [f"x{i}" for i in range(n)]
    return ModelInputs(
        "classification", len(classes), {"numeric": FeatureGroup("numeric", names, n)}, list(classes), "y"
    )


def _module(tmp_path: Path, source: str, name: str = "my_net.py") -> Path:
    path = tmp_path / "include" / "models" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def test_a_custom_model_trains_saves_its_source_and_loads_without_the_original(tmp_path):
    path = _module(tmp_path, GOOD)
    net = build_custom("include/models/my_net.py", "TinyNet", {"hidden": 8}, _inputs(), tmp_path)
    check_custom(net)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32) * 5 + 3
    y = (x[:, 0] > 3).astype(np.int64) + (x[:, 1] > 6).astype(np.int64)
    net.set_scaling(x.mean(axis=0), x.std(axis=0))
    result = fit(
        net,
        x[:240],
        y[:240],
        x[240:],
        y[240:],
        TrainConfig(epochs=30, batch_size=32, learning_rate=1e-2, patience=30, device="cpu"),
        task="classification",
    )
    assert result.best_metric > 0.8 and net.net.calls > 0  # the module's own loss() trained it

    folder = tmp_path / "version"
    net.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom"]["class"] == "TinyNet" and config["custom"]["init"] == {"hidden": 8}
    assert (folder / "module.py").read_bytes() == path.read_bytes()
    path.unlink()  # the version needs nothing of the project
    loaded = load_pretrained(folder)
    assert isinstance(loaded, CustomNet)
    probe = torch.as_tensor(x[240:])
    assert torch.equal(loaded.predict_proba(probe), net.predict_proba(probe))

    (folder / "module.py").write_text(GOOD + "\n# changed\n")
    with pytest.raises(CustomModelError, match="does not match the sha256"):
        load_pretrained(folder)


def test_regression_answers_one_value_per_row(tmp_path):
    _module(tmp_path, GOOD)
    inputs = ModelInputs("regression", 1, {"numeric": FeatureGroup("numeric", ["a", "b"], 2)}, [], "price")
    net = build_custom("include/models/my_net.py", "TinyNet", {}, inputs, tmp_path)
    net.set_target_scaling(100.0, 10.0)
    assert net(torch.zeros(5, 2)).shape == (5,) and net.predict(torch.zeros(5, 2)).shape == (5,)


@pytest.mark.parametrize(
    "source, init, words",
    [
        (
            "import torch\nfrom torch import nn\nclass TinyNet(nn.Module)\n    pass\n",
            {},
            ["my_net.py, line 3", "does not parse"],
        ),
        (
            "import torch\nraise RuntimeError('no GPU here')\nclass TinyNet: pass\n",
            {},
            ["my_net.py, line 2", "RuntimeError: no GPU here"],
        ),
        ("class TinyNet:\n    pass\n", {}, ["not a torch.nn.Module class"]),
        (
            GOOD,
            {"width": 3},
            ["model.init ['width'] are not parameters of __init__", "line 9", "ModelInputs"],
        ),
        (GOOD.replace("hidden: int = 16", "hidden: int"), {}, ["__init__ needs ['hidden']"]),
        (
            GOOD.replace('return self.body(batch["numeric"])', 'return self.body(batch["numeric"])[:, :2]'),
            {},
            ["forward returned shape [2, 2] for 2 rows; the contract wants [2, 3]"],
        ),
        (
            GOOD.replace('return self.body(batch["numeric"])', 'return batch["text"]'),
            {},
            ["my_net.py, line 17", "KeyError: 'text'"],
        ),
        (
            GOOD.replace(
                'return self.body(batch["numeric"])', "return torch.zeros(len(batch['numeric']), 3)"
            ),
            {},
            ["has no gradient"],
        ),
    ],
)
def test_a_broken_module_names_the_file_the_line_and_the_contract(tmp_path, source, init, words):
    _module(tmp_path, source)
    with pytest.raises(CustomModelError) as info:
        check_custom(build_custom("include/models/my_net.py", "TinyNet", init, _inputs(), tmp_path))
    message = str(info.value)
    for w in words:
        assert w in message, message
    assert "docs/stages/train.md" in message


def test_static_checks_need_no_torch_run(tmp_path):
    _module(tmp_path, GOOD)
    assert static_check("include/models/my_net.py", "TinyNet", tmp_path) is None
    assert "no top-level class 'Other'" in static_check("include/models/my_net.py", "Other", tmp_path)
    assert "TinyNet" in static_check("include/models/my_net.py", "Other", tmp_path)
    assert "no such file" in static_check("include/models/gone.py", "TinyNet", tmp_path)
    assert "must be a .py file" in static_check("include/models/net.txt", "TinyNet", tmp_path)
    _module(tmp_path, "def f(:\n", "bad.py")
    assert "bad.py, line 1" in static_check("include/models/bad.py", "X", tmp_path)
    assert static_check("some_package.nets", "X", tmp_path) is None  # checked when imported


def test_a_dotted_module_is_read_from_the_python_path(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "teamnets"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(GOOD)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    net = build_custom("teamnets.small", "TinyNet", {}, _inputs(), tmp_path / "elsewhere")
    check_custom(net)
    assert net.config()["custom"]["source"] == "teamnets.small"
    with pytest.raises(CustomModelError, match="not found on the Python path"):
        build_custom("teamnets.missing", "TinyNet", {}, _inputs(), tmp_path)
