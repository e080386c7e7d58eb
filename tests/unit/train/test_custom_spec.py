"""model.type: custom in a pipeline spec: what the DAG processor checks (no torch), what `freestack
validate` and the train DAG's first task check (the module run on a batch), and a sweep over its
constructor's arguments."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from freestack.errors import SpecError
from freestack.spec import parse_spec
from tests.unit.ml.test_custom_model import GOOD

SPEC = {
    "name": "houses",
    "source": {
        "schema": {
            "key": "id",
            "target": "label",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "a", "type": "float"},
                {"name": "b", "type": "float"},
                {"name": "label", "type": "int", "allowed": [0, 1, 2]},
            ],
        }
    },
    "model": {"type": "custom", "class": "TinyNet", "init": {"hidden": 8, "dropout": 0.1}},
    "sweep": {
        "method": "grid",
        "metric": {"name": "val_accuracy", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"values": [0.01]},
            "model": {"parameters": {"init": {"parameters": {"hidden": {"values": [4, 16]}}}}},
        },
    },
}


def _spec(tmp_path: Path, source: str = GOOD, **model):
    path = tmp_path / "my_net.py"
    path.write_text(source)
    data = copy.deepcopy(SPEC)
    data["model"].update({"module": str(path), **model})
    return parse_spec(data, "houses.yaml")


def test_a_custom_spec_loads_and_its_sweep_reaches_the_constructor(tmp_path):
    from freestack.sweeps.config import to_overrides
    from freestack.train.core import check_custom_model, effective_spec
    from freestack.train.request import TrainRequest

    spec = _spec(tmp_path)
    assert spec.model.class_ == "TinyNet" and spec.model.init == {"hidden": 8, "dropout": 0.1}
    check_custom_model(spec)  # imports, builds and runs it on a batch
    overrides = to_overrides({"learning_rate": 0.01, "model": {"init": {"hidden": 16}}})
    assert overrides == {"train": {"learning_rate": 0.01}, "model": {"init": {"hidden": 16}}}
    trial = effective_spec(spec, TrainRequest(end_ds="2026-11-05", overrides=overrides))
    assert trial.model.init == {"hidden": 16, "dropout": 0.1} and trial.model.class_ == "TinyNet"
    assert spec.normalized_hash() != trial.normalized_hash()


@pytest.mark.parametrize(
    "model, words",
    [
        ({"module": None}, "type: custom needs module"),
        ({"class": "Missing"}, "no top-level class 'Missing'"),
        ({"module": "include/models/absent.py"}, "no such file"),
        ({"type": "mlp"}, "module, class and init are for type: custom"),
        ({"init": {"dropout": 0.1}}, "sweep.parameters.model.init.hidden: 'hidden' is not in model.init"),
        ({"init": {"hidden": {"nested": 1}}}, "model.init.hidden"),
    ],
)
def test_bad_custom_specs_name_the_field(tmp_path, model, words):
    path = tmp_path / "my_net.py"
    path.write_text(GOOD)
    data = copy.deepcopy(SPEC)
    data["model"].update({"module": str(path)})
    data["model"].update(model)
    if data["model"]["module"] is None:
        del data["model"]["module"]
    with pytest.raises(SpecError) as info:
        parse_spec(data, "houses.yaml")
    assert words in str(info.value), str(info.value)


def test_a_module_that_breaks_the_contract_fails_before_any_data_is_read(tmp_path):
    from freestack.train.core import check_custom_model
    from freestack.train.request import TrainingError

    spec = _spec(tmp_path, GOOD.replace("inputs.n_outputs", "7"))
    with pytest.raises(TrainingError) as info:
        check_custom_model(spec)
    message = str(info.value)
    assert (
        "my_net.py" in message
        and "forward returned shape [2, 7] for 2 rows; the contract wants [2, 3]" in message
    )


def test_validate_runs_the_module(tmp_path, capsys):
    import yaml

    from freestack.cli.validate import validate

    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder, source in (
        (good, GOOD),
        (bad, GOOD.replace("def forward(self, batch):", "def forward(self, batch, mask):")),
    ):
        folder.mkdir()
        (folder / "my_net.py").write_text(source)
        data = copy.deepcopy(SPEC)
        data["model"]["module"] = str(folder / "my_net.py")
        (folder / "houses.yaml").write_text(yaml.safe_dump(data))
    assert validate([str(good / "houses.yaml")]) == 0
    assert validate([str(bad / "houses.yaml")]) == 1
    err = capsys.readouterr().err
    assert "houses.yaml: model:" in err and "missing 1 required positional argument: 'mask'" in err


def test_the_model_card_of_a_custom_model_says_how_to_load_it():
    from freestack.registry.card import CardInfo, render_card

    module = {
        "class": "TinyNet",
        "source": "include/models/my_net.py",
        "sha256": "ab" * 32,
        "file": "module.py",
        "init": {"hidden": 8},
    }
    text = render_card(
        "houses",
        "v1",
        CardInfo(),
        metrics={"task": "classification", "test_accuracy": 0.9},
        lineage={"pipeline": "houses", "module": module},
    )
    assert "custom model (`TinyNet` from `include/models/my_net.py`" in text and "ab" * 32 in text
    assert "trust_remote_code=True" in text and "FreestackNet.from_pretrained" not in text
    plain = render_card(
        "houses", "v1", CardInfo(), metrics={"task": "classification"}, lineage={"pipeline": "houses"}
    )
    assert "FreestackNet.from_pretrained" in plain and "module.py" not in plain


def test_an_invalid_trial_override_reads_without_pydantics_prefix(tmp_path):
    """A trial's model override that breaks a model rule names the field and the rule, in plain words."""
    from freestack.train.core import effective_spec
    from freestack.train.request import TrainingError, TrainRequest

    spec = _spec(tmp_path)
    with pytest.raises(TrainingError) as caught:
        effective_spec(spec, TrainRequest(end_ds="2026-11-05", overrides={"model": {"type": "mlp"}}))
    message = str(caught.value)
    assert (
        "hyperparameters are invalid" in message and "module, class and init are for type: custom" in message
    )
    assert "Value error" not in message
