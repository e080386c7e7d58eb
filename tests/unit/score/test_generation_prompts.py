"""How the score stage turns a text-generation version's rows into prompts (freestack.score.answers_writer):
as the model server builds a request's (the system prompt first, the chat template, the prompt budget);
a messages column is a JSON chat, and a value that is not one is a row's reason, never a failed day;
a prompt over the budget is cut from the left or refused; batch generation takes no temperature."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pydantic import ValidationError

from freestack.ml.lm.answers import GenerationSettings
from freestack.ml.lm.chat import ChatColumns
from freestack.ml.lm.prompts import prompt_ids
from tests.support.generation_serving import SYSTEM, make_generation_version


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from freestack.score.model import ScoringModel

    work = tmp_path_factory.mktemp("score-generation")
    version = make_generation_version((work / "storage").as_uri(), "chat", "v1", work)
    return ScoringModel(version.uri, "cpu")


def _spec(**generation):
    from freestack.spec import PipelineSpec
    from tests.dags.test_score_generation_dag import _spec as spec

    return PipelineSpec.model_validate(spec({"version": "v1", "generation": generation}))


def test_a_prompt_is_built_as_the_server_builds_it_and_the_budget_is_the_versions(model):
    from freestack.score.answers_writer import prompts_of, settings_for

    settings = settings_for(_spec(max_new_tokens=8), model)
    assert (settings.max_new_tokens, settings.temperature, settings.max_prompt_tokens) == (8, 0.0, 96)
    good, bad = prompts_of(model, settings, pa.record_batch({"prompt": ["What is 2 + 2?", None, ""]}))
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 2?"}]
    assert good == {0: prompt_ids(model.tokenizer, [chat], settings)[0]}
    assert set(bad) == {1, 2} and all("no prompt" in why for why in bad.values())

    long = pa.record_batch({"prompt": [" ".join(["many words"] * 60)]})
    left = GenerationSettings(max_new_tokens=8, max_prompt_tokens=20, truncate="left")
    ids, cut = prompts_of(model, left, long)[0][0]
    assert cut and len(ids) == 20
    refused = prompts_of(model, GenerationSettings(max_prompt_tokens=20, truncate="refuse"), long)[1]
    assert "over the limit of 20" in refused[0]


def test_a_messages_column_is_a_json_chat_and_what_is_not_one_is_the_rows_reason(model):
    from freestack.score.answers_writer import prompts_of

    columns = model.model.columns
    model.model.columns = ChatColumns(prompt=None, response=None, messages="messages", system=SYSTEM)
    try:
        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        values = [json.dumps(chat), "not json", "[]", json.dumps([{"role": "bot", "content": "x"}]), None]
        settings = GenerationSettings(max_prompt_tokens=96)
        good, bad = prompts_of(model, settings, pa.record_batch({"messages": values}))
    finally:
        model.model.columns = columns
    assert good == {
        0: prompt_ids(model.tokenizer, [[{"role": "system", "content": SYSTEM}, *chat]], settings)[0]
    }
    assert sorted(bad) == [1, 2, 3, 4]
    assert "not JSON" in bad[1] and "non-empty list" in bad[2] and "role" in bad[3]


def test_batch_generation_is_greedy():
    from freestack.score.spec import GenerationScore

    with pytest.raises(ValidationError, match="greedy"):
        GenerationScore(temperature=0.7)
    assert GenerationScore().temperature == 0
