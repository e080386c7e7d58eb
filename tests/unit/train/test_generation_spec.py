"""The text-generation spec: the conversation's columns, the target, the metrics, and what is refused
with the field named when the spec is read."""

from __future__ import annotations

import copy

import pytest

from freestack.errors import SpecError
from freestack.spec import parse_spec

SPEC = {
    "name": "arith",
    "source": {
        "landing": "landing/{pipeline}/{ds}/",
        "format": "csv",
        "schema": {
            "key": "id",
            "target": "response",
            "columns": [
                {"name": "id", "type": "string", "nullable": False},
                {"name": "prompt", "type": "text"},
                {"name": "response", "type": "text"},
                {"name": "chat", "type": "text"},
            ],
        },
    },
    "model": {"type": "huggingface", "base": "team/tiny-lm", "task": "text-generation", "peft": {"r": 8}},
    "gate": {"metric": "exact_match", "threshold": 0.5, "max_regression": {"perplexity": 0.5}},
}


def _spec(**changes):
    data = copy.deepcopy(SPEC)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    return parse_spec(data, "arith.yaml")


def test_prompt_and_response_by_default():
    spec = _spec()
    assert spec.task == "generation" and spec.model.chat.columns == ["prompt", "response"]
    assert spec.model_features == ["prompt"] and spec.model.generation.metric == "exact_match"


def test_a_messages_column_instead():
    spec = _spec(model__data={"messages": "chat", "system": "Be brief."}, source__schema__target="chat")
    assert spec.model.chat.columns == ["chat"] and spec.model.chat.prompt is None


def test_tools_are_openais_definitions_and_a_bad_one_names_its_field():
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    spec = _spec(model__data={"prompt": "prompt", "response": "response", "tools": [add]})
    assert (
        spec.model.chat.tools[0].function.name == "add"
        and spec.model.chat.tools[0].function.description is None
    )
    with pytest.raises(
        SpecError, match=r"model.data.tools\[0\].function.name: .*'add numbers': a function's name is 1 to 64"
    ):
        _spec(model__data={"tools": [{"type": "function", "function": {"name": "add numbers"}}]})
    with pytest.raises(SpecError, match=r"model.data.tools\[0\].type"):
        _spec(model__data={"tools": [{"type": "retrieval", "function": {"name": "add"}}]})


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        (
            {"model__data": {"prompt": "prompt", "response": "response", "messages": "chat"}},
            "either prompt and response",
        ),
        ({"model__data": {"prompt": "question", "response": "response"}}, "'question' is not a column"),
        ({"source__schema__target": "prompt"}, "set target: response"),
        ({"gate__metric": "accuracy"}, "not a generation metric"),
        ({"model__task": "text-classification", "model__packing": True}, "are for task: text-generation"),
        ({"score": {"generation": {"temperature": 0.5}}}, "batch generation is greedy"),
    ],
)
def test_what_is_refused_names_the_fix(changes, says):
    with pytest.raises(SpecError, match=says):
        _spec(**changes)
